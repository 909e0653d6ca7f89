"""One settings object per service, read once from environment variables.

Every knob has a CHAOSBED_* variable so the stack supervisor, docker-compose and a
developer's shell configure the services the same way.  Times are in seconds and
already compressed for test runs (a real shop would close unpaid orders after 15-30
minutes; a chaos run has minutes in total).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from services.common.bugs import parse_bugs


class SettingsError(ValueError):
    """A CHAOSBED_* variable has a value the service cannot run with."""


def _str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def _float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a number") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be >= {minimum}")
    return value


def _int(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={raw!r} must be >= {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    service: str
    host: str = "127.0.0.1"
    port: int = 0
    db_path: str = ":memory:"
    admin_token: str = "dev-admin-token"
    notify_secret: str = "dev-notify-secret"
    bugs: frozenset[str] = field(default_factory=frozenset)
    # upstreams (through Toxiproxy in a stack)
    inventory_url: str = ""
    channel_url: str = ""
    notify_url: str = ""
    # timing (seconds)
    http_timeout_s: float = 2.0
    query_after_s: float = 3.0
    close_after_s: float = 20.0
    reconcile_every_s: float = 3.0
    worker_tick_s: float = 0.5
    reservation_ttl_s: float = 60.0
    sweep_every_s: float = 2.0
    signature_tolerance_s: float = 300.0
    time_scale: float = 0.01
    retry_schedule: str = "wechat"
    max_body_bytes: int = 64 * 1024
    # all request header fields together (431 above); the request target has the same cap (414)
    max_header_bytes: int = 16 * 1024

    @classmethod
    def from_env(cls, service: str) -> Settings:
        d = cls(service=service)  # the defaults, written once above
        return cls(
            service=service,
            host=_str("CHAOSBED_HOST", d.host),
            port=_int("CHAOSBED_PORT", d.port),
            db_path=_str("CHAOSBED_DB", d.db_path),
            admin_token=_str("CHAOSBED_ADMIN_TOKEN", d.admin_token),
            notify_secret=_str("CHAOSBED_NOTIFY_SECRET", d.notify_secret),
            bugs=parse_bugs(os.environ.get("CHAOSBED_BUGS", "")),
            inventory_url=_str("CHAOSBED_INVENTORY_URL", d.inventory_url),
            channel_url=_str("CHAOSBED_CHANNEL_URL", d.channel_url),
            notify_url=_str("CHAOSBED_NOTIFY_URL", d.notify_url),
            http_timeout_s=_float("CHAOSBED_HTTP_TIMEOUT_S", d.http_timeout_s, minimum=0.01),
            query_after_s=_float("CHAOSBED_QUERY_AFTER_S", d.query_after_s),
            close_after_s=_float("CHAOSBED_CLOSE_AFTER_S", d.close_after_s),
            reconcile_every_s=_float(
                "CHAOSBED_RECONCILE_EVERY_S", d.reconcile_every_s, minimum=0.05
            ),
            worker_tick_s=_float("CHAOSBED_WORKER_TICK_S", d.worker_tick_s, minimum=0.01),
            reservation_ttl_s=_float(
                "CHAOSBED_RESERVATION_TTL_S", d.reservation_ttl_s, minimum=0.1
            ),
            sweep_every_s=_float("CHAOSBED_SWEEP_EVERY_S", d.sweep_every_s, minimum=0.05),
            signature_tolerance_s=_float("CHAOSBED_SIGNATURE_TOLERANCE_S", d.signature_tolerance_s),
            time_scale=_float("CHAOSBED_TIME_SCALE", d.time_scale, minimum=0.0),
            retry_schedule=_str("CHAOSBED_RETRY_SCHEDULE", d.retry_schedule),
            max_body_bytes=_int("CHAOSBED_MAX_BODY_BYTES", d.max_body_bytes, minimum=256),
            max_header_bytes=_int("CHAOSBED_MAX_HEADER_BYTES", d.max_header_bytes, minimum=1024),
        )

    def bug(self, name: str) -> bool:
        """True when the planted bug `name` is switched on (CHAOSBED_BUGS)."""
        return name in self.bugs
