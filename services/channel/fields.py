"""Field types for the channel's request bodies that match their JSON schema exactly.

Pydantic's lax mode would accept "100" for an integer and 0 for a boolean; its strict
mode would refuse 100.0, which JSON Schema counts as an integer.  These accept what
the published schema says and nothing else.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field

from services.common.fields import ID_PATTERN, JSON_INT, MAX_AMOUNT

MAX_SQLITE_INT = 2**63 - 1


def _json_number(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a JSON number")
    return value


def _json_boolean(value: object) -> object:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


# (constraints must come before the validator, or pydantic leaves them out of the schema)
JSON_NUMBER = BeforeValidator(_json_number)
JsonBool = Annotated[bool, BeforeValidator(_json_boolean)]

Id = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
# integer minor units (cents)
Amount = Annotated[int, Field(ge=1, le=MAX_AMOUNT), JSON_INT]
Rate = Annotated[float, Field(ge=0.0, le=1.0), JSON_NUMBER]

# Test cards, as real channels' sandboxes have them: the shopper's card decides the payment's
# path.  declined: refused, a failed charge in the ledger; slow_notify: the notification is held
# past the merchant's active-query time; offline: an offline wallet whose charge is captured even
# when the payment was closed meanwhile (the merchant must refund it).
Card = Literal["default", "declined", "slow_notify", "offline"]
