"""Load configuration from the environment and the runner's Locust command line."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from loadtests.config import LoadConfig, LoadConfigError, from_env
from loadtests.forgery import KINDS, KnownOrder, forge
from loadtests.runner import LOCUSTFILE, locust_command
from services.common.signing import SIGNATURE_HEADER, SignatureError, verify

STACK = {
    "run_dir": "/nonexistent",
    "notify_secret": "s3cret",
    "proxies": {
        "client_order": {"url": "http://127.0.0.1:4001"},
        "client_channel": {"url": "http://127.0.0.1:4002/"},
    },
}


def test_defaults_work_without_any_environment() -> None:
    config = from_env({})
    assert config.duration_s is None and config.seed == 0
    assert config.load["shape"] == "steady" and config.load["users"] == 10
    assert config.notify_secret is None


def test_load_section_and_stack_json_are_read(tmp_path: Path) -> None:
    stack_json = tmp_path / "stack.json"
    stack_json.write_text(json.dumps(STACK))
    load = {"shape": "flash_sale", "spike_at": "5s", "spike_for": "500ms", "duration_s": 30}
    config = from_env(
        {"CHAOSBED_LOAD": json.dumps({**load, "seed": 9}), "CHAOSBED_STACK_JSON": str(stack_json)}
    )
    assert config.load["spike_at"] == 5.0 and config.load["spike_for"] == 0.5
    assert config.duration_s == 30.0 and config.seed == 9
    assert config.channel_url == "http://127.0.0.1:4002"
    assert config.notify_secret == "s3cret"
    override = from_env(
        {"CHAOSBED_STACK_JSON": str(stack_json), "CHAOSBED_CHANNEL_URL": "http://h:1"}
    )
    assert override.channel_url == "http://h:1"


def test_config_travels_to_workers_as_json() -> None:
    config = from_env({"CHAOSBED_LOAD": json.dumps({"users": 3, "seed": 5, "duration_s": 7})})
    assert LoadConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"CHAOSBED_LOAD": "{not json"}, "CHAOSBED_LOAD is not valid JSON"),
        ({"CHAOSBED_LOAD": "[1]"}, "must be a JSON object"),
        ({"CHAOSBED_LOAD": '{"shape": "tsunami"}'}, "load.shape"),
        ({"CHAOSBED_LOAD": '{"users": 0}'}, "load.users"),
        ({"CHAOSBED_LOAD": '{"mix": {"shopper": 0}}'}, "load.mix"),
        ({"CHAOSBED_LOAD": '{"wat": 1}'}, "load.wat"),
        ({"CHAOSBED_LOAD": '{"duration_s": -1}'}, "duration_s"),
        ({"CHAOSBED_LOAD": '{"seed": "x"}'}, "seed must be an integer"),
        ({"CHAOSBED_STACK_JSON": "/no/such/stack.json"}, "does not exist"),
        ({"CHAOSBED_REQUEST_TIMEOUT_S": "0"}, "request timeout"),
    ],
)
def test_bad_configuration_names_the_problem(env: dict[str, str], message: str) -> None:
    with pytest.raises(LoadConfigError, match=message):
        from_env(env)


def test_locust_command_single_process(tmp_path: Path) -> None:
    argv, env = locust_command(
        stack_info=STACK, load={"users": 4}, duration_s=10, seed=1, run_dir=tmp_path, workers=0
    )
    assert argv[1:5] == ["-m", "locust", "-f", str(LOCUSTFILE)]
    assert LOCUSTFILE.is_absolute() and LOCUSTFILE.exists()
    assert "--headless" in argv and "--processes" not in argv
    assert argv[argv.index("--host") + 1] == "http://127.0.0.1:4001"
    assert argv[argv.index("--csv") + 1] == str(tmp_path / "locust")
    assert env["CHAOSBED_HISTORY"] == str(tmp_path / "history.ndjson")
    assert env["CHAOSBED_PROGRESS"] == str(tmp_path / "load_progress.json")
    assert env["CHAOSBED_CHANNEL_URL"] == "http://127.0.0.1:4002"
    assert env["CHAOSBED_NOTIFY_SECRET"] == "s3cret"
    assert "CHAOSBED_STACK_JSON" not in env  # no stack.json on disk to point at
    load = json.loads(env["CHAOSBED_LOAD"])
    assert load["users"] == 4 and load["duration_s"] == 10 and load["seed"] == 1
    # What the child will read back:
    config = from_env(env)
    assert config.duration_s == 10 and config.channel_url == "http://127.0.0.1:4002"


def test_locust_command_with_workers_binds_the_master_to_loopback(tmp_path: Path) -> None:
    (tmp_path / "stack.json").write_text(json.dumps(STACK))
    argv, env = locust_command(
        stack_info=STACK, load={}, duration_s=5, seed=1, run_dir=tmp_path, workers=2,
        master_port=23456,
    )
    assert argv[argv.index("--processes") + 1] == "2"
    assert argv[argv.index("--master-bind-host") + 1] == "127.0.0.1"
    assert argv[argv.index("--master-bind-port") + 1] == "23456"
    assert argv[argv.index("--master-port") + 1] == "23456"
    assert env["CHAOSBED_STACK_JSON"] == str(tmp_path / "stack.json")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": -1}, "workers"),
        ({"workers": 2}, "needs master_port"),
        ({"workers": 2, "master_port": 0}, "needs master_port"),
        ({"duration_s": 0}, "duration_s"),
        ({"load": {"shape": "nope"}}, "load.shape"),
        ({"stack_info": {"proxies": {}}}, "proxies.client_order.url"),
    ],
)
def test_locust_command_refuses_bad_input(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    args: dict[str, object] = {
        "stack_info": STACK,
        "load": {},
        "duration_s": 5,
        "seed": 1,
        "run_dir": tmp_path,
        "workers": 0,
    }
    with pytest.raises(LoadConfigError, match=message):
        locust_command(**{**args, **kwargs})  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", KINDS)
def test_every_forgery_fails_a_check_the_order_service_makes(kind: str) -> None:
    order = KnownOrder("o-1", "p-1", amount=1000, key="k", txn_id="t-1")
    forgery = forge(kind, order, secret="s3cret", rng=random.Random(1))
    body = json.loads(forgery.body)
    assert body["merchant_order_id"] == "o-1" and body["payment_id"] == "p-1"
    header = forgery.headers.get(SIGNATURE_HEADER)
    if kind == "altered_replay":
        # Correctly signed: only the amount (against the order) and the replay give it away.
        verify("s3cret", header, forgery.body, now=_now(), tolerance_s=300)
        assert body["txn_id"] == "t-1" and body["amount"] != 1000
        return
    with pytest.raises(SignatureError):
        verify("s3cret", header, forgery.body, now=_now(), tolerance_s=300)


def _now() -> float:
    return time.time()


def test_no_channel_is_known_without_a_stack_or_a_url() -> None:
    config = from_env({})
    assert config.channel_url == ""  # the locustfile refuses to start on this
    assert config.adapter == "loadtests.adapters.bundled:BundledAdapter"


def test_the_target_comes_from_stack_json_or_chaosbed_target(tmp_path: Path) -> None:
    stack_json = tmp_path / "stack.json"
    target = {"name": "shop", "adapter": "adapter.py:Shop", "options": {"x": 1},
              "dir": "/somewhere", "notify_path": "/hook", "health": "/up"}
    stack_json.write_text(json.dumps({**STACK, "target": target}))
    config = from_env({"CHAOSBED_STACK_JSON": str(stack_json)})
    assert (config.adapter, config.adapter_base_dir, config.notify_path) == (
        "adapter.py:Shop", "/somewhere", "/hook")
    assert config.adapter_options == {"health_path": "/up", "x": 1}
    assert LoadConfig.from_json(config.to_json()) == config  # travels to the workers
    named = from_env({"CHAOSBED_STACK_JSON": str(stack_json), "CHAOSBED_TARGET": "bundled"})
    assert named.adapter == "loadtests.adapters.bundled:BundledAdapter"
    assert named.notify_path == "/notifications/payment"
    with pytest.raises(LoadConfigError, match="CHAOSBED_TARGET: .*no such target file"):
        from_env({"CHAOSBED_TARGET": "nonesuch"})
