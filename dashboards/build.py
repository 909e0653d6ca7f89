"""Grafana dashboards as code (grafana-foundation-sdk), rendered to committed JSON.

`chaosbed dashboards` rewrites `dashboards/json/*.json` from the builders below; the
output is deterministic (sorted keys, stable uids and panel ids), so a unit test can
fail when the committed JSON and the builders disagree.  Every panel queries the
Prometheus datasource with the fixed uid `prometheus` (see
`dashboards/provisioning/datasources/datasources.yaml`); latency panels request
exemplars, which the datasource links to Jaeger (uid `jaeger`) by their `trace_id`.
Every dashboard shades fault windows from the harness's `chaosbed_fault_active` gauge.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as gcommon
from grafana_foundation_sdk.builders import dashboard as gdash
from grafana_foundation_sdk.builders import prometheus as gprom
from grafana_foundation_sdk.builders import stat as gstat
from grafana_foundation_sdk.builders import timeseries as gts
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    GraphDrawStyle,
    LineInterpolation,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
)

HERE = Path(__file__).resolve().parent
JSON_DIR = HERE / "json"
PROMETHEUS_UID = "prometheus"
JAEGER_UID = "jaeger"
PROMETHEUS = DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)
WINDOW = "30s"  # rate window: 30 one-second scrapes, responsive during a minutes-long run

FAULT_ANNOTATION_EXPR = "chaosbed_fault_active > 0"
SERVER = "chaosbed_http_server_request_duration_seconds"
CLIENT = "chaosbed_http_client_request_duration_seconds"


def _rate(metric: str, by: str = "", selector: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{selector}[{WINDOW}]))"


def _increase(metric: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (increase({metric}[{WINDOW}]))"


def _quantile(q: float, histogram: str, by: str, selector: str = "") -> str:
    return (
        f"histogram_quantile({q}, sum by (le, {by}) "
        f"(rate({histogram}_bucket{selector}[{WINDOW}])))"
    )


def _or_zero(expr: str) -> str:
    """Labelled counters have no series until the first event: show 0 instead of "No data"."""
    return f"{expr} or vector(0)"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    exemplar: bool = False


@dataclass(frozen=True)
class PanelSpec:
    title: str
    queries: tuple[Query, ...]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat
    width: int = 12
    height: int = 8
    description: str = ""
    stepped: bool = False


def q(expr: str, legend: str = "", *, exemplar: bool = False) -> Query:
    return Query(expr, legend, exemplar)


# --- the four dashboards, as data ------------------------------------------------------

SERVER_ERROR_RATIO = (
    f"({_rate('chaosbed_http_server_errors_total', 'service')} "
    f"or 0 * {_rate(SERVER + '_count', 'service')}) "
    f"/ {_rate(SERVER + '_count', 'service')}"
)

OVERVIEW: tuple[PanelSpec, ...] = (
    PanelSpec(
        "Requests per second", (q(_rate(SERVER + "_count"), "all services"),),
        unit="reqps", kind="stat", width=6, height=4,
    ),
    PanelSpec(
        "Server error ratio (5xx)",
        (q(f"sum({_rate('chaosbed_http_server_errors_total')} or vector(0)) "
           f"/ {_rate(SERVER + '_count')}", "all services"),),
        unit="percentunit", kind="stat", width=6, height=4,
    ),
    PanelSpec(
        "p99 server latency", (q(_quantile(0.99, SERVER, "service"), "{{service}}"),),
        unit="s", kind="stat", width=12, height=4,
    ),
    PanelSpec(
        "Rate by service and route",
        (q(_rate(SERVER + "_count", "service, method, route"),
           "{{service}} {{method}} {{route}}"),),
        unit="reqps",
    ),
    PanelSpec(
        "Errors: 5xx ratio by service, 4xx rate by route",
        (
            q(SERVER_ERROR_RATIO, "{{service}} 5xx ratio"),
            q(_or_zero(_rate(SERVER + "_count", "service, route, status",
                             '{status=~"4.."}')),
              "{{service}} {{route}} {{status}}"),
        ),
        unit="short",
        description="5xx: share of responses; 4xx: per second (rejected input, forged or "
        "stale notifications, out of stock).",
    ),
    PanelSpec(
        "Server latency p99 by route (exemplars link to Jaeger)",
        (q(_quantile(0.99, SERVER, "service, route"), "{{service}} {{route}}", exemplar=True),),
        unit="s",
    ),
    PanelSpec(
        "Server latency p50 by route",
        (q(_quantile(0.5, SERVER, "service, route"), "{{service}} {{route}}", exemplar=True),),
        unit="s",
    ),
    PanelSpec(
        "Client-side vs server-side latency p99 (the gap is the link: Toxiproxy, network)",
        (
            q(_quantile(0.99, CLIENT, "service, peer"), "{{service}} → {{peer}} (client side)",
              exemplar=True),
            q(_quantile(0.99, SERVER, "service"), "{{service}} (server side)", exemplar=True),
        ),
        unit="s", width=24,
    ),
    PanelSpec(
        "Calls between services by outcome",
        (q(_rate(CLIENT + "_count", "service, peer, status"),
           "{{service}} → {{peer}} {{status}}"),),
        unit="reqps",
    ),
    PanelSpec(
        "Shopper-side latency p99 by operation (load generator)",
        (q(_quantile(0.99, "chaosbed_client_latency_seconds", "op"), "{{op}}"),),
        unit="s",
    ),
    PanelSpec(
        "Shopper operations by outcome (load generator)",
        (q(_rate("chaosbed_client_requests_total", "op, outcome"), "{{op}} {{outcome}}"),),
        unit="ops", width=24,
        description="ok = happened, fail = certainly did not, info = unknown (timeout, reset).",
    ),
)

PAYMENTS: tuple[PanelSpec, ...] = (
    PanelSpec(
        "Charged, not yet notified", (q("sum(chaosbed_charged_not_notified)", "charges"),),
        kind="stat", width=6, height=4,
        description="Money taken at the channel whose notification is not acknowledged yet.",
    ),
    PanelSpec(
        "Pending orders (created or awaiting payment)",
        (q('sum(chaosbed_orders_by_state{state=~"CREATED|AWAITING_PAYMENT"})', "orders"),),
        kind="stat", width=6, height=4,
    ),
    PanelSpec(
        "Outbox backlog", (q("sum(chaosbed_outbox_pending)", "rows"),),
        kind="stat", width=6, height=4,
    ),
    PanelSpec(
        "Oldest undelivered outbox row", (q("max(chaosbed_outbox_lag_seconds)", "age"),),
        unit="s", kind="stat", width=6, height=4,
    ),
    PanelSpec(
        "Notifications received by outcome (order service)",
        (q(_rate("chaosbed_notifications_received_total", "outcome"), "{{outcome}}"),),
        unit="ops",
    ),
    PanelSpec(
        "Notification attempts by outcome (channel) and retries",
        (
            q(_rate("chaosbed_notify_attempts_total", "outcome"), "{{outcome}}"),
            q(_rate("chaosbed_notify_retries_total"), "retries"),
        ),
        unit="ops",
    ),
    PanelSpec(
        "Orders by state",
        (q("sum by (state) (chaosbed_orders_by_state)", "{{state}}"),),
        stepped=True,
    ),
    PanelSpec(
        "Charged but not yet paid (channel) vs pending orders",
        (
            q("sum(chaosbed_charged_not_notified)", "charged, not notified"),
            q('sum(chaosbed_orders_by_state{state="AWAITING_PAYMENT"})', "awaiting payment"),
        ),
        stepped=True,
    ),
    PanelSpec(
        "Recoveries: active query, reconciliation repairs, refunds",
        (
            q(_increase("chaosbed_active_query_recoveries_total"), "active-query recoveries"),
            q(_or_zero(_increase("chaosbed_reconciliation_repairs_total", "kind")),
              "repair {{kind}}"),
            q(_or_zero(_increase("chaosbed_refunds_total", "reason")), "refund {{reason}}"),
        ),
        description=f"Events per {WINDOW}.",
    ),
    PanelSpec(
        "Order transitions and channel payment events",
        (
            q(_rate("chaosbed_orders_total", "state"), "order → {{state}}"),
            q(_rate("chaosbed_payments_total", "event"), "payment {{event}}"),
        ),
        unit="ops",
    ),
    PanelSpec(
        "Notification handling latency p99 (exemplars link to Jaeger)",
        (q(_quantile(0.99, SERVER, "route, status",
                     '{service="order", route="/notifications/payment"}'),
           "{{route}} {{status}}", exemplar=True),),
        unit="s", width=24,
    ),
)

INVENTORY: tuple[PanelSpec, ...] = (
    PanelSpec(
        "Units available", (q("sum(chaosbed_stock_available)", "all skus"),),
        kind="stat", width=8, height=4,
    ),
    PanelSpec(
        "Live reservations (TRY)",
        (q('sum(chaosbed_reservations_by_state{state="TRY"})', "TRY"),),
        kind="stat", width=8, height=4,
    ),
    PanelSpec(
        "Sweeper cancellations", (q(_increase("chaosbed_sweeper_cancellations_total"), "sweeps"),),
        kind="stat", width=8, height=4, description=f"Expired TRY reservations per {WINDOW}.",
    ),
    PanelSpec(
        "Stock available by sku",
        (q("sum by (sku) (chaosbed_stock_available)", "{{sku}}"),), stepped=True,
    ),
    PanelSpec(
        "Reservations by state",
        (q("sum by (state) (chaosbed_reservations_by_state)", "{{state}}"),), stepped=True,
    ),
    PanelSpec(
        "TCC calls by route and status",
        (q(_rate(SERVER + "_count", "route, status", '{service="inventory"}'),
           "{{route}} {{status}}"),),
        unit="reqps",
    ),
    PanelSpec(
        "TCC latency p99 by route (exemplars link to Jaeger)",
        (q(_quantile(0.99, SERVER, "route", '{service="inventory"}'), "{{route}}",
           exemplar=True),),
        unit="s",
    ),
    PanelSpec(
        "Sweeper cancellations over time",
        (q(_increase("chaosbed_sweeper_cancellations_total"), "cancelled by sweeper"),),
        width=24,
    ),
)

CHAOS: tuple[PanelSpec, ...] = (
    PanelSpec(
        "Active faults", (q("sum(chaosbed_fault_active)", "active"),),
        kind="stat", width=6, height=4,
    ),
    PanelSpec(
        "Scrape targets down", (q("count(up == 0) or vector(0)", "down"),),
        kind="stat", width=6, height=4,
        description="A killed or paused service shows up here within a second or two.",
    ),
    PanelSpec(
        "Bytes per second through Toxiproxy",
        (q(_rate("toxiproxy_proxy_sent_bytes_total"), "all links"),),
        unit="Bps", kind="stat", width=12, height=4,
    ),
    PanelSpec(
        "Fault windows (1 = applied)",
        (q("sum by (fault, target) (chaosbed_fault_active)", "{{fault}} on {{target}}"),),
        stepped=True, width=24,
    ),
    PanelSpec(
        "Toxiproxy bytes sent per link",
        (q(_rate("toxiproxy_proxy_sent_bytes_total", "proxy, direction"),
           "{{proxy}} {{direction}}"),),
        unit="Bps",
    ),
    PanelSpec(
        "Toxiproxy bytes received per link",
        (q(_rate("toxiproxy_proxy_received_bytes_total", "proxy, direction"),
           "{{proxy}} {{direction}}"),),
        unit="Bps",
    ),
    PanelSpec(
        "Process up (per scrape job)", (q("min by (job) (up)", "{{job}}"),), stepped=True,
    ),
    PanelSpec(
        "Server error ratio by service during faults",
        (q(SERVER_ERROR_RATIO, "{{service}}"),), unit="percentunit",
    ),
)


@dataclass(frozen=True)
class DashboardSpec:
    uid: str
    title: str
    description: str
    panels: tuple[PanelSpec, ...]


DASHBOARDS: tuple[DashboardSpec, ...] = (
    DashboardSpec(
        "chaosbed-overview", "chaosbed / Overview",
        "RED per service and route; client-side vs server-side latency.", OVERVIEW,
    ),
    DashboardSpec(
        "chaosbed-payments", "chaosbed / Payments integrity",
        "Notifications, pending and stuck orders, recoveries, refunds, charged-not-paid.",
        PAYMENTS,
    ),
    DashboardSpec(
        "chaosbed-inventory", "chaosbed / Inventory",
        "Stock, reservations by TCC state, the TTL sweeper.", INVENTORY,
    ),
    DashboardSpec(
        "chaosbed-chaos", "chaosbed / Chaos",
        "Active faults, Toxiproxy traffic per link, process health.", CHAOS,
    ),
)


# --- builders ----------------------------------------------------------------------


def _target(query: Query, ref_id: str) -> gprom.Dataquery:
    target = (
        gprom.Dataquery()
        .expr(query.expr)
        .ref_id(ref_id)
        .datasource(PROMETHEUS)
        .range()
    )
    if query.legend:
        target = target.legend_format(query.legend)
    if query.exemplar:
        target = target.exemplar(True)
    return target


def _thresholds() -> gdash.ThresholdsConfig:
    return (
        gdash.ThresholdsConfig()
        .mode(ThresholdsMode.ABSOLUTE)
        .steps([Threshold(value=None, color="green")])
    )


def _panel(spec: PanelSpec, panel_id: int) -> gts.Panel | gstat.Panel:
    panel: gts.Panel | gstat.Panel
    if spec.kind == "timeseries":
        panel = gts.Panel().fill_opacity(10).line_width(1)
        if spec.stepped:
            panel = panel.line_interpolation(LineInterpolation.STEP_AFTER)
        panel = panel.draw_style(GraphDrawStyle.LINE)
    elif spec.kind == "stat":
        panel = (
            gstat.Panel()
            .graph_mode(BigValueGraphMode.AREA)
            .reduce_options(gcommon.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        )
    else:
        raise ValueError(f"panel {spec.title!r}: kind {spec.kind!r} is not timeseries or stat")
    panel = (
        panel.id(panel_id)
        .title(spec.title)
        .datasource(PROMETHEUS)
        .unit(spec.unit)
        .thresholds(_thresholds())
        .height(spec.height)
        .span(spec.width)
    )
    if spec.description:
        panel = panel.description(spec.description)
    for index, query in enumerate(spec.queries):
        panel = panel.with_target(_target(query, chr(ord("A") + index)))
    return panel


def _fault_annotation() -> gdash.AnnotationQuery:
    return (
        gdash.AnnotationQuery()
        .name("Fault windows")
        .datasource(PROMETHEUS)
        .enable(True)
        .hide(False)
        .icon_color("rgba(255, 96, 96, 1)")
        .expr(FAULT_ANNOTATION_EXPR)
    )


def build(spec: DashboardSpec) -> dict[str, Any]:
    """One dashboard as a plain JSON-ready dict."""
    dashboard = (
        gdash.Dashboard(spec.title)
        .uid(spec.uid)
        .description(spec.description)
        .tags(["chaosbed"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-15m", "now")
        .refresh("5s")
        .timezone("browser")
        .annotation(_fault_annotation())
    )
    for panel_id, panel_spec in enumerate(spec.panels, start=1):
        dashboard = dashboard.with_panel(_panel(panel_spec, panel_id))
    data: dict[str, Any] = json.loads(json.dumps(dashboard.build(), cls=JSONEncoder))
    for annotation in data["annotations"]["list"]:
        # Prometheus annotation options the SDK's generic model has no setters for
        annotation.update(
            {"step": "1s", "titleFormat": "{{fault}} on {{target}}", "tagKeys": "fault,target",
             "useValueForTime": False}
        )
    return data


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard, deterministic."""
    return {
        f"{spec.uid.removeprefix('chaosbed-')}.json": json.dumps(
            build(spec), indent=2, sort_keys=True, ensure_ascii=False
        ) + "\n"
        for spec in DASHBOARDS
    }


def dashboard_queries() -> list[str]:
    """Every PromQL expression of every dashboard (panel targets and annotations), once each."""
    seen: dict[str, None] = {}
    for spec in DASHBOARDS:
        data = build(spec)
        for annotation in data["annotations"]["list"]:
            seen.setdefault(annotation["expr"], None)
        for panel in data["panels"]:
            for target in panel["targets"]:
                seen.setdefault(target["expr"], None)
    return list(seen)


def write(json_dir: Path = JSON_DIR) -> list[Path]:
    """Regenerate the JSON files; removes stale ones the builders no longer produce."""
    json_dir.mkdir(parents=True, exist_ok=True)
    rendered = render()
    for stale in sorted(json_dir.glob("*.json")):
        if stale.name not in rendered:
            stale.unlink()
    written = []
    for name, text in sorted(rendered.items()):
        path = json_dir / name
        path.write_text(text)
        written.append(path)
    return written
