"""order_svc's word on ORDER_TIMEOUT_S at start: shorter than a failover, it warns."""

from __future__ import annotations

import json

import pytest

from order_svc.__main__ import ORDER_SERVICE
from order_svc.timeouts import ELECTION_S, warn_if_a_node_loss_can_time_out_orders
from shared.jetstream import ACK_WAIT_S
from shared.logging import configure_logging
from shared.settings import Settings

pytestmark = pytest.mark.usefixtures("structlog_defaults")


@pytest.mark.parametrize(
    ("order_timeout_s", "warned"),
    [(Settings.order_timeout_s, False), (ACK_WAIT_S + ELECTION_S, False), (4.0, True)],
    ids=["the-default", "at-the-edge", "the-chaos-runs-four-seconds"],
)
def test_a_timeout_a_node_loss_can_outlast_is_warned_of_once_at_start(
    capsys: pytest.CaptureFixture[str], order_timeout_s: float, warned: bool
) -> None:
    configure_logging("order_svc", "json", "INFO")
    ORDER_SERVICE.check_settings(Settings(service="order_svc", order_timeout_s=order_timeout_s))
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == (["timeouts.shorter_than_a_failover"] if warned else [])
    if warned:
        assert lines[0]["order_timeout_s"] == 4.0 and lines[0]["ack_wait_s"] == ACK_WAIT_S
    assert ORDER_SERVICE.check_settings is warn_if_a_node_loss_can_time_out_orders
