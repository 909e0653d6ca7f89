"""chaosbed's simulated users: shoppers buying, browsers reading, forgers attacking.

Run by `chaosbed run` (see loadtests/runner.py) or by hand against a running stack:

    CHAOSBED_STACK_JSON=RUN_DIR/stack.json \
    locust -f loadtests/locustfile.py --host http://127.0.0.1:ORDER_PROXY_PORT -u 10 -r 5 -t 60s

(or CHAOSBED_CHANNEL_URL=http://127.0.0.1:CHANNEL_PROXY_PORT; without either it refuses to
start; CHAOSBED_TARGET=NAME|FILE picks the target's adapter when stack.json does not say).

A hand run serves the client-side metrics on 127.0.0.1:9646 (CHAOSBED_LOAD_METRICS_PORT, `off`
to disable), where `chaosbed up --observe`'s Prometheus scrapes them (job `loadgen`).
Request names are paths (`/orders`): Locust shows the method beside them.

The journeys place and read orders through the target's adapter (loadtests/adapter.py; the
bundled order service's is loadtests/adapters/bundled.py), never through a route of their own;
they pay at chaosbed's channel.

Every logical operation is recorded in the history (loadtests/history.py); the load shape comes
from CHAOSBED_LOAD (loadtests/shapes.py).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    # Locust imports this file by path; make `loadtests`, `faults`, ... importable.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from locust import FastHttpUser, LoadTestShape, events, task
from locust.env import Environment

from faults.scenario import UserClass
from loadtests.adapter import OrderAdapter, OrderView, Result, load_adapter, result_of
from loadtests.client import LocustHttp, call
from loadtests.collector import CONFIG_OPTION, PROCESS, Collector
from loadtests.config import LoadConfig, LoadConfigError, from_env
from loadtests.forgery import KINDS, KnownOrder, forge
from loadtests.history import Operation
from loadtests.shapes import Level, profile_from_load

try:
    PROCESS.config = from_env()
except LoadConfigError as exc:
    sys.exit(f"chaosbed load configuration: {exc}")

PLACE_ATTEMPTS = 4  # the first try and three retries with the same idempotency key
PAY_ATTEMPTS = 3
RETRY_BACKOFF_S = 0.25  # doubled on every retry, with jitter
POLL_FIRST_S = 0.2  # the payment processing page polls soon, then backs off ...
POLL_MAX_S = 2.0  # ... to at most every two seconds
FINAL_STATES = frozenset({"PAID", "CLOSED", "REJECTED"})


class ChaosbedUser(FastHttpUser):
    """What every simulated user has: its seeded RNG, its history process id, its timeouts."""

    abstract = True
    connection_timeout = 3.0

    def __init__(self, environment: Environment) -> None:
        self.config = PROCESS.config
        self.network_timeout = self.config.request_timeout_s
        super().__init__(environment)
        self.index = PROCESS.next_user_index()
        self.process = f"{PROCESS.node}:{self.index}"
        self.rng = PROCESS.user_rng(self.index)
        self.history = PROCESS.recorder
        self.orders = adapter_for(self.config, LocustHttp(self.client))
        self.next_due = time.monotonic() + self.rng.uniform(0, self.pace_s())

    def pace_s(self) -> float:
        """Seconds between the starts of two tasks of this user."""
        raise NotImplementedError

    def wait_time(self) -> float:
        # Pacing keeps the arrival rate steady even when a journey is slow (open-ish model).
        now = time.monotonic()
        self.next_due = max(self.next_due, now - self.pace_s())
        wait = max(0.0, self.next_due - now)
        self.next_due += self.pace_s() * self.rng.uniform(0.9, 1.1)
        return wait

    def backoff(self, attempt: int) -> None:
        time.sleep(RETRY_BACKOFF_S * 2 ** (attempt - 1) * self.rng.uniform(0.5, 1.5))


class ShoppingUser(ChaosbedUser):
    """What every kind of shopper does: place an order, pay in the wallet, poll the order."""

    abstract = True
    journeys = 0

    def pace_s(self) -> float:
        load = self.config.spec
        if not load.rate:
            return 0.6  # think time of an eager shopper
        share = sum(weight_share(load.mix, name) for name in SHOPPING_CLASSES)
        return max(1.0, load.users * share) / load.rate

    def place_order(self, resubmit: tuple[str, dict[str, Any]] | None = None) -> OrderView | None:
        """Place an order through the adapter; retries after a timeout, reset or 5xx reuse the
        same idempotency key.

        `resubmit` = (key, body) of an order placed before: the same request sent again.
        """
        key, body = resubmit or self.new_order()
        with self.history.begin("place_order", process=self.process, key=key, value=body) as op:
            result = self.with_retries(
                op,
                PLACE_ATTEMPTS,
                lambda: self.orders.place_order(
                    key=key,
                    sku=body["sku"],
                    qty=body["qty"],
                    amount=body["amount"],
                    traceparent=op.traceparent,
                ),
            )
            if result.type != "ok":
                return None
            if result.order is None:
                op.info("the adapter answered ok without an order")
                return None
            order = replace(result.order, key=key)
            op.order_id = order.order_id
            op.ok({"status": order.status, "payment_id": order.payment_id})
            self.remember(order)
            return order

    def new_order(self) -> tuple[str, dict[str, Any]]:
        """A fresh idempotency key and order body (seeded: the same user places the same)."""
        body = {
            "sku": self.rng.choice(sorted(self.config.spec.skus)),
            "qty": self.rng.randint(1, 3),
            "amount": self.rng.randint(100, 50_000),
        }
        self.journeys += 1
        return f"k-{self.history.node}-{self.history.nonce}-{self.index}-{self.journeys}", body

    def pay(self, order: OrderView, f: str = "pay") -> bool | None:
        """Pay in the wallet at chaosbed's channel: True paid, False certainly not charged,
        None unknown.

        `f` names the operation in the history: `late_pay` for a payment of a closed order.
        """
        payment_id = order.payment_id
        url = f"{self.config.channel_url}/payments/{payment_id}/pay"
        key, order_id = order.key, order.order_id
        with self.history.begin(f, process=self.process, key=key, order_id=order_id) as op:
            result = self.with_retries(
                op,
                PAY_ATTEMPTS,
                lambda: result_of(
                    call(
                        self.client,
                        "POST",
                        url,
                        name="/payments/[id]/pay",
                        traceparent=op.traceparent,
                        json_body={},
                        expected=frozenset({402, 404, 409}),
                    ),
                    success=(200,),
                ),
            )
            if result.type != "ok":
                return False if result.type == "fail" else None
            txn_id = str(result.body.get("txn_id"))
            op.ok({"payment_id": payment_id, "txn_id": txn_id})
            PROCESS.known_orders.paid(str(order_id), txn_id)
            return True

    def with_retries(self, op: Operation, attempts: int, send: Callable[[], Result]) -> Result:
        """Send until ok, a definite refusal, or `attempts` run out.

        Returns ok (the caller records it), or fail / info, already recorded: info when some
        attempt may have been done (a timeout, a reset, a 5xx), fail when none was.  Every
        retry reuses the request as built by `send` (same idempotency key).
        """
        result, maybe_done = None, False
        for attempt in range(attempts):
            if attempt:
                self.backoff(attempt)
            result = send()
            if result.type == "ok":
                return result
            if result.type == "fail" and not result.retry:
                op.fail(result.error, {"http_status": result.http_status})
                return result
            maybe_done = maybe_done or result.type == "info"
        assert result is not None, "attempts must be >= 1"
        if maybe_done:
            op.info(result.error)
            return replace(result, type="info")
        op.fail(result.error)
        return result

    def wait_for_confirmation(self, order: OrderView) -> None:
        """The "payment processing" page: poll until PAID (or final), give up after max_poll."""
        self.wait_for_final(order, self.config.spec.max_poll)

    def wait_for_final(self, order: OrderView, patience_s: float) -> str | None:
        """Poll with backoff until the order is final; its last status seen."""
        give_up_at = time.monotonic() + patience_s
        delay = POLL_FIRST_S
        while True:
            time.sleep(delay)
            status = self.poll(order)
            if status in FINAL_STATES:
                return status
            delay = min(delay * 2, POLL_MAX_S)
            if time.monotonic() + delay > give_up_at:
                return status

    def poll(self, order: OrderView) -> str | None:
        with self.history.begin(
            "poll", process=self.process, key=order.key, order_id=order.order_id
        ) as op:
            result = self.orders.read_order(order.order_id, traceparent=op.traceparent)
            status = result.order.status if result.type == "ok" and result.order else None
            record(op, result, {"status": status})
            return status

    def remember(self, order: OrderView) -> None:
        if order.payment_id:
            PROCESS.known_orders.add(
                KnownOrder(
                    order_id=order.order_id,
                    payment_id=order.payment_id,
                    amount=order.amount or 0,
                    key=order.key,
                )
            )


class Shopper(ShoppingUser):
    """Places an order, pays for it in the wallet, then watches "payment processing"."""

    weight = PROCESS.config.spec.mix.get("shopper", 0)

    @task
    def buy(self) -> None:
        order = self.place_order()
        if order is None or order.status != "AWAITING_PAYMENT":
            return
        paid = self.pay(order)
        if paid is False:
            return
        self.wait_for_confirmation(order)


class ImpatientShopper(ShoppingUser):
    """Pays, then refreshes the page (the same order sent again) and pays whatever it shows."""

    weight = PROCESS.config.spec.mix.get("impatient", 0)

    @task
    def buy_twice(self) -> None:
        request = self.new_order()
        order = self.place_order(resubmit=request)
        if order is None or order.status != "AWAITING_PAYMENT":
            return
        if self.pay(order) is False:
            return
        shown = self.place_order(resubmit=request)
        if shown is not None and shown.status == "AWAITING_PAYMENT":
            # a correct service shows the same payment, whose second pay charges nothing
            self.pay(shown)
        self.wait_for_confirmation(order)


class LatePayer(ShoppingUser):
    """Leaves the wallet open until the order is closed for want of payment, then pays."""

    weight = PROCESS.config.spec.mix.get("late_payer", 0)

    @task
    def pay_too_late(self) -> None:
        order = self.place_order()
        if order is None or order.status != "AWAITING_PAYMENT":
            return
        if self.wait_for_final(order, self.config.spec.late_pay_wait) != "CLOSED":
            return
        # the channel refuses this (409) unless it misbehaves (pay_after_close); then the
        # order service must refund the charge
        self.pay(order, f="late_pay")


class Browser(ChaosbedUser):
    """Looks at orders it has heard of (the order page); the service health when none yet."""

    weight = PROCESS.config.spec.mix.get("browser", 0)

    def pace_s(self) -> float:
        return 1.0

    @task
    def browse(self) -> None:
        known = PROCESS.known_orders.sample(self.rng)
        order_id = known.order_id if known else None
        with self.history.begin(
            "browse", process=self.process, key=known.key if known else None, order_id=order_id
        ) as op:
            if order_id is None:
                record(op, self.orders.check_health(traceparent=op.traceparent), {"status": None})
                return
            result = self.orders.read_order(order_id, traceparent=op.traceparent)
            status = result.order.status if result.type == "ok" and result.order else None
            record(op, result, {"status": status})


class Forger(ChaosbedUser):
    """Now and then POSTs a forged notification for a real order; the audit judges the effect."""

    weight = PROCESS.config.spec.mix.get("forger", 0)

    def pace_s(self) -> float:
        return 5.0

    @task
    def forge_notification(self) -> None:
        target = PROCESS.known_orders.sample(self.rng)
        if target is None:
            return
        forgery = forge(
            self.rng.choice(KINDS), target, secret=self.config.notify_secret, rng=self.rng
        )
        value = {
            "kind": forgery.kind,
            "notify_id": forgery.notify_id,
            "txn_id": forgery.txn_id,
            "amount": forgery.amount,
        }
        with self.history.begin(
            "forge", process=self.process, key=target.key, order_id=target.order_id, value=value
        ) as op:
            reply = call(
                self.client,
                "POST",
                self.config.notify_path,
                name=f"{self.config.notify_path} (forged)",
                traceparent=op.traceparent,
                data=forgery.body.decode(),
                headers=forgery.headers,
                expected=frozenset({400, 401, 403, 404, 409, 422}),
            )
            # ok = the server accepted it (2xx): the audit decides whether that changed state.
            record(op, result_of(reply), {**value, "http_status": reply.status})


def record(op: Operation, result: Result, value: dict[str, Any]) -> None:
    """Complete a single-request operation as its result says (ok, fail or info)."""
    if result.type == "ok":
        op.ok(value)
    elif result.type == "fail":
        op.fail(result.error, value)
    else:
        op.info(result.error, value)


def adapter_for(config: LoadConfig, http: LocustHttp) -> OrderAdapter:
    """A user's own adapter instance over its own Locust client."""
    return adapter_class(config.adapter, config.adapter_base_dir)(http, config.adapter_options)


@cache
def adapter_class(spec: str, base_dir: str | None) -> type[OrderAdapter]:
    try:
        return load_adapter(spec, base_dir)
    except ValueError as exc:
        sys.exit(f"chaosbed load configuration: {exc}")


# paced together toward `rate`
SHOPPING_CLASSES: tuple[UserClass, ...] = ("shopper", "impatient", "late_payer")


def weight_share(mix: Mapping[UserClass, int], name: UserClass) -> float:
    total = sum(mix.values())
    return mix.get(name, 0) / total if total else 0.0


class ScenarioShape(LoadTestShape):
    """The scenario's shape (steady, ramp, flash_sale, soak); stops at its duration."""

    use_common_options = True  # tick() reads -u/-r/-t in a plain run: Locust must not warn

    def tick(self) -> Level:
        config = PROCESS.config
        load, duration_s = dict(config.load), config.duration_s
        options = self.runner.environment.parsed_options if self.runner else None
        if options is not None and not os.environ.get("CHAOSBED_LOAD"):
            # Plain `locust -u N -r R -t T` against a running stack: the common options decide.
            if options.num_users:
                load["users"], load["spawn_rate"] = options.num_users, options.spawn_rate
            duration_s = duration_s or options.run_time or None
        profile = profile_from_load(load, duration_s=duration_s, seed=config.seed)
        return profile.level(self.get_run_time())


@events.init_command_line_parser.add_listener
def _add_options(parser: Any, **_: Any) -> None:
    parser.add_argument(
        f"--{CONFIG_OPTION.replace('_', '-')}",
        default="",
        include_in_web_ui=False,
        help="resolved chaosbed load configuration (set by the master for its workers)",
    )


NO_CHANNEL = (
    "chaosbed load: where is the channel? set CHAOSBED_STACK_JSON=RUN_DIR/stack.json "
    "(chaosbed up prints it) or CHAOSBED_CHANNEL_URL=http://HOST:PORT (its client_channel proxy)"
)


@events.init.add_listener
def _install(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if not PROCESS.config.channel_url and not getattr(options, "worker", False):
        raise SystemExit(NO_CHANNEL)  # every pay would fail (ConnectionRefused): refuse instead
    adapter_class(PROCESS.config.adapter, PROCESS.config.adapter_base_dir)  # fails early
    Collector(environment, PROCESS.config)
