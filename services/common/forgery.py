"""The kinds of forged payment notification: one vocabulary for both forgers.

The channel sends forgeries when its `forged_notify_rate` knob is on; the load generator's
forgers send them as an attacker would.  A kind names what the forger did; the order
service answers with a refusal code, which names what its handler saw, so the two
vocabularies differ and `REFUSED_AS` maps one onto the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class ForgeryKind(StrEnum):
    UNSIGNED = "unsigned"  # no signature header at all
    WRONG_KEY = "wrong_key"  # signed with a key that is not the notify secret
    STALE_TIMESTAMP = "stale_timestamp"  # signed, but outside the tolerance window
    ALTERED_REPLAY = "altered_replay"  # a captured notification sent again with another amount


FORGERY_KINDS: tuple[ForgeryKind, ...] = tuple(ForgeryKind)

# the order's refusal codes for each kind when the forger signs with the real notify secret
REFUSED_AS: Mapping[ForgeryKind, frozenset[str]] = {
    ForgeryKind.UNSIGNED: frozenset({"bad_signature"}),
    ForgeryKind.WRONG_KEY: frozenset({"bad_signature"}),
    ForgeryKind.STALE_TIMESTAMP: frozenset({"stale_timestamp"}),
    ForgeryKind.ALTERED_REPLAY: frozenset({"notify_replayed_altered", "amount_mismatch"}),
}
# signed with any other key, every kind fails the signature check first
REFUSED_WITHOUT_SECRET = frozenset({"bad_signature"})


def refusal_codes(kind: ForgeryKind, *, signed_with_secret: bool) -> frozenset[str]:
    """The order service's refusal codes a forgery of `kind` can earn."""
    return REFUSED_AS[kind] if signed_with_secret else REFUSED_WITHOUT_SECRET
