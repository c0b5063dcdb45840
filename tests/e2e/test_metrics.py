"""Metrics end to end: every instance serves /metrics on METRICS_ADDR, a real Prometheus (Debian's
``prometheus``, which ``./run test`` installs) scrapes them during a small load, and the test reads
the results back over Prometheus's HTTP API, as a dashboard or an alert would, shipped alert rules
included."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from shared.connection import connect
from shared.ops import client
from shared.ops.harness import System, free_port
from tests.conftest import poll, unique
from tests.e2e.conftest import new_customer, new_sku

pytestmark = pytest.mark.e2e

ALERT_RULES = Path(__file__).parents[2] / "docs" / "prometheus" / "saga-alerts.yml"


@dataclass
class Prometheus:
    """A real Prometheus on a free loopback port, scraping ``targets`` every second."""

    workdir: Path
    targets: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.fail("Debian's prometheus is not installed: ./run test installs it with apt-get when run as root")
        self.workdir.mkdir(parents=True, exist_ok=True)
        shutil.copy(ALERT_RULES, self.workdir / ALERT_RULES.name)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [ALERT_RULES.name],
            "scrape_configs": [{"job_name": "saga", "static_configs": [{"targets": self.targets}]}],
        }
        (self.workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        log = open(self.workdir / "prometheus.log", "ab")  # noqa: SIM115  # the process keeps it
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prometheus did not become ready: {(self.workdir / 'prometheus.log').read_text()}")
            time.sleep(0.1)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as reply:
            body = json.load(reply)
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, promql: str) -> dict[str, float]:
        """An instant query: each series' labels (as ``k=v,...``) and value."""
        data = await asyncio.to_thread(self.api, "query", query=promql)
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1]) for r in data["result"]
        }

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, Prometheus]]:
    """Two partitions, two instances of each service, every one of them scraped."""
    workdir = tmp_path_factory.mktemp("metrics")
    system = System(workdir, instances=2, service_env={"PARTITIONS": "2"}, metrics=True).start()
    targets = [f"127.0.0.1:{svc.metrics_port}" for svc in system.services.values()]
    prometheus = Prometheus(workdir / "prometheus", targets).start()
    try:
        yield system, prometheus
    finally:
        prometheus.stop()
        system.stop()


@pytest.fixture
async def nc(observed: tuple[System, Prometheus]) -> AsyncIterator[Client]:
    conn = await connect(observed[0].url)
    yield conn
    await conn.close()


def _one(series: dict[str, float]) -> float:
    """The value of a query that gives one series; 0 before the series exists."""
    assert len(series) <= 1, series
    return next(iter(series.values()), 0.0)


async def test_prometheus_scrapes_every_instance_and_counts_the_saga(
    observed: tuple[System, Prometheus], nc: Client
) -> None:
    system, prometheus = observed
    js = nc.jetstream()

    # Every instance is a target that answers.
    up = await poll(lambda: prometheus.query('up{job="saga"}'), lambda s: len(s) == 6 and all(s.values()), 30)
    assert len(up) == len(system.services) == 6

    # A small load: confirmed orders, orders out of stock, one placed twice, one malformed.
    customer = await new_customer(nc, 100_000)
    sku = await new_sku(nc, 6)
    orders = [unique("o") for _ in range(10)]
    first_event = ""
    line = {"sku": sku, "quantity": 1, "unit_price_cents": 5}
    for order_id in orders:
        event_id = await client.place_order(js, order_id, customer, [line])
        first_event = first_event or event_id
    # The same orders.requested again under another Nats-Msg-Id: the stream keeps it, the inbox drops it.
    request = await client.get_order(nc, orders[0])
    assert request is not None
    await client.publish_event(
        js,
        "orders.requested",
        orders[0],
        {"customer_id": customer, "items": request["items"]},
        event_id=first_event,
        msg_id=f"{first_event}:again",
    )
    await js.publish(f"orders.requested.{unique('o')}", b"{not json", headers={"Nats-Msg-Id": unique("bad")})
    statuses = [(await client.wait_until_terminal(nc, order_id))["status"] for order_id in orders]
    assert statuses.count("CONFIRMED") == 6 and statuses.count("CANCELLED") == 4

    # Counted in order_svc once per order, summed over its two instances, whatever partition.
    confirmed = await poll(
        lambda: prometheus.query('sum(saga_orders_total{status="CONFIRMED"})'), lambda s: _one(s) >= 6, 20
    )
    cancelled = await poll(
        lambda: prometheus.query('sum(saga_orders_total{status="CANCELLED",reason="out_of_stock"})'),
        lambda s: _one(s) >= 4,
        20,
    )
    assert (_one(confirmed), _one(cancelled)) == (6, 4)  # not counted twice when a round is retried
    # Prometheus scrapes each target at its own offset: wait until every instance's last scrape
    # is later than the work, rather than trusting that one target's being so means all are.
    durations = await poll(
        lambda: prometheus.query("sum by (status) (saga_order_duration_seconds_count)"),
        lambda s: s.get("status=CANCELLED", 0) >= 4 and s.get("status=CONFIRMED", 0) >= 6,
        20,
    )
    assert durations == {"status=CANCELLED": 4, "status=CONFIRMED": 6}

    # What the ack policy did with each message, by service, type and outcome.
    expected = {
        "event_type=orders.requested,outcome=dead_lettered,service=order_svc": 1,
        "event_type=orders.requested,outcome=duplicate,service=order_svc": 1,
        "event_type=orders.requested,outcome=processed,service=order_svc": 10,
        "event_type=payments.completed,outcome=processed,service=inventory_svc": 10,
        "event_type=orders.confirmed,outcome=processed,service=inventory_svc": 6,
    }
    handled = await poll(
        lambda: prometheus.query("sum by (service, event_type, outcome) (saga_events_handled_total)"),
        lambda s: all(s.get(series, 0) >= count for series, count in expected.items()),
        20,
    )
    assert {series: handled[series] for series in expected} == expected
    # Partitioned, payment_svc takes what order_svc sends its partitions, batched: the 10 charges
    # and the 10 captures or releases, in one batch or more, and at most one each.
    batches = "event_type=payment_svc.steps,outcome=processed,service=payment_svc"
    handled = await poll(
        lambda: prometheus.query("sum by (service, event_type, outcome) (saga_events_handled_total)"),
        lambda s: s.get(batches, 0) >= 1,
        20,
    )
    assert 1 <= handled[batches] <= 20, handled
    dead = await prometheus.query("sum by (service, reason) (saga_dead_letters_total)")
    assert dead == {"reason=invalid_json,service=order_svc": 1}

    # The gauges read at scrape time: every partition owned once, its outbox drained, consumers caught up.
    owned = await prometheus.query("sum by (service) (saga_partition_owned)")
    assert owned == {"service=inventory_svc": 2, "service=order_svc": 2, "service=payment_svc": 2}
    backlog = await poll(
        lambda: prometheus.query("sum by (service) (saga_outbox_backlog)"),
        lambda s: len(s) == 3 and not any(s.values()),
        20,
    )
    assert set(backlog) == {"service=inventory_svc", "service=order_svc", "service=payment_svc"}
    pending = await poll(
        lambda: prometheus.query("saga_consumer_pending"), lambda s: len(s) >= 12 and not any(s.values()), 20
    )
    assert any("consumer=payment_svc-p1-payment_steps" in series for series in pending), sorted(pending)
    rounds = await prometheus.query("sum by (service) (saga_round_duration_seconds_count)")
    assert all(count > 0 for count in rounds.values()) and len(rounds) == 3

    # No label carries an order or a customer.
    names = await asyncio.to_thread(prometheus.api, "label/__name__/values")
    for name in [n for n in names if n.startswith("saga_")]:
        for series in await asyncio.to_thread(prometheus.api, "series", **{"match[]": name}):
            assert not {"order_id", "customer_id"} & set(series), series
            assert customer not in json.dumps(series) and orders[0] not in json.dumps(series), series

    # The shipped alert rules load, and the dead letter fires SagaDeadLetters.
    rules = await asyncio.to_thread(prometheus.api, "rules")
    loaded = {rule["name"]: rule["health"] for group in rules["groups"] for rule in group["rules"]}
    assert set(loaded) >= {"SagaDeadLetters", "SagaOrdersTimingOut", "SagaOutboxBacklog"}, loaded
    assert set(loaded.values()) == {"ok"}, loaded

    async def firing() -> list[dict[str, Any]]:
        alerts = (await asyncio.to_thread(prometheus.api, "alerts"))["alerts"]
        return [a for a in alerts if a["state"] == "firing"]

    fired = await poll(firing, lambda alerts: any(a["labels"]["alertname"] == "SagaDeadLetters" for a in alerts), 30)
    dead_letter_alert = next(a for a in fired if a["labels"]["alertname"] == "SagaDeadLetters")
    assert dead_letter_alert["labels"]["reason"] == "invalid_json"
    assert not [a for a in fired if a["labels"]["alertname"] == "SagaOrdersTimingOut"]


async def test_a_handed_over_partition_is_reported_by_its_new_owner(
    observed: tuple[System, Prometheus], nc: Client
) -> None:
    system, prometheus = observed
    second = system.services["order_svc-2"]
    second.stop()
    # Its partition moves to the first instance; the stopped one is down, the other owns both.
    owned = await poll(
        lambda: prometheus.query(f'saga_partition_owned{{service="order_svc",instance!~".*:{second.metrics_port}"}}'),
        lambda s: len(s) == 2,
        30,
    )
    assert {series.split("partition=")[1].split(",")[0] for series in owned} == {"0", "1"}
    down = await poll(
        lambda: prometheus.query(f'up{{instance="127.0.0.1:{second.metrics_port}"}}'), lambda s: _one(s) == 0, 20
    )
    assert _one(down) == 0
    second.start()
    system.wait_partitions_owned(("order_svc",))
