"""The limits every service's contract shares (docs/contracts.md, "Conventions")."""

from __future__ import annotations

# order ids, payment ids, skus, idempotency keys, notify and refund ids
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
# integer minor units (cents)
MAX_AMOUNT = 100_000_000
MAX_QTY = 1000
