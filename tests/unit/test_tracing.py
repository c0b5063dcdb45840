"""Tracing's settings and the pure parts of carrying a trace: the ``traceparent`` a span hands on,
and a sub-step's row keeping its cause's."""

from __future__ import annotations

import json

import pytest

from shared import tracing
from shared.envelope import Event
from shared.settings import Settings, SettingsError
from shared.steps import StepBatch, batch_steps

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("env", "exporter", "name"),
    [
        ({}, "none", "order_svc"),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "otlp", "order_svc"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "orders-eu"}, "console", "orders-eu"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "otlp", "order_svc"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, "none", "order_svc"),
    ],
)
def test_the_standard_variables_turn_tracing_on(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], exporter: str, name: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings.from_env("order_svc")
    assert (settings.traces_exporter, settings.traces_service_name) == (exporter, name)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "OTEL_TRACES_EXPORTER='jaeger' must be one of none, otlp, console"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "only http/protobuf"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "only http/protobuf"),
    ],
)
def test_what_we_cannot_export_with_is_a_bad_setting(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=message):
        Settings.from_env("order_svc")


def test_untraced_nothing_is_made() -> None:
    assert not tracing.enabled()
    assert tracing.start_handling({"traceparent": PARENT}, "handle x", {}) is None
    assert tracing.start_child(PARENT, "order timeout", {}) is None
    with tracing.handling(None):
        assert tracing.HANDLING.get() is None
    with tracing.handling(PARENT):
        assert tracing.HANDLING.get() == PARENT
    assert tracing.HANDLING.get() is None


def test_a_span_hands_on_its_own_traceparent_in_its_parents_trace() -> None:
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    parent = tracing._parent(PARENT)
    span = tracer.start_span("handle orders.created", context=parent)
    version, trace_id, span_id, flags = tracing.traceparent_of(span).split("-")
    assert (version, trace_id, flags) == ("00", PARENT.split("-")[1], "01")
    assert span_id != PARENT.split("-")[2] and len(span_id) == 16
    assert span.parent is not None and f"{span.parent.span_id:016x}" == PARENT.split("-")[2]  # type: ignore[attr-defined]


def test_a_sub_steps_row_keeps_its_causes_traceparent_and_an_untraced_one_has_four_fields() -> None:
    caused = [
        (Event("payment_svc.charge_requested", "o-1", {"n": 1}, partition=1, traceparent=PARENT), "e-1"),
        (Event("payment_svc.charge_requested", "o-2", {"n": 2}, partition=1), "e-2"),
    ]
    [batch] = batch_steps(caused)
    assert [len(row) for row in batch.data["steps"]] == [5, 4]
    parsed = StepBatch.model_validate_json(json.dumps(batch.data))
    assert parsed.steps[0][4:] == (PARENT,) and len(parsed.steps[1]) == 4
