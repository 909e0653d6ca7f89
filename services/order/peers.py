"""Typed clients for the order service's two peers: inventory (TCC) and channel (payments).

They speak docs/contracts.md over `services.common.http.ServiceClient` and turn every
answer into one of three things the saga can act on:
- a typed result (the call succeeded),
- `PeerRefused` (a definite 4xx refusal with the peer's error code; retrying will not help),
- `PeerUnavailable` (unreachable, ambiguous, 5xx or unreadable: it may work later and,
  because every call is idempotent, it is safe to repeat).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from services.common.http import PeerError, ServiceClient
from services.common.settings import Settings


class Answer(Protocol):
    """What the clients read from a response (ServiceClient's PeerResponse; a fake's own)."""

    @property
    def status_code(self) -> int: ...

    def json(self) -> Any: ...


class Requester(Protocol):
    """What the clients need from ServiceClient (tests pass an in-process fake)."""

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer: ...


class PeerUnavailable(Exception):
    """The peer gave no usable answer; an idempotent retry may succeed later."""


class PeerRefused(Exception):
    """The peer definitely refused the request (4xx) with an error code."""

    def __init__(self, peer: str, status: int, code: str, detail: str) -> None:
        super().__init__(f"{peer} refused ({status} {code}): {detail}")
        self.status = status
        self.code = code


async def _call(
    requester: Requester, peer: str, method: str, path: str, *, body: Any = None
) -> tuple[int, dict[str, Any]]:
    """Send one request; return (status, JSON body) for 2xx/4xx, raise PeerUnavailable otherwise."""
    try:
        response = await requester.request(method, path, json=body)
    except PeerError as exc:
        raise PeerUnavailable(str(exc)) from exc
    if response.status_code >= 500:
        raise PeerUnavailable(f"{peer}: {method} {path} answered {response.status_code}")
    try:
        answer = response.json()
    except ValueError:
        raise PeerUnavailable(f"{peer}: {method} {path} answered non-JSON") from None
    if not isinstance(answer, dict):
        raise PeerUnavailable(f"{peer}: {method} {path} answered {type(answer).__name__}")
    return response.status_code, answer


def _refused(peer: str, status: int, answer: dict[str, Any]) -> PeerRefused:
    return PeerRefused(
        peer, status, str(answer.get("error", "unknown")), str(answer.get("detail", ""))
    )


def _field(peer: str, answer: dict[str, Any], name: str) -> Any:
    if name not in answer:
        raise PeerUnavailable(f"{peer}: answer lacks {name!r}")
    return answer[name]


class ReserveOutcome(StrEnum):
    RESERVED = "reserved"
    OUT_OF_STOCK = "out_of_stock"
    UNKNOWN_SKU = "unknown_sku"
    CANCELLED = "reservation_cancelled"  # a cancel (tombstone) got there first
    CONFLICT = "reservation_conflict"


_RESERVE_REFUSALS = {outcome.value: outcome for outcome in ReserveOutcome}


class InventoryPeer:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def reserve(self, order_id: str, sku: str, qty: int) -> ReserveOutcome:
        """TCC try, idempotent by order id."""
        status, answer = await _call(
            self._requester,
            "inventory",
            "POST",
            "/reservations",
            body={"order_id": order_id, "sku": sku, "qty": qty},
        )
        if status < 300:
            return ReserveOutcome.RESERVED
        outcome = _RESERVE_REFUSALS.get(str(answer.get("error")))
        if outcome is None:
            raise _refused("inventory", status, answer)
        return outcome

    async def confirm(self, order_id: str) -> None:
        await self._settle(order_id, "confirm")

    async def confirm_many(self, order_ids: list[str]) -> dict[str, str]:
        """TCC confirm of several orders in one call; the refused ones, with their error code.

        An order the answer does not mention is neither: PeerUnavailable (retry the batch).
        """
        body = {"order_ids": order_ids}
        status, answer = await _call(
            self._requester, "inventory", "POST", "/reservations/confirm", body=body
        )
        if status >= 300:
            raise _refused("inventory", status, answer)
        results = answer.get("results")
        if not isinstance(results, list):
            raise PeerUnavailable("inventory: confirm batch answer lacks 'results'")
        answered = {r.get("order_id"): r for r in results if isinstance(r, dict)}
        missing = [order_id for order_id in order_ids if order_id not in answered]
        if missing:
            raise PeerUnavailable(f"inventory: confirm batch did not answer for {missing[:5]}")
        return {
            order_id: str(answered[order_id]["error"])
            for order_id in order_ids
            if answered[order_id].get("error") is not None
        }

    async def cancel(self, order_id: str) -> None:
        await self._settle(order_id, "cancel")

    async def _settle(self, order_id: str, action: str) -> None:
        path = f"/reservations/{order_id}/{action}"
        status, answer = await _call(self._requester, "inventory", "POST", path)
        if status >= 300:
            raise _refused("inventory", status, answer)


class PaymentStatus(StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    CLOSED = "CLOSED"
    REFUNDED = "REFUNDED"


@dataclass(frozen=True)
class Payment:
    payment_id: str
    merchant_order_id: str
    amount: int
    status: str
    txn_id: str | None
    paid_at: float | None

    @property
    def paid(self) -> bool:
        return self.status == PaymentStatus.SUCCEEDED and self.txn_id is not None

    @classmethod
    def parse(cls, answer: dict[str, Any]) -> Payment:
        try:
            return cls(
                payment_id=str(_field("channel", answer, "payment_id")),
                merchant_order_id=str(_field("channel", answer, "merchant_order_id")),
                amount=int(_field("channel", answer, "amount")),
                status=str(_field("channel", answer, "status")),
                txn_id=None if answer.get("txn_id") is None else str(answer["txn_id"]),
                paid_at=None if answer.get("paid_at") is None else float(answer["paid_at"]),
            )
        except (TypeError, ValueError) as exc:
            raise PeerUnavailable(f"channel: unreadable payment {answer!r}: {exc}") from None


@dataclass(frozen=True)
class BillEntry:
    seq: int
    txn_id: str
    payment_id: str
    merchant_order_id: str
    kind: str  # charge | refund
    amount: int
    t: float


@dataclass(frozen=True)
class Bill:
    entries: list[BillEntry]
    next_cursor: int


class ChannelPeer:
    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def create_payment(self, merchant_order_id: str, amount: int) -> Payment:
        """Create (or, for a known merchant order id, replay) a payment."""
        body = {"merchant_order_id": merchant_order_id, "amount": amount}
        status, answer = await _call(self._requester, "channel", "POST", "/payments", body=body)
        if status >= 300:
            raise _refused("channel", status, answer)
        return Payment.parse(answer)

    async def get_payment(self, payment_id: str) -> Payment:
        status, answer = await _call(self._requester, "channel", "GET", f"/payments/{payment_id}")
        if status >= 300:
            raise _refused("channel", status, answer)
        return Payment.parse(answer)

    async def find_payment(self, merchant_order_id: str) -> Payment | None:
        path = f"/payments?merchant_order_id={merchant_order_id}"
        status, answer = await _call(self._requester, "channel", "GET", path)
        if status == 404:
            return None
        if status >= 300:
            raise _refused("channel", status, answer)
        return Payment.parse(answer)

    async def close_payment(self, payment_id: str) -> bool:
        """Close an unpaid payment: True when closed, False when it was already paid."""
        path = f"/payments/{payment_id}/close"
        status, answer = await _call(self._requester, "channel", "POST", path)
        if status < 300:
            return True
        if answer.get("error") == "already_paid":
            return False
        raise _refused("channel", status, answer)

    async def refund(self, payment_id: str, refund_id: str, amount: int) -> None:
        """Refund, idempotent by refund_id."""
        path = f"/payments/{payment_id}/refunds"
        body = {"refund_id": refund_id, "amount": amount}
        status, answer = await _call(self._requester, "channel", "POST", path, body=body)
        if status >= 300:
            raise _refused("channel", status, answer)

    async def bill(self, cursor: int, limit: int) -> Bill:
        path = f"/bills?cursor={cursor}&limit={limit}"
        status, answer = await _call(self._requester, "channel", "GET", path)
        if status >= 300:
            raise _refused("channel", status, answer)
        try:
            entries = [
                BillEntry(
                    seq=int(e["seq"]),
                    txn_id=str(e["txn_id"]),
                    payment_id=str(e["payment_id"]),
                    merchant_order_id=str(e["merchant_order_id"]),
                    kind=str(e["kind"]),
                    amount=int(e["amount"]),
                    t=float(e["t"]),
                )
                for e in answer["entries"]
            ]
            return Bill(entries=entries, next_cursor=int(answer["next_cursor"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise PeerUnavailable(f"channel: unreadable bill: {exc!r}") from None


class Peers:
    """Both peers of the order service, owning their HTTP clients."""

    def __init__(self, inventory: Requester, channel: Requester) -> None:
        self.inventory = InventoryPeer(inventory)
        self.channel = ChannelPeer(channel)
        self._requesters = (inventory, channel)

    @classmethod
    def connect(cls, settings: Settings) -> Peers:
        timeout = settings.http_timeout_s
        return cls(
            ServiceClient(settings.inventory_url, timeout_s=timeout, peer="inventory"),
            ServiceClient(settings.channel_url, timeout_s=timeout, peer="channel"),
        )

    async def open(self) -> None:
        """Open the HTTP clients' pooled sessions (in the app's lifespan)."""
        for requester in self._requesters:
            if isinstance(requester, ServiceClient):
                await requester.open()

    async def aclose(self) -> None:
        for requester in self._requesters:
            if isinstance(requester, ServiceClient):
                await requester.close()
