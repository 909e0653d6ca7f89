"""Dashboards as code: committed JSON matches the builders; panels, datasources, exemplars."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from chaosbed.commands import cmd_dashboards
from dashboards import build

ROOT = Path(__file__).resolve().parents[2]
PROVISIONING = ROOT / "dashboards" / "provisioning"
CONTRACTS = (ROOT / "docs" / "contracts.md").read_text()


def _committed() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(build.JSON_DIR.glob("*.json"))}


def _datasources() -> list[dict[str, Any]]:
    data = yaml.safe_load((PROVISIONING / "datasources" / "datasources.yaml").read_text())
    sources: list[dict[str, Any]] = data["datasources"]
    return sources


def test_committed_json_is_what_the_builders_produce() -> None:
    rendered = build.render()
    committed = {p.name: p.read_text() for p in sorted(build.JSON_DIR.glob("*.json"))}
    assert sorted(committed) == sorted(rendered), "run `chaosbed dashboards`"
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} is stale: run `chaosbed dashboards`"


def test_rendering_is_deterministic(tmp_path: Path) -> None:
    lines: list[str] = []
    assert cmd_dashboards(argparse.Namespace(out=str(tmp_path)), out=lines.append) == 0
    first = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    (tmp_path / "removed-dashboard.json").write_text("{}")
    assert cmd_dashboards(argparse.Namespace(out=str(tmp_path)), out=lines.append) == 0
    second = {p.name: p.read_bytes() for p in tmp_path.glob("*.json")}
    assert first == second  # same bytes, and the stale file is gone
    assert len(first) == 4 and any("overview.json" in line for line in lines)


def test_expected_dashboards_with_unique_uids() -> None:
    dashboards = _committed()
    assert sorted(dashboards) == ["chaos.json", "inventory.json", "overview.json", "payments.json"]
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", ["chaos.json", "inventory.json", "overview.json", "payments.json"])
def test_every_panel_queries_a_provisioned_datasource(name: str) -> None:
    dashboard = _committed()[name]
    uids = {ds["uid"]: ds["type"] for ds in _datasources()}
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    assert dashboard["panels"], f"{name} has no panels"
    for panel in dashboard["panels"]:
        assert panel["type"] in ("timeseries", "stat"), panel["title"]
        assert panel["targets"], f"{panel['title']} has no targets"
        for ref in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
            assert uids.get(ref["uid"]) == ref["type"] == "prometheus", (panel["title"], ref)
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


@pytest.mark.parametrize("name", ["chaos.json", "inventory.json", "overview.json", "payments.json"])
def test_fault_windows_annotation_and_exemplars_on_latency(name: str) -> None:
    dashboard = _committed()[name]
    annotations = dashboard["annotations"]["list"]
    assert any(
        "chaosbed_fault_active" in a["expr"] and a["datasource"]["uid"] == "prometheus"
        and a["enable"] for a in annotations
    )
    for panel in dashboard["panels"]:
        if panel["type"] != "timeseries":
            continue  # exemplars are drawn as points on a time axis only
        for target in panel["targets"]:
            if "histogram_quantile" in target["expr"] and "_server_request_" in target["expr"]:
                assert target.get("exemplar") is True, panel["title"]


def test_datasource_exemplars_link_to_jaeger() -> None:
    sources = {ds["uid"]: ds for ds in _datasources()}
    prometheus = sources[build.PROMETHEUS_UID]
    assert prometheus["type"] == "prometheus"
    (destination,) = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["name"] == "trace_id"  # the exemplar label our histograms use
    assert sources[destination["datasourceUid"]]["type"] == "jaeger"
    assert destination["datasourceUid"] == build.JAEGER_UID


def test_dashboard_provider_points_at_a_folder() -> None:
    data = yaml.safe_load((PROVISIONING / "dashboards" / "dashboards.yaml").read_text())
    (provider,) = data["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/var/lib/grafana/dashboards")


def test_dashboard_queries_lists_every_expression() -> None:
    queries = build.dashboard_queries()
    assert len(queries) == len(set(queries))
    exprs = {
        target["expr"]
        for dashboard in _committed().values()
        for panel in dashboard["panels"]
        for target in panel["targets"]
    } | {a["expr"] for d in _committed().values() for a in d["annotations"]["list"]}
    assert set(queries) == exprs


def test_metric_names_are_in_the_contracts() -> None:
    names = set()
    for query in build.dashboard_queries():
        names |= set(re.findall(r"\b((?:chaosbed|toxiproxy)_[a-z_]+)", query))
    assert names
    for name in sorted(names):
        base = re.sub(r"_(bucket|count|sum)$", "", name)
        assert base in CONTRACTS or base.removesuffix("_total") in CONTRACTS, (
            f"{name} is not a metric named in docs/contracts.md"
        )


def test_unknown_panel_kind_is_a_clear_error() -> None:
    spec = build.PanelSpec("broken", (build.q("up"),), kind="graph")
    with pytest.raises(ValueError, match="kind 'graph'"):
        build._panel(spec, 1)
