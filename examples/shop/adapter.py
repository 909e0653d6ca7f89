"""The shop's chaosbed adapter: chaosbed's two operations onto the shop's own API.

place an order -> POST /api/orders {"client_key", "sku", "quantity", "total_cents"}
read an order  -> GET /api/orders/{id}
The shop's states are lowercase words of its own; chaosbed's journeys and checkers know
AWAITING_PAYMENT, PAID, CLOSED and REJECTED, so they are mapped here (and nowhere else).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loadtests.adapter import OrderAdapter, OrderView, Result, result_of, trace_headers

STATUSES = {
    "new": "CREATED",  # not settled yet: a retry with the same key carries it on
    "awaiting_payment": "AWAITING_PAYMENT",
    "paid": "PAID",
    "closed": "CLOSED",
    "rejected": "REJECTED",
    "refunded": "CLOSED",  # paid, stock gone, money returned: not a paid order
}


class ShopAdapter(OrderAdapter):
    def place_order(
        self, *, key: str, sku: str, qty: int, amount: int, traceparent: str | None = None
    ) -> Result:
        reply = self.http.request(
            "POST",
            "/api/orders",
            json={"client_key": key, "sku": sku, "quantity": qty, "total_cents": amount},
            headers=trace_headers(traceparent),
            name="/api/orders",
            expected=(409, 422),
        )
        # 503 dependency_down: the order may be half-way; result_of makes it info (retried)
        return result_of(reply, order_view, success=(200, 201))

    def read_order(self, order_id: str, *, traceparent: str | None = None) -> Result:
        reply = self.http.request(
            "GET",
            f"/api/orders/{order_id}",
            headers=trace_headers(traceparent),
            name="/api/orders/[id]",
            expected=(404,),
        )
        return result_of(reply, order_view, success=(200,))


def order_view(body: Mapping[str, Any]) -> OrderView:
    state = str(body["state"])
    payment_id = body.get("payment_id")
    return OrderView(
        order_id=str(body["id"]),
        status=STATUSES.get(state, state),
        payment_id=None if payment_id is None else str(payment_id),
        amount=int(body["total_cents"]),
        raw=dict(body),
    )
