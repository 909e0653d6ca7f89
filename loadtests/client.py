"""HTTP details of the simulated users: one call, classified the way the history needs it.

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

from locust.contrib.fasthttp import FastHttpSession, LocustBadStatusCode


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


def call(
    session: FastHttpSession,
    method: str,
    url: str,
    *,
    name: str,
    traceparent: str,
    json_body: Any = None,
    data: str | None = None,
    headers: dict[str, str] | None = None,
    expected: frozenset[int] = frozenset(),
) -> Reply:
    """Send one request; Locust counts it failed only for transport errors, 5xx or an
    unexpected status (`expected` lists the 4xx answers that are normal business outcomes)."""
    all_headers = {"traceparent": traceparent, **(headers or {})}
    if data is not None:
        all_headers.setdefault("Content-Type", "application/json")
    with session.request(
        method,
        url,
        name=name,
        json=json_body,
        data=data,
        headers=all_headers,
        catch_response=True,
    ) as response:
        reply = _classify(response)
        if reply.answered and (reply.status < 400 or reply.status in expected):
            response.success()
        else:
            response.failure(reply.error)
    return reply


def _classify(response: Any) -> Reply:
    failure = _transport_failure(response)
    if failure is not None:
        return Reply(
            status=0,
            transport_error=f"{type(failure).__name__}: {failure}",
            refused=isinstance(failure, ConnectionRefusedError),
        )
    return Reply(status=int(response.status_code or 0), body=_json_object(response))


def _transport_failure(response: Any) -> BaseException | None:
    """The exception that stopped the exchange, ignoring Locust's 'bad status' marker."""
    candidates = (getattr(response, "error", None), response.request_meta.get("exception"))
    for exc in candidates:
        if isinstance(exc, BaseException) and not isinstance(exc, LocustBadStatusCode):
            # geventhttpclient wraps timeouts in RetriesExceeded; name the real cause.
            original = getattr(exc, "original", None)
            return original if isinstance(original, BaseException) else exc
    if not response.status_code:
        return ConnectionError("no HTTP response")
    return None


def _json_object(response: Any) -> dict[str, Any]:
    try:
        body = json.loads(response.content or b"{}")
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}
