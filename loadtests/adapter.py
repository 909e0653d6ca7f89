"""The adapter protocol: how chaosbed's journeys talk to *an* order service (Jepsen's client).

The journeys (loadtests/locustfile.py) and the black-box final read (loadtests/final_read.py)
know two operations — place an order with an idempotency key, read an order — and nothing of the
target's routes.  A target's adapter maps them onto its own API and answers Jepsen-style:

- `ok`: it happened, and here is the order as the client saw it (`OrderView`);
- `fail`: it certainly did not happen (a 4xx refusal, a refused connection);
- `info`: it may have happened (timeout, reset, 5xx) — never to be counted as a failure.

An adapter subclasses `OrderAdapter`; it is given an `Http` (Locust's client inside the load,
a plain blocking client for the final read) and the target file's `options:`.  One call is one
attempt: the journeys retry `info` and a retryable `fail` with the same idempotency key.
Adapter modules must not import Locust (the orchestrator imports them for the final read).
See docs/own-service.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from loadtests.reply import Reply, json_object

__all__ = [
    "AdapterError",
    "Http",
    "OrderAdapter",
    "OrderView",
    "PlainHttp",
    "Reply",
    "Result",
    "load_adapter",
    "result_of",
    "trace_headers",
]

# the statuses chaosbed's journeys and checkers understand; a target's others are kept as-is
KNOWN_STATUSES = frozenset({"AWAITING_PAYMENT", "PAID", "CLOSED", "REJECTED"})


class AdapterError(ValueError):
    """An adapter cannot be loaded (bad spec, missing module or class); says which."""


@dataclass(frozen=True)
class OrderView:
    """One order as the client saw it, normalised by the adapter."""

    order_id: str
    status: str  # AWAITING_PAYMENT | PAID | CLOSED | REJECTED | the target's own word as-is
    payment_id: str | None  # the channel payment the shopper pays at chaosbed's channel
    amount: int | None
    raw: Mapping[str, Any] = field(default_factory=dict)  # the target's answer, untouched
    key: str | None = None  # the idempotency key it was placed with (set by the journey)


@dataclass(frozen=True)
class Result:
    """The completion of one attempt (Jepsen's ok / fail / info)."""

    type: Literal["ok", "fail", "info"]  # info = may have happened (timeout, reset, 5xx)
    order: OrderView | None = None  # set on ok for place_order and read_order
    error: str = ""
    http_status: int | None = None
    retry: bool = False  # a fail that did nothing yet may succeed later (connection refused)
    body: Mapping[str, Any] = field(default_factory=dict)  # the answer's JSON object, if any


class Http(Protocol):
    """What an adapter sends requests with; `path` is relative to the target's base URL.

    `name` is the request's name in Locust's statistics (a path like "/orders/[id]", never
    the method); `expected` lists the 4xx answers that are normal business outcomes."""

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        name: str | None = None,
        expected: Collection[int] = (),
    ) -> Reply: ...


class OrderAdapter:
    """The base class a target's adapter subclasses (see the module docstring)."""

    def __init__(self, http: Http, options: Mapping[str, Any]) -> None:
        self.http = http
        self.options = dict(options)

    def place_order(
        self, *, key: str, sku: str, qty: int, amount: int, traceparent: str | None = None
    ) -> Result:
        """One attempt to place an order under idempotency `key`; ok carries the order."""
        raise NotImplementedError

    def read_order(self, order_id: str, *, traceparent: str | None = None) -> Result:
        """One read of an order; ok carries it, fail if the target says there is none."""
        raise NotImplementedError

    def check_health(self, *, traceparent: str | None = None) -> Result:
        """What a browser does before it knows any order: the target's health path."""
        path = str(self.options.get("health_path", "/healthz"))
        reply = self.http.request("GET", path, headers=trace_headers(traceparent), name=path)
        return result_of(reply)


def trace_headers(traceparent: str | None) -> dict[str, str]:
    """The W3C trace context header, when the journey has one (the history records its id)."""
    return {"traceparent": traceparent} if traceparent else {}


def result_of(
    reply: Reply,
    parse: Callable[[Mapping[str, Any]], OrderView] | None = None,
    *,
    success: Collection[int] = range(200, 300),
) -> Result:
    """The usual mapping of one reply: `success` ok (its body parsed into an order by `parse`),
    refused fail (retryable), another answer below 500 fail, anything unclear info.

    A success whose body `parse` cannot read (KeyError, TypeError, ValueError) is info: the
    target acted, but the client cannot tell on what."""
    status = reply.status if reply.answered else None
    if reply.answered and reply.status in success:
        if parse is None:
            return Result("ok", http_status=status, body=reply.body)
        try:
            order = parse(reply.body)
        except (KeyError, TypeError, ValueError) as exc:
            return Result(
                "info",
                error=f"unreadable answer ({type(exc).__name__}: {exc})",
                http_status=status,
                body=reply.body,
            )
        return Result("ok", order=order, http_status=status, body=reply.body)
    if reply.refused:
        return Result("fail", error=reply.error, retry=True)
    if reply.answered and reply.status < 500:
        return Result("fail", error=reply.error, http_status=status, body=reply.body)
    return Result("info", error=reply.error, http_status=status, body=reply.body)


class PlainHttp:
    """A blocking `Http` for use outside Locust (the black-box final read): urllib, no pool."""

    def __init__(self, base_url: str, *, timeout_s: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

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
        import json as json_module

        data = None if json is None else json_module.dumps(json).encode()
        all_headers = {"Accept": "application/json", **(headers or {})}
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        url = path if "://" in path else f"{self.base_url}{path}"
        request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return Reply(status=response.status, body=json_object(response.read()))
        except urllib.error.HTTPError as exc:
            return Reply(status=exc.code, body=json_object(exc.read()))
        except urllib.error.URLError as exc:
            reason = exc.reason
            refused = isinstance(reason, ConnectionRefusedError)
            name_ = type(reason).__name__ if isinstance(reason, BaseException) else "URLError"
            return Reply(status=0, transport_error=f"{name_}: {reason}", refused=refused)
        except (TimeoutError, OSError) as exc:
            return Reply(status=0, transport_error=f"{type(exc).__name__}: {exc}")


def load_adapter(spec: str, base_dir: Path | str | None = None) -> type[OrderAdapter]:
    """The adapter class named by `spec`: "package.module:Class" (importable) or
    "relative/file.py:Class" (a file, relative to `base_dir`, e.g. the target file's folder)."""
    where, sep, class_name = spec.rpartition(":")
    if not sep or not where or not class_name.isidentifier():
        raise AdapterError(f"adapter {spec!r}: expected 'module.path:Class' or 'file.py:Class'")
    if where.endswith(".py") or "/" in where:
        module = _module_from_file(spec, Path(base_dir or ".") / where)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise AdapterError(f"adapter {spec!r}: cannot import {where}: {exc}") from None
    adapter = getattr(module, class_name, None)
    if not (isinstance(adapter, type) and issubclass(adapter, OrderAdapter)):
        raise AdapterError(
            f"adapter {spec!r}: {where} has no class {class_name} subclassing "
            "loadtests.adapter.OrderAdapter"
        )
    return adapter


def _module_from_file(spec: str, path: Path) -> Any:
    path = path.resolve()
    if not path.is_file():
        raise AdapterError(f"adapter {spec!r}: no file {path}")
    name = f"chaosbed_adapter_{abs(hash(str(path)))}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise AdapterError(f"adapter {spec!r}: cannot load {path}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise AdapterError(f"adapter {spec!r}: {path} failed to import: {exc!r}") from None
    return module
