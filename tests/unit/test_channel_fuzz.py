"""Schemathesis fuzzes the channel's OpenAPI document: no 5xx, every response as declared."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import CheckFunction
from schemathesis.specs.openapi.checks import positive_data_acceptance

from services.channel.app import create_app
from services.common.settings import Settings

TOKEN = "fuzz-admin-token"

app = create_app(Settings(service="channel", admin_token=TOKEN))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


def excluded(case: schemathesis.Case[Any]) -> list[CheckFunction]:
    # JSON Schema cannot say notify_delay_ms.min <= max, so a schema-valid knob body may be
    # refused with a 422 there; everywhere else schema-valid data must be accepted.
    return [positive_data_acceptance] if case.operation.path == "/admin/behaviour" else []


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_channel_api_conforms_to_its_schema(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"}, excluded_checks=excluded(case)
    )


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_channel_api_without_token_conforms_too(case: schemathesis.Case[Any]) -> None:
    case.call_and_validate(excluded_checks=excluded(case))
