"""`python -m services.channel`: serve the channel on CHAOSBED_HOST:CHAOSBED_PORT."""

from __future__ import annotations

from services.channel.app import create_app
from services.common.server import serve
from services.common.settings import Settings, SettingsError


def main() -> None:
    try:
        settings = Settings.from_env("channel")
        app = create_app(settings)
    except SettingsError as exc:
        raise SystemExit(f"channel: {exc}") from None
    serve(app, settings)


if __name__ == "__main__":
    main()
