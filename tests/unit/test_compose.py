"""docker-compose.yml: mounts and build context exist, every URL names a real service and port,
links go through the right Toxiproxy proxy, dashboards and provisioning are mounted."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from chaosbed.stack import NOTIFY_PATH, PROXIES

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
APP_SERVICES = ("order", "channel", "inventory")
# which CHAOSBED_* URL of which service must go through which proxy (DESIGN.md "Links")
LINK_VARS = {
    ("order", "CHAOSBED_INVENTORY_URL"): "order_inventory",
    ("order", "CHAOSBED_CHANNEL_URL"): "order_channel",
    ("channel", "CHAOSBED_NOTIFY_URL"): "channel_notify",
}


def _toxiproxy_config() -> list[dict[str, Any]]:
    proxies: list[dict[str, Any]] = json.loads((ROOT / "deploy" / "toxiproxy.json").read_text())
    return proxies


def _env(service: str) -> dict[str, str]:
    return {k: str(v) for k, v in (SERVICES[service].get("environment") or {}).items()}


def _command(service: str) -> list[str]:
    command = SERVICES[service].get("command") or []
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def _endpoint_ports(config: dict[str, Any]) -> set[int]:
    """Every `endpoint: host:port` in an OTel-Collector-style config."""
    ports: set[int] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "endpoint" and isinstance(value, str) and ":" in value:
                    ports.add(int(value.rsplit(":", 1)[1]))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(config)
    return ports


def _listening_ports() -> dict[str, set[int]]:
    """Container ports each compose service listens on, from its own configuration."""
    ports: dict[str, set[int]] = {
        name: {int(_env(name)["CHAOSBED_PORT"])} for name in APP_SERVICES
    }
    ports["toxiproxy"] = {8474} | {int(p["listen"].rsplit(":", 1)[1]) for p in _toxiproxy_config()}
    ports["otel-collector"] = _endpoint_ports(
        yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
    ) | {8888}
    ports["jaeger"] = _endpoint_ports(yaml.safe_load((ROOT / "deploy" / "jaeger.yaml").read_text()))
    ports["prometheus"] = {9090}
    ports["grafana"] = {3000}
    ports["locust-master"] = {8089, 5557, int(_env("locust-master")["CHAOSBED_LOAD_METRICS_PORT"])}
    ports["chaosbed"] = {int(_option("chaosbed", "--metrics-port"))}
    return ports


def _option(service: str, name: str) -> str:
    """The value of `name=value` in a service's command."""
    (value,) = [c.split("=", 1)[1] for c in _command(service) if c.startswith(f"{name}=")]
    return value


def _mounts(service: str) -> list[tuple[str, str]]:
    result = []
    for volume in SERVICES[service].get("volumes") or []:
        source, target = volume.split(":")[:2]
        result.append((source, target))
    return result


def test_expected_services() -> None:
    assert {
        "order", "channel", "inventory", "toxiproxy", "otel-collector", "jaeger", "prometheus",
        "grafana", "locust-master", "locust-worker", "chaosbed",
    } <= set(SERVICES)


def test_bind_mounts_and_named_volumes_exist() -> None:
    named = set(COMPOSE.get("volumes") or {})
    for name in SERVICES:
        for source, _ in _mounts(name):
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: mounted {source} does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"


def test_build_context_dockerfile_and_copy_sources_exist() -> None:
    contexts = {
        (s["build"]["context"], s["build"].get("dockerfile", "Dockerfile"))
        for s in SERVICES.values() if "build" in s
    }
    assert contexts, "no service builds the chaosbed image"
    for context, dockerfile in contexts:
        path = ROOT / context / dockerfile
        assert path.is_file(), f"{path} missing"
        for line in path.read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (ROOT / context / source).exists(), f"COPY source {source} missing"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and "runs" in ignored


def test_every_url_names_a_service_and_a_port_it_listens_on() -> None:
    listening = _listening_ports()
    checked = 0
    for name in SERVICES:
        values = list(_env(name).values()) + _command(name)
        for value in values:
            for url in re.findall(r"https?://[^\s'\"]+", value):
                parts = urlsplit(url)
                assert parts.hostname in SERVICES, f"{name}: {url} names no compose service"
                assert parts.port in listening[parts.hostname], (
                    f"{name}: {url}: {parts.hostname} does not listen on {parts.port}"
                )
                checked += 1
    assert checked >= 9  # OTLP x3, the three links, Locust host and channel URLs


def test_service_links_go_through_the_right_proxy() -> None:
    by_port = {int(p["listen"].rsplit(":", 1)[1]): p["name"] for p in _toxiproxy_config()}
    for (service, var), proxy in LINK_VARS.items():
        url = urlsplit(_env(service)[var])
        assert url.hostname == "toxiproxy", f"{service} {var} bypasses Toxiproxy"
        assert by_port[url.port or 0] == proxy, f"{service} {var} uses the wrong proxy"
    assert urlsplit(_env("channel")["CHAOSBED_NOTIFY_URL"]).path == NOTIFY_PATH
    host = next(c for c in _command("locust-master") if c.startswith("--host="))
    assert by_port[urlsplit(host.split("=", 1)[1]).port or 0] == "client_order"
    channel = urlsplit(_env("locust-master")["CHAOSBED_CHANNEL_URL"])
    assert channel.hostname == "toxiproxy" and by_port[channel.port or 0] == "client_channel"


def test_toxiproxy_config_matches_the_stack_proxies() -> None:
    proxies = {p["name"]: p for p in _toxiproxy_config()}
    assert set(proxies) == set(PROXIES)
    for name, (_, target) in PROXIES.items():
        host, port = proxies[name]["upstream"].rsplit(":", 1)
        assert host == target, f"{name} should lead to {target}, not {host}"
        assert int(port) == int(_env(target)["CHAOSBED_PORT"]), f"{name}: wrong upstream port"
    command = _command("toxiproxy")
    config_arg = next(c for c in command if c.startswith("-config="))
    assert (ROOT / "deploy/toxiproxy.json", config_arg.split("=", 1)[1]) in {
        ((ROOT / s).resolve(), t) for s, t in _mounts("toxiproxy")
    }
    assert "-proxy-metrics" in command  # /metrics for the Chaos dashboard


def test_services_export_traces_to_the_collector() -> None:
    for name in APP_SERVICES:
        env = _env(name)
        assert env["OTEL_SERVICE_NAME"] == name
        assert urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"]).hostname == "otel-collector"
        assert env["CHAOSBED_HOST"] == "0.0.0.0"


def test_prometheus_scrapes_every_service_with_exemplars() -> None:
    command = _command("prometheus")
    assert "--enable-feature=exemplar-storage" in command
    config_path = next(c for c in command if c.startswith("--config.file=")).split("=", 1)[1]
    (source,) = [s for s, t in _mounts("prometheus") if t == config_path]
    config = yaml.safe_load((ROOT / source).read_text())
    listening = _listening_ports()
    scraped = set()
    for job in config["scrape_configs"]:
        for group in job["static_configs"]:
            for target in group["targets"]:
                host, port = target.rsplit(":", 1)
                assert int(port) in listening[host], f"{target} is not a listening port"
                scraped.add(host)
    assert set(APP_SERVICES) | {"toxiproxy"} <= scraped


def test_grafana_gets_provisioning_and_the_generated_dashboards() -> None:
    mounts = dict((t, s) for s, t in _mounts("grafana"))
    assert Path(mounts["/etc/grafana/provisioning/datasources"]).as_posix().endswith(
        "dashboards/provisioning/datasources"
    )
    assert "/etc/grafana/provisioning/dashboards" in mounts
    provider_file = ROOT / mounts["/etc/grafana/provisioning/dashboards"] / "dashboards.yaml"
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    json_dir = ROOT / mounts[provider["options"]["path"]]
    assert json_dir.resolve() == (ROOT / "dashboards" / "json").resolve()
    assert sorted(p.name for p in json_dir.glob("*.json"))
    home = _env("grafana")["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (json_dir / Path(home).relative_to(provider["options"]["path"])).is_file()
    datasources = yaml.safe_load(
        (ROOT / mounts["/etc/grafana/provisioning/datasources"] / "datasources.yaml").read_text()
    )["datasources"]
    listening = _listening_ports()
    for source in datasources:
        url = urlsplit(source["url"])
        assert url.hostname in SERVICES and url.port in listening[url.hostname], source["url"]


def test_host_ports_are_loopback_only() -> None:
    for name, service in SERVICES.items():
        for mapping in service.get("ports") or []:
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping} publicly"


def test_docker_compose_config_accepts_the_file() -> None:
    if shutil.which("docker-compose"):
        argv = ["docker-compose"]
    elif shutil.which("docker") and subprocess.run(
        ["docker", "compose", "version"], capture_output=True, timeout=30
    ).returncode == 0:
        argv = ["docker", "compose"]
    else:
        pytest.fail("neither docker-compose nor the docker compose plugin: run make setup")
    result = subprocess.run(
        [*argv, "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_chaosbed_service_runs_a_fault_timeline_against_the_compose_stack() -> None:
    from chaosbed.timeline import process_fault_problem
    from faults.scenario import load_scenario

    command = _command("chaosbed")
    assert command[:4] == ["python", "-m", "chaosbed", "faults"]
    assert "--repeat" in command and _option("chaosbed", "--metrics-host") == "0.0.0.0"
    # the default scenario of `${CHAOSBED_SCENARIO:-name}` is shipped and runs without pids
    match = re.fullmatch(r"\$\{CHAOSBED_SCENARIO:-([a-z0-9-]+)\}", command[4])
    assert match, command[4]
    scenario = load_scenario(match.group(1))
    stack_target = _option("chaosbed", "--attach")
    (source,) = [s for s, t in _mounts("chaosbed") if t == stack_target]
    stack_json = ROOT / source
    from chaosbed.stack import Stack

    stack = Stack.attach(stack_json)
    try:
        assert process_fault_problem(scenario, stack) is None
    finally:
        stack.stop()
    runs_dir = _option("chaosbed", "--runs-dir")
    assert any(runs_dir.startswith(t) for s, t in _mounts("chaosbed") if not s.startswith("."))
    # the token the behaviour faults send is the one the services check
    assert _env("chaosbed")["CHAOSBED_ADMIN_TOKEN"] == _env("channel")["CHAOSBED_ADMIN_TOKEN"]


def test_compose_stack_json_names_the_compose_services_and_proxies() -> None:
    (source,) = [s for s, t in _mounts("chaosbed") if t == _option("chaosbed", "--attach")]
    info = json.loads((ROOT / source).read_text())
    listening = _listening_ports()
    for name in APP_SERVICES:
        url = urlsplit(info["services"][name]["url"])
        assert (url.hostname, url.port) == (name, int(_env(name)["CHAOSBED_PORT"])), url
        assert info["services"][name]["pid"] is None  # no process faults across containers
    api = urlsplit(info["toxiproxy"]["api"])
    assert api.hostname == "toxiproxy" and api.port in listening["toxiproxy"]
    proxies = {p["name"]: p for p in _toxiproxy_config()}
    assert set(info["proxies"]) == set(proxies) == set(PROXIES)
    for name, proxy in info["proxies"].items():
        url = urlsplit(proxy["url"])
        assert url.hostname == "toxiproxy"
        assert url.port == int(proxies[name]["listen"].rsplit(":", 1)[1]), name
        assert proxy["upstream"] == proxies[name]["upstream"], name


def test_prometheus_scrapes_the_fault_gauge_and_the_load_generator() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {
        job["job_name"]: [t for g in job["static_configs"] for t in g["targets"]]
        for job in config["scrape_configs"]
    }
    assert jobs["harness"] == [f"chaosbed:{_option('chaosbed', '--metrics-port')}"]
    assert jobs["loadgen"] == [
        f"locust-master:{_env('locust-master')['CHAOSBED_LOAD_METRICS_PORT']}"
    ]
