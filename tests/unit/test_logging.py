"""The services' log lines, and loggers that stop resolving themselves once structlog caches."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog

from shared.logging import about_message, configure_logging, get_logger

pytestmark = pytest.mark.usefixtures("structlog_defaults")


def _lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


def test_a_line_names_the_service_and_the_message_it_is_about(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("order_svc", "json", "INFO")
    log = get_logger("order_svc")

    with about_message("orders.requested", "o-1", "e-1"):
        log.info("order.placed", total_cents=300)
    log.info("service.idle")
    log.debug("not.written")

    placed, idle = _lines(capsys.readouterr().out)
    assert placed["event"] == "order.placed" and placed["total_cents"] == 300
    assert placed["service"] == "order_svc" and placed["level"] == "info"
    assert (placed["event_type"], placed["order_id"], placed["event_id"]) == ("orders.requested", "o-1", "e-1")
    assert idle["event"] == "service.idle"
    assert (idle["event_type"], idle["order_id"], idle["event_id"]) == (None, None, None)


def test_once_structlog_caches_loggers_a_method_is_looked_up_once(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("payment_svc", "json", "INFO")
    log = get_logger("payment_svc")

    log.info("first")
    assert "info" in vars(log), "the method is kept on the logger, not looked up through the proxy again"
    log.info("second")

    assert [line["event"] for line in _lines(capsys.readouterr().out)] == ["first", "second"]


def test_until_then_every_call_follows_the_current_configuration() -> None:
    log = get_logger("inventory_svc")
    first: list[str] = []
    second: list[str] = []

    def keep(into: list[str]) -> Any:
        def processor(_: Any, __: str, event_dict: dict[str, Any]) -> Any:
            into.append(event_dict["event"])
            raise structlog.DropEvent

        return processor

    structlog.configure(processors=[keep(first)], cache_logger_on_first_use=False)
    log.info("one")
    structlog.configure(processors=[keep(second)], cache_logger_on_first_use=False)
    log.info("two")

    assert (first, second) == (["one"], ["two"])
    assert "info" not in vars(log)
