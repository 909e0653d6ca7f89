"""`python -m services.order`: serve the order service on CHAOSBED_HOST:CHAOSBED_PORT."""

from __future__ import annotations

from services.common.server import serve
from services.common.settings import Settings, SettingsError
from services.order.app import create_app


def main() -> None:
    try:
        settings = Settings.from_env("order")
        app = create_app(settings)  # telemetry reads its OTEL_* variables here
    except SettingsError as exc:
        raise SystemExit(f"order: {exc}") from None
    serve(app, settings)


if __name__ == "__main__":
    main()
