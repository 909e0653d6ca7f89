"""The one way chaosbed talks to Toxiproxy: its HTTP API, with timeouts and real errors.

toxiproxy-python (pinned in pyproject) is not used: its API host/port are class-level
globals (two stacks side by side would share them), its requests have no timeout,
`populate` is done client-side, `add_toxic` returns nothing and destroying a missing
toxic fails silently.  Toxiproxy's API is small, so this module calls it directly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

STREAMS = ("upstream", "downstream")

# toxic type -> the attributes Toxiproxy 2.12 understands (all integers, ms / bytes / KB/s)
TOXIC_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "latency": ("latency", "jitter"),
    "timeout": ("timeout",),
    "reset_peer": ("timeout",),
    "limit_data": ("bytes",),
    "bandwidth": ("rate",),
    "slow_close": ("delay",),
    "slicer": ("average_size", "size_variation", "delay"),
}
TOXIC_TYPES = tuple(TOXIC_ATTRIBUTES)


class ToxiproxyError(Exception):
    """A Toxiproxy call failed; the message names the proxy/toxic and the server's reason."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ProxySpec:
    """One proxy to create: `listen` may use port 0 (Toxiproxy picks a free port)."""

    name: str
    upstream: str
    listen: str = "127.0.0.1:0"
    enabled: bool = True

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
        }


def validate_toxic(
    type: str, stream: str, toxicity: float, attributes: Mapping[str, Any]
) -> None:
    """Raise ToxiproxyError naming the bad field; Toxiproxy itself ignores unknown attributes."""
    if type not in TOXIC_ATTRIBUTES:
        hint = " ('down' is not a toxic: use set_enabled(proxy, False))" if type == "down" else ""
        raise ToxiproxyError(
            f"unknown toxic type {type!r}; allowed: {', '.join(TOXIC_TYPES)}{hint}"
        )
    if stream not in STREAMS:
        raise ToxiproxyError(f"toxic stream {stream!r} must be one of {', '.join(STREAMS)}")
    if isinstance(toxicity, bool) or not isinstance(toxicity, int | float):
        raise ToxiproxyError(f"toxicity {toxicity!r} must be a number in [0, 1]")
    if not 0.0 <= float(toxicity) <= 1.0:
        raise ToxiproxyError(f"toxicity {toxicity!r} must be in [0, 1]")
    allowed = TOXIC_ATTRIBUTES[type]
    for key, value in attributes.items():
        if key not in allowed:
            raise ToxiproxyError(
                f"{type} toxic has no attribute {key!r}; allowed: {', '.join(allowed)}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ToxiproxyError(f"{type} toxic attribute {key}={value!r} must be an integer >= 0")


class Toxiproxy:
    """A client for one toxiproxy-server, e.g. `Toxiproxy("http://127.0.0.1:8474")`."""

    def __init__(self, api_url: str, timeout_s: float = 2.0) -> None:
        self.api_url = api_url.rstrip("/")
        self._client = httpx.Client(base_url=self.api_url, timeout=httpx.Timeout(timeout_s))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Toxiproxy:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- server -------------------------------------------------------------

    def version(self) -> str:
        body = self._call("GET", "/version", what="version")
        # 2.12 answers {"version": "2.12.0"}; older servers answer the bare string
        return str(body["version"]) if isinstance(body, dict) else str(body)

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call("POST", "/reset", what="reset")

    # --- proxies ------------------------------------------------------------

    def populate(self, proxies: list[ProxySpec]) -> dict[str, dict[str, Any]]:
        """Create or replace the proxies server-side in one call; returns them by name."""
        names = [p.name for p in proxies]
        if len(set(names)) != len(names):
            raise ToxiproxyError(f"populate: duplicate proxy names in {names}")
        body = self._call(
            "POST", "/populate", json=[p.as_json() for p in proxies], what=f"populate {names}"
        )
        return {p["name"]: p for p in body["proxies"]}

    def proxies(self) -> dict[str, dict[str, Any]]:
        body = self._call("GET", "/proxies", what="list proxies")
        return dict(body)

    def proxy(self, proxy: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/proxies/{proxy}", what=f"proxy {proxy!r}"))

    def set_enabled(self, proxy: str, enabled: bool) -> dict[str, Any]:
        """Disabled = the link is down: the listener closes and connections are refused."""
        return dict(
            self._call(
                "POST",
                f"/proxies/{proxy}",
                json={"enabled": bool(enabled)},
                what=f"{'enable' if enabled else 'disable'} proxy {proxy!r}",
            )
        )

    # --- toxics -------------------------------------------------------------

    def add_toxic(
        self,
        proxy: str,
        type: str,
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        attributes: Mapping[str, int] | None = None,
        name: str | None = None,
    ) -> dict[str, Any]:
        """Add a toxic and return it as Toxiproxy created it (name, attributes, ...)."""
        attrs = dict(attributes or {})
        validate_toxic(type, stream, toxicity, attrs)
        payload: dict[str, Any] = {
            "type": type,
            "stream": stream,
            "toxicity": float(toxicity),
            "attributes": attrs,
        }
        if name is not None:
            payload["name"] = name
        label = f"toxic {name or f'{type}_{stream}'!r} on proxy {proxy!r}"
        created = self._call("POST", f"/proxies/{proxy}/toxics", json=payload, what=f"add {label}")
        return dict(created)

    def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove a toxic; raises ToxiproxyError (status 404) when it does not exist."""
        what = f"remove toxic {name!r} on proxy {proxy!r}"
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}", what=what)

    def toxics(self, proxy: str) -> list[dict[str, Any]]:
        what = f"toxics of proxy {proxy!r}"
        return list(self._call("GET", f"/proxies/{proxy}/toxics", what=what))

    # --- transport ----------------------------------------------------------

    def _call(self, method: str, path: str, *, what: str, json: Any = None) -> Any:
        try:
            response = self._client.request(method, path, json=json)
        except httpx.HTTPError as exc:
            raise ToxiproxyError(
                f"{what}: Toxiproxy API {self.api_url} unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        if response.status_code >= 400:
            raise ToxiproxyError(
                f"{what}: Toxiproxy answered {response.status_code}: {_server_message(response)}",
                status=response.status_code,
            )
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return response.text


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or "(empty body)"
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return str(body)
