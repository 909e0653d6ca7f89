"""Property-based API tests (schemathesis) against each service's own OpenAPI document.

A dedicated stack (fuzzing changes knobs and stock) with the admin token, so admin
routes are exercised too.  Every response must be documented and match its schema; a 5xx
is a failure unless the operation documents it (order's 503 dependency_unavailable).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from chaosbed.stack import SERVICES, Stack

pytestmark = pytest.mark.integration

MAX_EXAMPLES = 30
CHECKS = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with Stack.start(tmp_path_factory.mktemp("fuzz")) as stack:
        yield stack


def _call_and_check(case: Any, stack: Stack) -> int:
    response = case.call(headers=stack.admin_headers(), timeout=10)
    if response.status_code >= 500:
        documented = {str(code) for code in case.operation.definition.raw.get("responses", {})}
        assert str(response.status_code) in documented, (
            f"undocumented {response.status_code}: {response.text[:300]}"
        )
    case.validate_response(response, checks=CHECKS)
    return int(response.status_code)


FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: report the first failure fast
    database=None,
)


@pytest.mark.parametrize("service", SERVICES)
def test_api_conforms_to_its_openapi_document(service: str, fuzz_stack: Stack) -> None:
    schema = schemathesis.openapi.from_url(fuzz_stack.url(service) + "/openapi.json")
    failures: list[str] = []
    operations = 0
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @FUZZ_SETTINGS
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                statuses[_call_and_check(case, fuzz_stack)] += 1

            try:
                fuzz()
            except Unsatisfiable:
                continue  # no invalid input exists for an operation without parameters
            except Exception as exc:  # collect every operation's failure, not just the first
                failures.append(f"{operation.label} [{mode.value}]: {str(exc)[:600]}")
    assert operations >= 3, f"{service} documents only {operations} operations"
    assert failures == [], "\n\n".join(failures)
    # the fuzzer really reached the service, with accepted and refused requests
    assert sum(n for code, n in statuses.items() if code < 300) >= operations
    assert sum(n for code, n in statuses.items() if 400 <= code < 500) >= operations
