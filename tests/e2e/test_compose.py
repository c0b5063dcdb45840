"""The container setup, compose.yaml, checked with a real `docker compose config`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid_and_runs_a_nats_cluster_and_two_replicas_of_each_service() -> None:
    compose = Path(sys.executable).parent / "docker-compose"
    done = subprocess.run(
        [str(compose), "-f", str(ROOT / "compose.yaml"), "config", "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    config = json.loads(done.stdout)
    services = config["services"]
    nodes = ("nats-1", "nats-2", "nats-3")
    assert set(services) == {*nodes, "order_svc", "payment_svc", "inventory_svc"}
    routes = "nats://nats-1:6222,nats://nats-2:6222,nats://nats-3:6222"
    for node in nodes:
        nats = services[node]
        assert nats["image"].startswith("nats:")
        command = nats["command"]
        assert "--jetstream" in command
        assert command[command.index("--server_name") + 1] == node
        assert command[command.index("--cluster_name") + 1] == "saga"
        assert command[command.index("--routes") + 1] == routes
        # Plain /healthz: OK only once a meta leader exists (?js-enabled-only answers before).
        assert nats["healthcheck"]["test"] == ["CMD", "wget", "-q", "-O", "-", "http://127.0.0.1:8222/healthz"]
    assert len({services[n]["volumes"][0]["source"] for n in nodes}) == 3
    for name, command in (
        ("order_svc", "order-svc"),
        ("payment_svc", "payment-svc"),
        ("inventory_svc", "inventory-svc"),
    ):
        svc = services[name]
        assert svc["build"]["context"] == str(ROOT)
        assert svc["command"] == [command]
        assert svc["environment"]["NATS_URL"] == ",".join(f"nats://{n}:4222" for n in nodes)
        assert svc["environment"]["STREAM_REPLICAS"] == "3"
        assert svc["environment"]["DATA_DIR"] == "/data"
        assert {n: d["condition"] for n, d in svc["depends_on"].items()} == dict.fromkeys(nodes, "service_healthy")
        # Two replicas on one volume: one writes, the other stands by on the same file.
        assert svc["deploy"]["replicas"] == 2
        [volume] = svc["volumes"]
        assert volume["type"] == "volume" and volume["target"] == "/data"
    assert len({services[n]["volumes"][0]["source"] for n in ("order_svc", "payment_svc", "inventory_svc")}) == 3
