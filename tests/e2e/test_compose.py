"""The container setup, compose.yaml, checked with a real `docker compose config`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_is_valid_and_runs_nats_with_jetstream_and_the_three_services() -> None:
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
    assert set(services) == {"nats", "order_svc", "payment_svc", "inventory_svc"}
    nats = services["nats"]
    assert nats["image"].startswith("nats:")
    assert "--jetstream" in nats["command"]
    assert nats["healthcheck"]["test"][0] == "CMD"
    for name, command in (
        ("order_svc", "order-svc"),
        ("payment_svc", "payment-svc"),
        ("inventory_svc", "inventory-svc"),
    ):
        svc = services[name]
        assert svc["build"]["context"] == str(ROOT)
        assert svc["command"] == [command]
        assert svc["environment"]["NATS_URL"] == "nats://nats:4222"
        assert svc["environment"]["DATA_DIR"] == "/data"
        assert svc["depends_on"]["nats"]["condition"] == "service_healthy"
        [volume] = svc["volumes"]
        assert volume["type"] == "volume" and volume["target"] == "/data"
    assert len({services[n]["volumes"][0]["source"] for n in ("order_svc", "payment_svc", "inventory_svc")}) == 3
