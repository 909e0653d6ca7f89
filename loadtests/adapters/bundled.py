"""The adapter of chaosbed's bundled order service (services/order, docs/contracts.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from loadtests.adapter import OrderAdapter, OrderView, Result, result_of, trace_headers


class BundledAdapter(OrderAdapter):
    """POST /orders with an Idempotency-Key header; GET /orders/{order_id}."""

    def place_order(
        self, *, key: str, sku: str, qty: int, amount: int, traceparent: str | None = None
    ) -> Result:
        reply = self.http.request(
            "POST",
            "/orders",
            json={"sku": sku, "qty": qty, "amount": amount},
            headers={"Idempotency-Key": key, **trace_headers(traceparent)},
            name="/orders",
            expected=(400, 409, 422),
        )
        return result_of(reply, order_view, success=(200, 201))

    def read_order(self, order_id: str, *, traceparent: str | None = None) -> Result:
        reply = self.http.request(
            "GET",
            f"/orders/{order_id}",
            headers=trace_headers(traceparent),
            name="/orders/[id]",
            expected=(404,),
        )
        return result_of(reply, order_view, success=(200,))


def order_view(body: Mapping[str, Any]) -> OrderView:
    """The bundled service's order JSON (OrderOut) as the journeys see it."""
    payment_id = body.get("payment_id")
    amount = body.get("amount")
    return OrderView(
        order_id=str(body["order_id"]),
        status=str(body["status"]),
        payment_id=None if payment_id is None else str(payment_id),
        amount=None if amount is None else int(amount),
        raw=dict(body),
    )
