"""Forged payment notifications an attacker could send to the order service.

Each forgery targets one check of the notification handler: the signature's presence, its key,
its timestamp window, and replay of a captured notification with an altered amount.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass

from services.common.forgery import FORGERY_KINDS, ForgeryKind
from services.common.signing import SIGNATURE_HEADER, sign

KINDS = FORGERY_KINDS  # the channel's vocabulary too (services/common/forgery.py)
STALE_BY_S = 3600  # far outside any tolerance window


@dataclass(frozen=True)
class KnownOrder:
    """An order a simulated user has seen, as an attacker watching the traffic would."""

    order_id: str
    payment_id: str
    amount: int
    key: str | None = None  # the idempotency key it was placed with
    txn_id: str | None = None  # known once the shopper has paid


@dataclass(frozen=True)
class Forgery:
    kind: str
    notify_id: str
    txn_id: str
    amount: int
    body: bytes
    headers: dict[str, str]


def forge(kind: str, order: KnownOrder, *, secret: str | None, rng: random.Random) -> Forgery:
    """A notification for `order` that a correct order service must refuse.

    Without the real notify secret, `stale_timestamp` and `altered_replay` are signed with a wrong
    key, so they are still refused, only for a different reason.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown forgery {kind!r}; known: {', '.join(KINDS)}")
    kind = ForgeryKind(kind)
    tag = f"{rng.getrandbits(48):012x}"
    notify_id = f"forged-{tag}"
    txn_id = f"forged-txn-{tag}"
    amount = order.amount
    timestamp = int(time.time())
    key = secret or f"guessed-{tag}"
    if kind is ForgeryKind.WRONG_KEY:
        key = f"guessed-{tag}"
    elif kind is ForgeryKind.STALE_TIMESTAMP:
        timestamp -= STALE_BY_S
    elif kind is ForgeryKind.ALTERED_REPLAY:
        # A captured notification replayed with a smaller amount: same txn, different money.
        txn_id = order.txn_id or txn_id
        amount = max(1, order.amount // 2) if order.amount > 1 else order.amount + 1
    body = json.dumps(
        {
            "notify_id": notify_id,
            "payment_id": order.payment_id,
            "merchant_order_id": order.order_id,
            "txn_id": txn_id,
            "amount": amount,
            "status": "SUCCEEDED",
            "paid_at": float(timestamp),
        },
        separators=(",", ":"),
    ).encode()
    headers = {} if kind is ForgeryKind.UNSIGNED else {SIGNATURE_HEADER: sign(key, timestamp, body)}
    return Forgery(kind.value, notify_id, txn_id, amount, body, headers)
