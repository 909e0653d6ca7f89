"""`python -m services.inventory`: serve the inventory on CHAOSBED_HOST:CHAOSBED_PORT.

CHAOSBED_SEED_STOCK='{"sku-1": 100}' adds skus that do not exist yet, so a restart
after a crash keeps the stock the database already holds.
"""

from __future__ import annotations

import os

from services.common.server import serve
from services.common.settings import Settings, SettingsError
from services.inventory.app import create_app
from services.inventory.domain import SeedStockError, parse_seed_stock


def main() -> None:
    try:
        settings = Settings.from_env("inventory")
        seed = parse_seed_stock(os.environ.get("CHAOSBED_SEED_STOCK", ""))
        app = create_app(settings, seed_stock=seed)  # telemetry reads its OTEL_* variables here
    except (SettingsError, SeedStockError) as exc:
        raise SystemExit(f"inventory: {exc}") from None
    serve(app, settings)


if __name__ == "__main__":
    main()
