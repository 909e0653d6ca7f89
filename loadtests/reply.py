"""One HTTP exchange as the simulated clients classify it (no Locust import: the orchestrator's
final read and any user adapter use it too).

A call ends in one of three ways, and the payment flow treats them differently:
- an HTTP answer (`status` > 0) — the server decided;
- `refused`: the connection was refused, so the request was certainly never sent;
- `ambiguous`: timeout or reset after the request may have been sent — the server may have
  acted on it.  Never to be reported as a failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Reply:
    status: int  # 0 when no HTTP answer arrived
    body: dict[str, Any] = field(default_factory=dict)
    transport_error: str | None = None
    refused: bool = False

    @property
    def answered(self) -> bool:
        return self.status > 0 and self.transport_error is None

    @property
    def ambiguous(self) -> bool:
        """The server may have acted: no answer (and not refused), or a 5xx."""
        if self.refused:
            return False
        return not self.answered or self.status >= 500

    @property
    def error(self) -> str:
        """A short description for the history's `error` field."""
        if self.transport_error is not None:
            return self.transport_error
        code = self.body.get("error")
        return f"{self.status} {code}" if code else f"HTTP {self.status}"


def json_object(content: bytes | str | None) -> dict[str, Any]:
    """A response body as a JSON object; {} when it is empty, not JSON or not an object."""
    try:
        body = json.loads(content or b"{}")
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}
