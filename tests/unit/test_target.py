"""Target files: validated at load with file:line errors, placeholders checked, the shipped
targets listed, and targets/bundled.yaml the very order service the stack starts by default."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from chaosbed import commands
from chaosbed.stack import _service_env
from loadtests.target import PLACEHOLDERS, TargetError, list_targets, load_target, render

GOOD = """\
name: mine
description: my order service
start:
  command: ["{python}", "-m", "shop"]
  env:
    PAYMENT_API_URL: "{channel}"
    PORT: "{port}"
adapter: adapter.py:ShopAdapter
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(TargetError) as caught:
        load_target(write(tmp_path, text))
    return str(caught.value)


def test_a_good_target_loads_with_its_defaults(tmp_path: Path) -> None:
    target = load_target(write(tmp_path, GOOD))
    assert target.name == "mine" and target.started and target.url is None
    assert (target.health, target.notify_path, target.export) == (
        "/healthz", "/notifications/payment", False)
    assert target.startup_timeout == 30.0 and target.base_dir == str(tmp_path)
    assert target.start is not None and target.start.cwd == "{target_dir}"


def test_an_unknown_key_is_refused_at_its_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD + "exprot: true\n")
    assert message == f"{tmp_path / 't.yaml'}:9: exprot: unknown key"


def test_an_unknown_key_inside_start_names_its_path_and_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace("  env:\n", "  workdir: x\n  env:\n"))
    assert message.endswith(":5: start.workdir: unknown key")


def test_an_unknown_placeholder_names_the_variable_the_line_and_the_known_ones(
    tmp_path: Path,
) -> None:
    message = error_of(tmp_path, GOOD.replace("{channel}", "{chanel}"))
    assert ":5: start.env: PAYMENT_API_URL: unknown placeholder {chanel}" in message
    assert "{inventory}" in message and "{notify_secret}" in message


def test_a_broken_brace_is_an_error_not_a_crash(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD.replace('"{port}"', '"{port"'))
    assert "start.env: PORT:" in message and "literal braces" in message


def test_bad_yaml_names_its_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, GOOD + "options: [unclosed\n")
    assert f"{tmp_path / 't.yaml'}:" in message and "not valid YAML" in message


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("start:\n", "url: http://127.0.0.1:9000\nstart:\n"), "exactly one of `start`"),
        (("adapter: adapter.py:ShopAdapter", "adapter: ShopAdapter"), "adapter: 'ShopAdapter'"),
        (("name: mine", "name: my shop"), "name: must be 1-64 characters"),
        (("adapter:", "startup_timeout: -1s\nadapter:"), "startup_timeout"),
        (("adapter:", "notify_path: notify\nadapter:"), "notify_path: 'notify' must be a path"),
        (("adapter:", "health: 5\nadapter:"), "health"),
    ],
)
def test_impossible_values_are_named(tmp_path: Path, change: tuple[str, str], words: str) -> None:
    assert words in error_of(tmp_path, GOOD.replace(*change))


def test_a_url_target_is_not_started(tmp_path: Path) -> None:
    text = URL_TARGET.replace("url: http://127.0.0.1:9000", "url: http://127.0.0.1:9000/")
    target = load_target(write(tmp_path, text))
    assert not target.started and target.url == "http://127.0.0.1:9000"


def test_a_missing_target_lists_the_shipped_ones() -> None:
    with pytest.raises(TargetError, match="no such target file.*bundled, bundled-blackbox"):
        load_target("nonesuch")


def test_the_shipped_targets_are_listed_bundled_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [t.name for t in list_targets()]
    assert names[:2] == ["bundled", "bundled-blackbox"]
    code = commands.cmd_targets(argparse.Namespace(paths=[str(write(tmp_path, GOOD))]))
    lines = capsys.readouterr().out.splitlines()
    assert code == 0 and lines[0].startswith("bundled ") and "[full audit]" in lines[0]
    assert "[black-box]" in lines[1] and lines[-1].split()[0] == "mine"


def test_a_bad_target_given_to_chaosbed_targets_is_a_harness_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, GOOD + "bogus: 1\n")
    assert commands.cmd_targets(argparse.Namespace(paths=[str(path)])) == 3
    assert f"{path}:9: bogus: unknown key" in capsys.readouterr().err


def test_bundled_yaml_starts_the_order_service_exactly_as_the_stack_does(tmp_path: Path) -> None:
    bundled, blackbox = load_target("bundled"), load_target("bundled-blackbox")
    assert bundled.export and not blackbox.export
    assert bundled.start == blackbox.start and bundled.adapter == blackbox.adapter
    values = {name: f"<{name}>" for name in PLACEHOLDERS}
    assert bundled.start is not None
    assert [render(p, values) for p in bundled.start.command] == ["<python>", "-m",
                                                                  "services.order"]
    rendered = {k: render(v, values) for k, v in bundled.start.env.items()}
    links = {"order_inventory": "<inventory>", "order_channel": "<channel>"}
    port: object = "<port>"  # rendered as text, like any port
    stack = _service_env("order", port=port, db=Path("<db_dir>/order.db"),  # type: ignore[arg-type]
                         admin_token="<admin_token>", notify_secret="<notify_secret>",
                         bugs="<bugs>", links=links, seed_stock={})
    assert rendered == stack


URL_TARGET = """\
name: running
description: a shop already running
url: http://127.0.0.1:9000
peers:
  inventory: 127.0.0.1:9101
  channel: 127.0.0.1:9102
notify_secret_env: SHOP_NOTIFY_SECRET
adapter: a.py:A
"""


def test_a_url_target_names_where_it_calls_and_which_variable_holds_its_secret(
    tmp_path: Path,
) -> None:
    target = load_target(write(tmp_path, URL_TARGET))
    assert target.peers is not None and target.peers.port("channel") == 9102
    assert target.secrets_from({"SHOP_NOTIFY_SECRET": "s3"}) == {"notify_secret": "s3"}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (("peers:\n  inventory: 127.0.0.1:9101\n  channel: 127.0.0.1:9102\n", ""),
         "a `url` target needs `peers`"),
        (("notify_secret_env: SHOP_NOTIFY_SECRET\n", ""), "needs `notify_secret_env`"),
        (("adapter:", "export: true\nadapter:"), "needs `admin_token_env`"),
        (("127.0.0.1:9102", "127.0.0.1:9101"), "inventory and channel are both 127.0.0.1:9101"),
        (("127.0.0.1:9102", "127.0.0.1:9000"), "peers.channel: http://127.0.0.1:9000 itself"),
        (("127.0.0.1:9102", "10.0.0.5:9102"), "channel: '10.0.0.5:9102' must be 127.0.0.1:PORT"),
        (("127.0.0.1:9102", "127.0.0.1:99999"), "a port 1-65535 on loopback"),
        (("  channel: 127.0.0.1:9102\n", ""), "peers.channel: Field required"),
        (("SHOP_NOTIFY_SECRET", "SHOP-SECRET"), "'SHOP-SECRET' is not an environment variable"),
        (("  channel:", "  chanel: 127.0.0.1:1\n  channel:"), "peers.chanel: unknown key"),
    ],
)
def test_a_url_target_without_what_it_needs_is_refused(
    tmp_path: Path, change: tuple[str, str], words: str
) -> None:
    assert words in error_of(tmp_path, URL_TARGET.replace(*change))


def test_peers_and_secret_variables_are_only_for_a_url_target(tmp_path: Path) -> None:
    text = GOOD + "peers: {inventory: 127.0.0.1:9101, channel: 127.0.0.1:9102}\n"
    assert "peers: only for a `url` target" in error_of(tmp_path, text)
    assert "admin_token_env: only for a `url` target" in error_of(
        tmp_path, GOOD + "admin_token_env: T\n"
    )


def test_an_unset_secret_variable_is_named_before_anything_starts(tmp_path: Path) -> None:
    added = "export: true\nadmin_token_env: SHOP_TOKEN\nadapter:"
    exporting = URL_TARGET.replace("adapter:", added)
    target = load_target(write(tmp_path, exporting))
    with pytest.raises(TargetError, match="admin_token_env: SHOP_TOKEN is not set"):
        target.secrets_from({"SHOP_NOTIFY_SECRET": "s3"})
    with pytest.raises(TargetError, match="notify_secret_env: SHOP_NOTIFY_SECRET is not set"):
        target.secrets_from({"SHOP_TOKEN": "t", "SHOP_NOTIFY_SECRET": ""})


def _run_args(scenario: str, target: Path) -> argparse.Namespace:
    return argparse.Namespace(
        scenario=scenario, slo="slos/smoke.yaml", workers=0, bugs="", baseline=None,
        force_baseline=False, attach=None, observe=False, runs_dir="never-created",
        dry_run=True, target=str(target),
    )  # fmt: skip


def test_run_refuses_a_url_target_with_a_scenario_that_kills_order_before_starting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundled = URL_TARGET.replace("a.py:A", "loadtests.adapters.bundled:BundledAdapter")
    path = write(tmp_path, bundled)
    monkeypatch.setenv("SHOP_NOTIFY_SECRET", "s3")
    assert commands.cmd_run(_run_args("smoke", path)) == 64
    said = capsys.readouterr().err
    assert "not started by chaosbed, but the scenario kills, restarts or pauses order" in said
    assert "step 0 (" in said or "step 1 (" in said  # names the steps
    assert commands.cmd_run(_run_args("callback-storm", path)) == 0  # dry run: no such step
    monkeypatch.delenv("SHOP_NOTIFY_SECRET")
    assert commands.cmd_run(_run_args("callback-storm", path)) == 3
    assert "notify_secret_env: SHOP_NOTIFY_SECRET is not set" in capsys.readouterr().err
    assert not Path("never-created").exists()
