"""Every tap sees every `run_end`, whatever a middleware or signal receiver raised there (issue 24).

Real `dspy.RLM` calls with a scripted LM, on the library's in-process interpreter (a thousand calls). A receiver
(or middleware) that raises at `run_end` makes the call raise, as blinker's semantics say; the taps still get the
call's end, with that error, so no tap keeps per-run state: over many such calls, nothing grows.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import dspy
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import rlm_events
from rlm_events import Stage
from rlm_events.signals import run_end
from rlm_events.taps.otel import OpenTelemetryTap
from rlm_events.testing import InProcessInterpreter
from rlm_events.trace.reader import read_trace
from rlm_events.trace.writer import JsonlTrace

CALLS = 1000


class WebhookDown(RuntimeError):
    pass


@pytest.fixture
def raising_receiver() -> Iterator[None]:
    """A run_end receiver that always raises (a webhook that is down), connected to every sender."""

    def notify(sender: Any, **kwargs: Any) -> None:
        raise WebhookDown("webhook is down")

    run_end.connect(notify)
    yield
    run_end.disconnect(notify)


def per_run_state(trace: JsonlTrace, otel: OpenTelemetryTap) -> tuple[int, int]:
    # The taps' own maps of calls in flight: what a missed run_end would leak.
    return len(trace._runs), len(otel._forest)


def test_a_raising_receiver_at_run_end_leaks_nothing_over_many_calls(make_rlm, tmp_path, raising_receiver):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    path = tmp_path / "trace.jsonl"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    otel = OpenTelemetryTap(tracer_provider=provider)
    otel.install(events)
    with JsonlTrace(path) as trace, dspy.context(lm=lm):
        trace.install(events)
        for i in range(CALLS):
            with pytest.raises(WebhookDown):
                rlm(text="t")
            if i == 0:
                first = per_run_state(trace, otel)
        assert per_run_state(trace, otel) == first == (0, 0)

    records = read_trace(path)
    assert records.skipped_lines == 0 and len(records.runs) == CALLS
    for run in records.runs.values():
        end = run[-1]
        assert (end.stage, end.stop_reason) == ("run_end", "error")
        assert end.error == "WebhookDown: webhook is down"
    roots = [s for s in exporter.get_finished_spans() if s.parent is None]
    assert len(roots) == CALLS  # every call's root span ended
    assert all(not s.status.is_ok for s in roots)


def test_a_raising_middleware_at_run_end_still_reaches_the_taps_async(make_rlm, tmp_path):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)

    def broken(ctx: Any, next: Any) -> Any:
        raise WebhookDown("middleware failed")

    events.use(Stage.RUN_END, broken)
    seen: list[Any] = []
    events.tap([Stage.RUN_END], seen.append)
    path = tmp_path / "trace.jsonl"
    with JsonlTrace(path) as trace, dspy.context(lm=lm):
        trace.install(events)
        for _ in range(20):
            with pytest.raises(WebhookDown):
                asyncio.run(rlm.acall(text="t"))
        assert trace._runs == {}
    assert len(seen) == 20
    assert all(isinstance(ctx.error, WebhookDown) and ctx.prediction is not None for ctx in seen)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert sum(line["stage"] == "run_end" for line in lines) == 20


def test_other_stages_keep_their_semantics(make_rlm):
    """Only run_end is special: a middleware raising at pre_iteration fails the call before its taps see it."""
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)

    def broken(ctx: Any, next: Any) -> Any:
        raise WebhookDown("no")

    events.use(Stage.PRE_ITERATION, broken)
    stages: list[str] = []
    events.tap(lambda ctx: stages.append(ctx.stage.value))
    with dspy.context(lm=lm), pytest.raises(WebhookDown):
        rlm(text="t")
    rlm_events.flush()  # queued taps: wait for their snapshots
    assert stages == ["run_start", "run_end"]


def test_mlflow_tap_keeps_no_state_of_calls_ended_by_a_raising_receiver(make_rlm, tmp_path, raising_receiver):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("mlflow.store.tracking.sqlalchemy_store", reason="needs the full mlflow package")
    from rlm_events.taps.mlflow import MlflowTap

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    try:
        mlflow.set_experiment("run-end-leak")
        rlm, lm = make_rlm(["SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
        events = rlm_events.instrument(rlm)
        tap = MlflowTap()
        tap.install(events)
        with dspy.context(lm=lm):
            for _ in range(20):  # each call writes a trace to SQLite: fewer calls than above, same check
                with pytest.raises(WebhookDown):
                    rlm(text="t")
                assert len(tap._forest) == 0
        traces = mlflow.search_traces(return_type="list")
        assert len(traces) == 20
        assert {t.info.state.value if hasattr(t.info, "state") else t.info.status for t in traces} <= {
            "ERROR",
            "TraceStatus.ERROR",
        }
    finally:
        mlflow.set_tracking_uri(previous)
        patch.undo()
