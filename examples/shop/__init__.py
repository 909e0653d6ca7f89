"""examples/shop: a checkout service on aiohttp.web + SQLite (README.md)."""
