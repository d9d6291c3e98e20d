"""``predict_rlm.PredictRLM`` (extra ``rlm-events[predict-rlm]``): a real PredictRLM, a scripted LM answering in its
JSON adapter's format, and ``dspy.LocalInterpreter`` (its default sandbox needs a network). Every stage fires on its
own loop with the same contexts as on DSPy's, the built-ins work on it, and so does ``enable_rlm_hooks``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import dspy
import pytest

predict_rlm = pytest.importorskip("predict_rlm", reason="needs the predict-rlm extra (DSPy 3.4+)")
if not hasattr(dspy, "LocalInterpreter"):
    pytest.skip("PredictRLM runs here on dspy.LocalInterpreter (DSPy 3.4+)", allow_module_level=True)

from dspy.utils import DummyLM  # noqa: E402

import rlm_events  # noqa: E402
from rlm_events import Stage  # noqa: E402
from rlm_events.builtins import Budget, CodeGuard  # noqa: E402
from rlm_events.hooks import PreExecutionOutput, enable_rlm_hooks  # noqa: E402
from rlm_events.replay import Recorder, ReplayLM  # noqa: E402
from rlm_events.trace import JsonlTrace  # noqa: E402


class JsonLM(DummyLM):
    """Plays ``answers`` in the format each prompt asks for: PredictRLM's JSON adapter for its own calls, DSPy's
    chat format for predictors run inside tools (they may not see the caller's adapter)."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        super().__init__(answers, adapter=dspy.JSONAdapter())

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        wants_json = "Respond with a JSON object" in messages[-1]["content"]
        self.adapter = dspy.JSONAdapter() if wants_json else dspy.ChatAdapter()
        return super().forward(prompt=prompt, messages=messages, **kwargs)


def step(code: str, plan: str = "next") -> dict[str, str]:
    return {"plan": plan, "code": f"```repl\n{code}\n```"}


STEPS = [
    step("x = 20\nnote = ask(prompt='hi')\nprint(x, note)", "ask the sub-LM"),
    step("r = predict('text: str -> summary: str', text=text)\nprint(r['summary'])", "summarise"),
    step("SUBMIT(answer=str(x * 2))", "submit"),
]


def build(steps: list[dict[str, str]] = STEPS, *, max_iterations: int = 4, lm: Any = None) -> Any:
    sub = JsonLM([{"response": "hello"}, {"summary": "S"}] * 4)

    def ask(prompt: str) -> str:
        """Ask the sub-LM."""
        return str(dspy.Predict("prompt -> response")(prompt=prompt, lm=sub).response)

    return predict_rlm.PredictRLM(
        "text: str -> answer: str",
        lm=lm or JsonLM(list(steps)),
        sub_lm=sub,
        max_iterations=max_iterations,
        tools=[ask],
        interpreter=dspy.LocalInterpreter(),
        adapter=predict_rlm.ValidatingJSONAdapter(),
        verbose=False,
    )


def call(rlm: Any, use_async: bool, **inputs: Any) -> Any:
    inputs = inputs or {"text": "a fox"}
    return asyncio.run(rlm.acall(**inputs)) if use_async else rlm(**inputs)


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_every_stage_fires_on_predict_rlms_loop_and_middleware_fold_it(use_async):
    rlm = build()
    events = rlm_events.instrument(rlm)
    seen: list[tuple[str, Any]] = []
    events.tap(lambda ctx: seen.append((ctx.stage.value, ctx.iteration)), inline=True)
    reasonings: list[str] = []

    @events.middleware(Stage.PRE_EXECUTION)
    def rewrite(ctx, next):
        reasonings.append(ctx.reasoning)
        ctx.code = ctx.code.replace("x = 20", "x = 40")
        return next(ctx)

    @events.middleware(Stage.POST_EXECUTION)
    def tag(ctx, next):
        if "SUBMIT" not in ctx.code:
            ctx.result = f"{str(ctx.result).strip()} [seen]"
        return next(ctx)

    tools: list[str] = []
    events.connect(Stage.TOOL_CALL, lambda sender, ctx: tools.append(ctx.name), weak=False)

    result = call(rlm, use_async)
    assert result.answer == "80"  # the rewritten code ran
    codes = [entry["code"] for entry in result.trajectory]
    assert codes[0].startswith("x = 40")  # and the history records it
    assert [entry["output"].endswith("[seen]") for entry in result.trajectory] == [True, True, False]
    assert reasonings == ["ask the sub-LM", "summarise", "submit"]  # PredictRLM's plan
    assert tools == ["ask", "predict"]
    stages = [stage for stage, _ in seen]
    assert stages[0] == "run_start" and stages[-1] == "run_end"
    assert stages[1:-1] == ["pre_iteration", "pre_execution", "tool_call", "post_execution", "post_iteration"] * 2 + [
        "pre_iteration",
        "pre_execution",
        "post_execution",
        "post_iteration",
    ]
    assert type(rlm) is not predict_rlm.PredictRLM and isinstance(rlm, predict_rlm.PredictRLM)
    rlm_events.uninstrument(rlm)
    assert type(rlm) is predict_rlm.PredictRLM


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_skip_stop_and_extract_on_predict_rlm(use_async):
    answers = [step("import os\nprint(os.getcwd())"), {"answer": "extracted"}]  # then the extract call
    rlm = build(max_iterations=5, lm=JsonLM(answers))
    events = rlm_events.instrument(rlm)
    CodeGuard().install(events)
    Budget(max_iterations=1).install(events)
    extracts: list[int] = []
    events.tap([Stage.EXTRACT], lambda ctx: extracts.append(len(ctx.history)), inline=True)
    result = call(rlm, use_async)
    assert result.trajectory[0]["output"].startswith("[Error] CodeGuard refused")
    assert result.answer == "extracted" and extracts == [1]  # the budget stopped it after one iteration


def test_jsonl_trace_and_record_replay_on_predict_rlm(tmp_path: Path):
    rlm = build()
    events = rlm_events.instrument(rlm)
    trace = JsonlTrace(tmp_path / "trace.jsonl").install(events)
    recorder = Recorder().install(events)
    recorded = call(rlm, use_async=False)
    trace.close()
    records = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records].count("post_execution") == 3
    assert {r["tool"]["name"] for r in records if r["stage"] == "tool_call"} == {"ask", "predict"}
    path = recorder.save(tmp_path / "run.json")

    replay_lm = ReplayLM.from_file(path)
    replayed = call(build(lm=replay_lm), use_async=False, **replay_lm.recording.input_args)
    assert replayed.answer == recorded.answer == "40"
    assert [e["code"] for e in replayed.trajectory] == [e["code"] for e in recorded.trajectory]


def test_opentelemetry_spans_on_predict_rlm():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from rlm_events.taps.otel import OpenTelemetryTap

    exporter, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    rlm = build()
    OpenTelemetryTap(provider).install(rlm_events.instrument(rlm))
    call(rlm, use_async=True)
    spans = exporter.get_finished_spans()
    names = [span.name for span in spans]
    assert sorted(name for name in names if name.startswith("iteration ")) == [
        "iteration 1",
        "iteration 2",
        "iteration 3",
    ]
    assert {"execute_tool ask", "execute_tool predict"} <= set(names)
    assert any(name.startswith("invoke_agent") for name in names)
    executions = {span.context.span_id for span in spans if span.name == "execute_code"}
    tools = [span for span in spans if span.name.startswith("execute_tool")]
    assert tools and all(span.parent.span_id in executions for span in tools)


def test_mlflow_trace_of_predict_rlm(tmp_path, monkeypatch):
    pytest.importorskip("mlflow.store.tracking.sqlalchemy_store", reason="needs the full mlflow package")
    import mlflow

    from rlm_events.taps import MlflowTap

    monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlruns.db'}")
    try:
        experiment = mlflow.set_experiment("predict-rlm").experiment_id
        rlm = build()
        MlflowTap().install(rlm_events.instrument(rlm))
        call(rlm, use_async=True)
        (found,) = mlflow.search_traces(locations=[experiment], return_type="list")
        spans = mlflow.get_trace(found.info.trace_id).data.spans
    finally:
        mlflow.set_tracking_uri(previous)
    by_id = {span.span_id: span for span in spans}
    (root,) = [span for span in spans if span.parent_id is None]
    assert root.name == f"{type(rlm).__name__}.forward" and root.attributes["rlm.stop_reason"] == "submit"
    iterations = [span for span in spans if span.parent_id == root.span_id and span.name.startswith("iteration ")]
    assert len(iterations) == 3
    tools = [span for span in spans if span.name in ("ask", "predict")]
    assert tools and {by_id[span.parent_id].name for span in tools} == {"execute_code"}


def test_enable_rlm_hooks_on_predict_rlm():
    rlm = build()
    seen: list[int] = []

    def pre_execution_hook(iteration: int, code: str, variables: Any, history: Any, inputs: Any) -> PreExecutionOutput:
        seen.append(iteration)
        return PreExecutionOutput(code=code.replace("x = 20", "x = 21"))

    enable_rlm_hooks(rlm, pre_execution_hook=pre_execution_hook)
    assert call(rlm, use_async=False).answer == "42"
    assert len(seen) == 3


def test_instrumenting_a_dspy_rlm_does_not_import_predict_rlm():
    import subprocess
    import sys

    code = (
        "import sys, dspy, rlm_events\n"
        "from rlm_events.testing import InProcessInterpreter\n"
        "rlm_events.instrument(dspy.RLM('q -> a', interpreter_factory=InProcessInterpreter))\n"
        "assert 'predict_rlm' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
