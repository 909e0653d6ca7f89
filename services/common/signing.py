"""Notification signatures: HMAC-SHA256 over "<timestamp>.<body>", Stripe-style header.

Header: `Chaosbed-Signature: t=<unix seconds>,v1=<hex digest>`.
"""

from __future__ import annotations

import hashlib
import hmac

from services.common.limits import quote

SIGNATURE_HEADER = "Chaosbed-Signature"


class SignatureError(ValueError):
    """A notification's signature header is missing, malformed, wrong or too old."""


def signature(secret: str, timestamp: int, body: bytes) -> str:
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The header value for `body` sent at `timestamp`."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(secret: str, header: str | None, body: bytes, *, now: float, tolerance_s: float) -> int:
    """Return the signed timestamp, or raise SignatureError saying what is wrong."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    parts: dict[str, str] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {SIGNATURE_HEADER} header: {quote(item)}")
        parts[key] = value
    if "t" not in parts or "v1" not in parts:
        raise SignatureError(f"{SIGNATURE_HEADER} header needs t= and v1=")
    try:
        timestamp = int(parts["t"])
    except ValueError:
        raise SignatureError(f"signature timestamp {quote(parts['t'])} is not an integer") from None
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(
            f"signature timestamp {timestamp} is outside the {tolerance_s:.0f}s tolerance"
        )
    expected = signature(secret, timestamp, body)
    if not hmac.compare_digest(expected, parts["v1"]):
        raise SignatureError("signature does not match the body")
    return timestamp
