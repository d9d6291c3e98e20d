"""Durable runs where users look: the OpenTelemetry and MLflow root spans of a resumed run carry the original run
id (`rlm.durable.run_id`) and its relation to it; a fork names its parent; a run no Durable made durable has no
`rlm.durable.*` attribute. Real dspy.RLM loops on the real interpreter, a SQLite store in tmp_path, a scripted LM;
the worker's death is simulated as in tests/test_durable.py (a tool raising a BaseException)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dspy
import pytest
from conftest import REAL_INTERPRETER
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from test_durable import STEPS, Tools, WorkerDied

import rlm_events
from rlm_events.durable import Durable, SQLiteStore
from rlm_events.taps.otel import OpenTelemetryTap
from rlm_events.testing import ScriptedLM, build_rlm

DURABLE = ("rlm.durable.run_id", "rlm.durable.relation", "rlm.durable.parent", "rlm.durable.replayed")
Install = Callable[[rlm_events.Instrumentation], Any]


def durable_runs(store_path: Path, install_tap: Install) -> dict[str, str]:
    """A durable run that dies in iteration 3, its resumption, a fork of it at iteration 2 resumed, and a run without
    Durable, each on an RLM with the tap installed (after Durable: Durable is the outermost middleware). Returns the
    durable ids: `original` (the dead run's, which its resumption continues) and `fork`."""
    store = SQLiteStore(store_path)
    tools = Tools()

    def make(durable: bool) -> tuple[dspy.RLM, Durable | None]:
        rlm = build_rlm("text -> answer", max_iters=6, tools=[tools.lookup], interpreter_factory=REAL_INTERPRETER)
        events = rlm_events.instrument(rlm)
        made = Durable(store).install(events) if durable else None
        install_tap(events)
        return rlm, made

    rlm, durable = make(True)
    tools.die_on = "c"
    with dspy.context(lm=ScriptedLM(STEPS, sub="SUB")), pytest.raises(WorkerDied):
        rlm(text="t")
    assert durable is not None and durable.last_run_id is not None
    original = durable.last_run_id
    _, other = make(True)  # another worker resumes it
    assert other is not None
    with dspy.context(lm=ScriptedLM(STEPS, sub="SUB")):
        assert other.resume(original).answer == "AABBSUBCC"
        fork = other.fork(original, at=2)
        assert other.resume(fork).answer == "AABBSUBCC"
        plain, _ = make(False)
        assert plain(text="t").answer == "AABBSUBCC"
    rlm_events.flush()
    return {"original": original, "fork": fork}


def check_roots(roots: list[tuple[dict[str, Any], bool]], ids: dict[str, str]) -> None:
    """The root spans (attributes, failed) of: the run whose worker died, its resumption, the resumed fork and the run
    without Durable, in this order."""
    (dead, dead_failed), (resumed, _), (forked, _), (plain, plain_failed) = roots
    original = ids["original"]
    # The run that died: durable, nothing resumed yet; its span ended, failed (the worker's BaseException).
    assert dead["rlm.run.id"] == original and dead["rlm.durable.run_id"] == original and dead_failed
    assert "rlm.durable.relation" not in dead
    assert {k: resumed.get(k) for k in DURABLE} == dict(zip(DURABLE, [original, "resume", original, 2], strict=True))
    assert {k: forked.get(k) for k in DURABLE} == dict(zip(DURABLE, [ids["fork"], "fork", original, 2], strict=True))
    assert not any(key.startswith("rlm.durable.") for key in plain) and not plain_failed
    assert plain["rlm.run.id"] and resumed["rlm.stop_reason"] == forked["rlm.stop_reason"] == "submit"


def test_opentelemetry_root_spans_link_resumed_and_forked_runs(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ids = durable_runs(tmp_path / "runs.db", OpenTelemetryTap(provider).install)
    roots = [
        (dict(span.attributes or {}), span.status.status_code is StatusCode.ERROR)
        for span in sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
        if span.parent is None
    ]
    check_roots(roots, ids)


@pytest.fixture
def mlflow_experiment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A temporary MLflow tracking store (SQLite in tmp_path), traces written synchronously; put back afterwards."""
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("mlflow.store.tracking.sqlalchemy_store", reason="needs the full mlflow package (SQLite store)")
    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    monkeypatch.chdir(tmp_path)  # the store's artifact root (./mlruns) is resolved in the working directory
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.set_experiment("durable")
    yield experiment.experiment_id
    mlflow.set_tracking_uri(previous)


def test_mlflow_root_spans_link_resumed_and_forked_runs(tmp_path: Path, mlflow_experiment: str) -> None:
    import mlflow

    from rlm_events.taps import MlflowTap

    ids = durable_runs(tmp_path / "runs.db", MlflowTap().install)
    found = mlflow.search_traces(locations=[mlflow_experiment], return_type="list")
    roots = []
    for info in sorted(found, key=lambda trace: trace.info.request_time):
        (root,) = (span for span in mlflow.get_trace(info.info.trace_id).data.spans if span.parent_id is None)
        roots.append((dict(root.attributes), root.status.status_code == "ERROR"))
    check_roots(roots, ids)
