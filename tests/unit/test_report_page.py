"""report.md and report.html from the gate: the same plain headline in both, the page's
sections in the order a product manager reads them, the jargon only in the folded details."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from slos.gate import evaluate_run
from slos.records import Transition
from slos.synthetic import clean_run, write_run

SLO = {"name": "page", "min_samples": 20, "objectives": [
    {"name": "place order latency", "sli": "latency", "op": "place_order",
     "pass": "p(99) < 300ms"},
    {"name": "no money lost", "sli": "anomaly", "class": ["P1", "P6"], "pass": "count == 0",
     "key": True}]}


def test_the_pr_comment_and_the_page_share_the_plain_headline(tmp_path: Path) -> None:
    slo = tmp_path / "page.yaml"
    slo.write_text(yaml.safe_dump(SLO))
    records = clean_run(200, faults=[(20, 10, "latency", "order_channel")])
    for o in records.orders[:3]:
        records.transitions.append(Transition(o.order_id, "AWAITING_PAYMENT", "PAID",
                                              (o.t_paid or 0.0) + 1, "notify"))
    run = write_run(records, tmp_path / "run")
    (run / "run.json").write_text(json.dumps({
        **json.loads((run / "run.json").read_text()), "git_revision": "0123456789abcdef"}))
    gate = evaluate_run(run, slo, None)
    assert gate.exit_code == 1
    plain = ("3 orders were confirmed or shipped more than once — about ¥30.00 of goods, "
             "3 units of stock.")
    md = (run / "report.md").read_text()
    assert f"**FAIL — do not release.** {plain}" in md
    assert "Look at how the order service ignores a repeated payment notification." in md
    page = (run / "report.html").read_text()
    assert f"<p>{plain}</p>" in page
    order = [page.index(f'id="{name}"') for name in (
        "verdict", "meaning", "promises", "chart-latency", "tested", "technical")]
    assert order == sorted(order)
    outside = page[:page.index('<details id="technical"')]
    outside = re.sub(r"<[^>]+>", " ", re.sub(r'data:image/png;base64,[^"]+', "", outside))
    assert not re.search(r"\bP9\b|p\(99\)|\binvalid\b|error budget", outside)
    assert "P9" in page[page.index('<details id="technical"'):]  # kept, folded
    assert "0123456789abcdef" in page and "2023-11-14 22:13 UTC" in page
    assert "1 min of load, then 10 s to settle before the audit" in page
    assert "slow network on order service → payment channel, from 20 s to 30 s" in page
