"""HTTP details of the simulated users: one call through Locust's client, classified the way the
history needs it (loadtests/reply.py says how), and the adapter's Http over that client.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from locust.contrib.fasthttp import FastHttpSession, LocustBadStatusCode

from loadtests.reply import Reply, json_object

__all__ = ["LocustHttp", "Reply", "call"]


def call(
    session: FastHttpSession,
    method: str,
    url: str,
    *,
    name: str,
    traceparent: str | None,
    json_body: Any = None,
    data: str | None = None,
    headers: dict[str, str] | None = None,
    expected: Collection[int] = frozenset(),
) -> Reply:
    """Send one request; Locust counts it failed only for transport errors, 5xx or an
    unexpected status (`expected` lists the 4xx answers that are normal business outcomes)."""
    all_headers = {**({"traceparent": traceparent} if traceparent else {}), **(headers or {})}
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
    return Reply(status=int(response.status_code or 0), body=json_object(response.content))


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


class LocustHttp:
    """The adapter's `Http` (loadtests/adapter.py) over a Locust user's client: every request is
    counted in Locust's statistics under `name` (a path such as "/orders/[id]")."""

    def __init__(self, session: FastHttpSession) -> None:
        self.session = session

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        name: str | None = None,
        expected: Collection[int] = (),
    ) -> Reply:
        return call(
            self.session,
            method,
            path,
            name=name or path,
            traceparent=None,
            json_body=json,
            headers=headers,
            expected=expected,
        )
