"""The limits every service's contract shares (docs/contracts.md, "Conventions")."""

from __future__ import annotations

from pydantic import BeforeValidator

# order ids, payment ids, skus, idempotency keys, notify and refund ids
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
# integer minor units (cents)
MAX_AMOUNT = 100_000_000
MAX_QTY = 1000


def _json_integer(value: object) -> object:
    """What JSON Schema calls an integer (7 or 7.0) as an int; strings and booleans refused."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("must be a whole number")
        return int(value)
    return value


# after a field's constraints in Annotated[...], or pydantic leaves them out of the schema
JSON_INT = BeforeValidator(_json_integer)
