"""Schemathesis hooks for tests/integration/test_api_fuzz.py (loaded via SCHEMATHESIS_HOOKS).

The fuzzer cannot know two things a real caller knows: the notify secret (a notification
is only looked at when signed) and that a new order needs a new Idempotency-Key.  These
hooks supply both, so a schema-valid case reaches the rules it is meant to test.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import MutableMapping
from typing import Any

import schemathesis

from services.common.fields import ID_PATTERN
from services.common.signing import SIGNATURE_HEADER, sign

_ID = re.compile(ID_PATTERN)


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    headers = case.headers  # case-insensitive
    if not isinstance(headers, MutableMapping):
        return
    path = case.operation.path
    if path == "/notifications/payment" and SIGNATURE_HEADER in headers:
        # sign the exact bytes sent; a case without the header stays unsigned (400)
        try:
            body = json.dumps(case.body, allow_nan=False).encode()
        except (TypeError, ValueError):
            return
        secret = os.environ["CHAOSBED_NOTIFY_SECRET"]
        headers[SIGNATURE_HEADER] = sign(secret, int(time.time()), body)
        kwargs["data"] = body
    elif path == "/orders" and case.method.upper() == "POST":
        key = headers.get("Idempotency-Key")
        if isinstance(key, str) and _ID.match(key):
            # a reused key with another body is a 422 by design, not a schema violation
            headers["Idempotency-Key"] = f"fz-{uuid.uuid4().hex}"
