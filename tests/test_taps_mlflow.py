"""MlflowTap on real dspy.RLM loops, traces read back from a real MLflow tracking store (SQLite in a temp dir).

Every test asserts the span tree ``mlflow.get_trace`` returns, with and without ``mlflow.dspy.autolog()``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Iterator
from typing import Any

import dspy
import pytest

pytest.importorskip("mlflow.store.tracking.sqlalchemy_store", reason="needs the full mlflow package (SQLite store)")

import mlflow
from mlflow.entities import SpanType

import rlm_events
from rlm_events import Stage
from rlm_events.builtins import Budget, CodeGuard
from rlm_events.runtime import batched_queries_keep_context
from rlm_events.taps import MlflowTap

STEPS = ["x = 6 * 7\nprint(x)", "print(llm_query('say hi'))", "SUBMIT(answer=str(x))"]
USAGE = "mlflow.chat.tokenUsage"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One SQLite tracking store for the module (creating its tables takes a while); traces written synchronously."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(previous)
    patch.undo()


@pytest.fixture
def experiment(store: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh experiment per test: ``search_traces`` there sees this test's traces only."""
    experiment = mlflow.set_experiment(request.node.name)
    yield experiment.experiment_id


@pytest.fixture
def autolog(experiment: str) -> Iterator[None]:
    mlflow.dspy.autolog()
    yield
    mlflow.dspy.autolog(disable=True)


# -- reading traces back --------------------------------------------------------------------------------------


def traces(experiment: str) -> list[Any]:
    found = mlflow.search_traces(locations=[experiment], return_type="list")
    return [mlflow.get_trace(t.info.trace_id) for t in found]


def only_trace(experiment: str) -> Any:
    (trace,) = traces(experiment)
    return trace


def tree(trace: Any, keep: Any = None) -> tuple[Any, ...]:
    """The trace as nested ``(name, (children...))``, children by start time; spans ``keep`` rejects are dropped and
    their children lifted to the parent."""
    spans = trace.data.spans
    children: dict[str | None, list[Any]] = {}
    for span in sorted(spans, key=lambda s: s.start_time_ns):
        children.setdefault(span.parent_id, []).append(span)

    def build(span: Any) -> list[Any]:
        below = [node for child in children.get(span.span_id, []) for node in build(child)]
        if keep is None or keep(span):
            return [(span.name, tuple(below))]
        return below

    roots = [node for root in children.get(None, []) for node in build(root)]
    assert len(roots) == 1, roots
    return roots[0]  # type: ignore[no-any-return]


OURS = {"RLM.forward", "generate_action", "execute_code", "extract", "llm_query", "llm_query_batched", "lookup"}


def ours(span: Any) -> bool:
    return span.name in OURS or span.name.startswith("iteration ")


def by_name(trace: Any, name: str) -> list[Any]:
    return sorted((s for s in trace.data.spans if s.name == name), key=lambda s: s.start_time_ns)


def iteration(n: int, *, tool: str | None = None, code: bool = True) -> tuple[Any, ...]:
    steps: list[Any] = [("generate_action", ())]
    if code:
        steps.append(("execute_code", ((tool, ()),) if tool else ()))
    return (f"iteration {n}", tuple(steps))


LOOP = ("RLM.forward", (iteration(1), iteration(2, tool="llm_query"), iteration(3)))


def lm_spans(span_id: str, trace: Any) -> list[Any]:
    """Autolog's spans of ScriptedLM calls right under ``span_id`` (``ScriptedLM.__call__``; DSPy 3.1 reports a
    custom LM's calls as a module's, ``ScriptedLM.forward``)."""
    return [s for s in trace.data.spans if s.parent_id == span_id and s.name.startswith("ScriptedLM.")]


def usage_of(entries: list[dict[str, Any]]) -> dict[str, int]:
    tokens_in = sum(e["usage"]["prompt_tokens"] for e in entries)
    tokens_out = sum(e["usage"]["completion_tokens"] for e in entries)
    return {"input_tokens": tokens_in, "output_tokens": tokens_out, "total_tokens": tokens_in + tokens_out}


# -- the tree ---------------------------------------------------------------------------------------------------


def test_without_autolog_the_tap_makes_the_whole_tree(make_rlm, experiment):
    rlm, lm = make_rlm(STEPS, sub="hi!", model="openai/gpt-4o-mini")
    events = rlm_events.instrument(rlm)
    MlflowTap().install(events)

    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "42"

    trace = only_trace(experiment)
    assert tree(trace) == LOOP
    (root,) = by_name(trace, "RLM.forward")
    assert root.span_type == SpanType.AGENT and root.parent_id is None
    assert root.attributes["rlm.stop_reason"] == "submit"
    assert root.attributes["rlm.iterations"] == 3 and root.attributes["rlm.max_iters"] == 6
    assert root.inputs == {"text": "t"} and root.outputs["answer"] == "42"
    assert [s.span_type for s in by_name(trace, "iteration 2")] == [SpanType.CHAIN]
    assert {s.span_type for s in by_name(trace, "generate_action")} == {SpanType.LLM}
    assert {s.span_type for s in by_name(trace, "execute_code")} == {SpanType.TOOL}
    (tool,) = by_name(trace, "llm_query")
    assert tool.span_type == SpanType.TOOL and tool.inputs == {"args": ["say hi"]} and tool.outputs == "hi!"
    codes = [s.inputs["code"] for s in by_name(trace, "execute_code")]
    assert codes == STEPS
    assert [s.outputs["output"] for s in by_name(trace, "execute_code")][:2] == ["42", "hi!"]
    action = by_name(trace, "generate_action")[0]
    assert action.outputs["code"] == STEPS[0] and action.attributes["mlflow.llm.model"] == "openai/gpt-4o-mini"
    for child in trace.data.spans:
        assert root.start_time_ns <= child.start_time_ns <= child.end_time_ns <= root.end_time_ns
        assert child.status.status_code == "OK"


def test_token_usage_per_iteration_adds_up_to_the_run_and_the_trace(make_rlm, experiment):
    rlm, lm = make_rlm(STEPS, sub="hi!")
    MlflowTap().install(rlm_events.instrument(rlm))

    with dspy.context(lm=lm):
        rlm(text="t")

    trace = only_trace(experiment)
    action, second, sub, third = lm.history
    iterations = [by_name(trace, f"iteration {n}")[0] for n in (1, 2, 3)]
    assert [s.attributes[USAGE] for s in iterations] == [usage_of([action]), usage_of([second, sub]), usage_of([third])]
    actions = by_name(trace, "generate_action")
    assert [s.attributes[USAGE] for s in actions] == [usage_of([e]) for e in (action, second, third)]
    assert by_name(trace, "execute_code")[1].attributes[USAGE] == usage_of([sub])  # the llm_query call
    (root,) = by_name(trace, "RLM.forward")
    assert root.attributes[USAGE] == usage_of(lm.history)
    assert trace.info.token_usage == usage_of(lm.history)  # MLflow's own sum: nothing counted twice


def test_with_autolog_its_spans_nest_in_the_loop(make_rlm, autolog, experiment):
    rlm, lm = make_rlm(STEPS, sub="hi!")
    MlflowTap().install(rlm_events.instrument(rlm))

    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "42"

    trace = only_trace(experiment)
    assert tree(trace, keep=ours) == LOOP  # autolog's RLM.forward is the root, the loop under it
    (root,) = by_name(trace, "RLM.forward")
    assert root.parent_id is None and root.span_type == SpanType.AGENT
    assert root.attributes["rlm.stop_reason"] == "submit"
    for action in by_name(trace, "generate_action"):  # the predictor's spans, under the action
        (predict,) = [s for s in trace.data.spans if s.parent_id == action.span_id]
        assert predict.name == "Predict.forward"
        assert lm_spans(predict.span_id, trace)
    (tool,) = by_name(trace, "llm_query")
    (sub,) = lm_spans(tool.span_id, trace)  # the sub-LM call, under the tool that made it
    assert sub.outputs is not None
    # nothing of autolog's is left directly under the root: every span is in its iteration
    assert {s.name for s in trace.data.spans if s.parent_id == root.span_id} == {
        "iteration 1",
        "iteration 2",
        "iteration 3",
    }


def test_llm_query_batched_threads_nest_under_their_tool(make_rlm, autolog, experiment):
    rlm, lm = make_rlm(["print(llm_query_batched(['a', 'b', 'c']))", "SUBMIT(answer='done')"], sub="ok")
    MlflowTap().install(rlm_events.instrument(rlm))

    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "done"

    found = traces(experiment)
    if not batched_queries_keep_context(type(rlm)):  # DSPy < 3.3: its threads start traces of their own
        pytest.skip("this DSPy runs llm_query_batched's prompts without the caller's context")
    (trace,) = found
    assert tree(trace, keep=ours) == ("RLM.forward", (iteration(1, tool="llm_query_batched"), iteration(2)))
    (tool,) = by_name(trace, "llm_query_batched")
    assert len(lm_spans(tool.span_id, trace)) == 3


@pytest.mark.parametrize("with_autolog", [False, True], ids=["tap", "autolog"])
def test_concurrent_async_calls_each_get_their_own_trace(make_rlm, experiment, with_autolog, request):
    if with_autolog:
        request.getfixturevalue("autolog")
    rlm, lm = make_rlm(STEPS, sub="hi!")
    MlflowTap().install(rlm_events.instrument(rlm))

    async def main() -> None:
        with dspy.context(lm=lm):  # one LM shared by all: each call's usage is still its own
            await asyncio.gather(*(rlm.acall(text=f"t{i}") for i in range(4)))

    asyncio.run(main())
    found = traces(experiment)
    assert len(found) == 4 and len({t.info.trace_id for t in found}) == 4
    assert sorted(by_name(t, "RLM.forward")[0].inputs["text"] for t in found) == ["t0", "t1", "t2", "t3"]
    per_trace = []
    for trace in found:
        assert tree(trace, keep=ours) == LOOP
        (root,) = by_name(trace, "RLM.forward")
        run_ids = {s.attributes.get("rlm.run.id") for s in trace.data.spans if s.name.startswith("iteration")}
        assert run_ids == {root.attributes["rlm.run.id"]}
        per_trace.append(root.attributes[USAGE])
        if with_autolog:
            (tool,) = by_name(trace, "llm_query")
            assert len(lm_spans(tool.span_id, trace)) == 1
    assert len({tuple(u.values()) for u in per_trace}) == 1  # the same script, the same usage: attributed exactly
    assert sum(u["total_tokens"] for u in per_trace) == usage_of(lm.history)["total_tokens"]


def test_concurrent_threaded_calls_nest_under_their_callers_spans(make_rlm, experiment):
    rlm, lm = make_rlm(STEPS, sub="hi!")
    MlflowTap().install(rlm_events.instrument(rlm))

    def request(i: int) -> None:
        with mlflow.start_span(f"request {i}"), dspy.context(lm=lm.copy()):
            rlm(text=f"t{i}")

    threads = [threading.Thread(target=request, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    found = traces(experiment)
    assert len(found) == 3
    for trace in found:
        (name, (loop,)) = tree(trace)
        assert name.startswith("request ") and loop == LOOP
        (root,) = by_name(trace, "RLM.forward")
        assert root.inputs == {"text": f"t{name.split()[1]}"}


# -- why the loop stopped, and who changed what -----------------------------------------------------------------


def test_max_iters_ends_in_the_extract_span(make_rlm, autolog, experiment):
    rlm, lm = make_rlm(["print('working')"], max_iters=2, extract={"answer": "late"})
    MlflowTap().install(rlm_events.instrument(rlm))

    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "late"

    trace = only_trace(experiment)
    assert tree(trace, keep=ours) == ("RLM.forward", (iteration(1), iteration(2), ("extract", ())))
    (root,) = by_name(trace, "RLM.forward")
    assert root.attributes["rlm.stop_reason"] == "max_iters" and root.attributes["rlm.forced_extract"] is True
    (extract,) = by_name(trace, "extract")
    assert extract.span_type == SpanType.LLM and extract.outputs["answer"] == "late"
    assert extract.attributes[USAGE] == usage_of([lm.history[-1]])
    (predict,) = [s for s in trace.data.spans if s.parent_id == extract.span_id]  # autolog's extractor
    assert predict.name.endswith(".forward")


def test_budget_stop_is_an_event_and_the_stop_reason(make_rlm, experiment):
    rlm, lm = make_rlm(["print('working')"], max_iters=5, extract={"answer": "partial"})
    events = rlm_events.instrument(rlm)
    Budget(max_iterations=2).install(events)
    MlflowTap().install(events)

    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "partial"

    trace = only_trace(experiment)
    assert tree(trace) == ("RLM.forward", (iteration(1), iteration(2), ("extract", ())))
    (root,) = by_name(trace, "RLM.forward")
    assert root.attributes["rlm.stop_reason"] == "budget"
    assert root.attributes["rlm.budget.stopped_by"] == "iterations"
    (second,) = by_name(trace, "iteration 2")
    (event,) = [e for e in second.events if e.name == "budget_stop"]
    assert event.attributes["stopped_by"] == "iterations" and "limit 2" in event.attributes["reason"]
    assert second.attributes["rlm.stop.by"] == ["rlm_events.builtins.budget.Budget"]


def stop_after_first(ctx: Any, next: Any) -> Any:
    ctx = next(ctx)
    ctx.stop = True
    return ctx


def test_a_middleware_stop_names_the_middleware(make_rlm, experiment):
    rlm, lm = make_rlm(["print('working')"], extract={"answer": "early"})
    events = rlm_events.instrument(rlm)
    events.use(Stage.POST_ITERATION, stop_after_first)
    MlflowTap().install(events)

    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "early"

    trace = only_trace(experiment)
    assert tree(trace) == ("RLM.forward", (iteration(1), ("extract", ())))
    (root,) = by_name(trace, "RLM.forward")
    assert root.attributes["rlm.stop_reason"] == "middleware"
    assert root.attributes["rlm.stop.by"] == [f"{__name__}.stop_after_first"]


def rewrite(ctx: Any, next: Any) -> Any:
    ctx.code = ctx.code.replace("6 * 7", "6 * 7 * 1")
    return next(ctx)


def shout(ctx: Any, next: Any) -> Any:
    ctx = next(ctx)
    if isinstance(ctx.result, str):
        ctx.result = ctx.result.upper()
    return ctx


def test_guard_refusals_and_the_middleware_that_changed_code_or_result_are_named(make_rlm, experiment):
    steps = ["x = 6 * 7\nprint('x is', x)", "import subprocess\nsubprocess.run(['ls'])", "SUBMIT(answer=str(x))"]
    rlm, lm = make_rlm(steps)
    events = rlm_events.instrument(rlm)
    CodeGuard().install(events)
    events.use(Stage.PRE_EXECUTION, rewrite)
    MlflowTap().install(events)
    events.use(Stage.POST_EXECUTION, shout)  # registered after the tap: named all the same

    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "42"

    trace = only_trace(experiment)
    assert tree(trace) == ("RLM.forward", (iteration(1), iteration(2), iteration(3)))
    first, refused, _ = by_name(trace, "execute_code")
    assert by_name(trace, "generate_action")[0].outputs["code"] == steps[0]  # as the LM wrote it
    assert first.inputs["code"] == "x = 6 * 7 * 1\nprint('x is', x)"  # as it ran
    assert first.attributes["rlm.code.changed_by"] == [f"{__name__}.rewrite"]
    assert first.attributes["rlm.result.changed_by"] == [f"{__name__}.shout"]
    assert first.outputs["output"] == "X IS 42"
    changed = [(e.attributes["middleware"], e.attributes["fields"]) for e in first.events]
    assert changed == [(f"{__name__}.rewrite", ["code"]), (f"{__name__}.shout", ["result"])]

    assert refused.attributes["rlm.skipped"] is True
    assert refused.attributes["rlm.result.changed_by"] == ["rlm_events.guard.CodeGuard", f"{__name__}.shout"]
    (refusal,) = [e for e in refused.events if e.name == "guard_refusal"]
    assert refusal.attributes["rlm.iteration"] == 1 and "subprocess" in refusal.attributes["code"]
    assert any("subprocess" in v for v in refusal.attributes["violations"])
    (root,) = by_name(trace, "RLM.forward")
    assert root.attributes["rlm.guard.refusals"] == 1


def boom(ctx: Any, next: Any) -> Any:
    raise RuntimeError("boom")


@pytest.mark.parametrize("with_autolog", [False, True], ids=["tap", "autolog"])
def test_a_failed_call_ends_every_span_with_error(make_rlm, experiment, with_autolog, request):
    if with_autolog:
        request.getfixturevalue("autolog")
    rlm, lm = make_rlm(STEPS)
    events = rlm_events.instrument(rlm)
    events.use(Stage.POST_EXECUTION, boom)
    tap = MlflowTap().install(events)

    with dspy.context(lm=lm), pytest.raises(RuntimeError, match="boom"):
        rlm(text="t")

    trace = only_trace(experiment)
    assert tree(trace, keep=ours) == (
        "RLM.forward",
        (("iteration 1", (("generate_action", ()), ("execute_code", ()))),),
    )
    (root,) = by_name(trace, "RLM.forward")
    assert root.attributes["rlm.stop_reason"] == "error" and root.status.status_code == "ERROR"
    assert any(e.name == "exception" and e.attributes["exception.message"] == "boom" for e in root.events)
    assert by_name(trace, "iteration 1")[0].status.status_code == "ERROR"
    assert all(s.end_time_ns is not None for s in trace.data.spans)
    # nothing stays current after the failed call, and nothing of it stays with the tap
    assert mlflow.get_current_active_span() is None
    assert len(tap._forest) == 0


def test_a_failing_tool_gets_an_error_span_and_the_run_goes_on(make_rlm, experiment):
    def lookup(key: str) -> str:
        raise ValueError(f"no such key: {key}")

    rlm, lm = make_rlm(["print(lookup(key='k'))", "SUBMIT(answer='done')"], tools=[lookup])
    MlflowTap().install(rlm_events.instrument(rlm))

    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "done"

    trace = only_trace(experiment)
    assert tree(trace) == ("RLM.forward", (iteration(1, tool="lookup"), iteration(2)))
    (tool,) = by_name(trace, "lookup")
    assert tool.status.status_code == "ERROR" and tool.inputs == {"key": "k"}
    assert by_name(trace, "RLM.forward")[0].status.status_code == "OK"


def test_capture_content_false_records_sizes_only(make_rlm, experiment):
    rlm, lm = make_rlm(STEPS, sub="hi!")
    MlflowTap(capture_content=False).install(rlm_events.instrument(rlm))

    with dspy.context(lm=lm):
        rlm(text="secret")

    trace = only_trace(experiment)
    assert by_name(trace, "RLM.forward")[0].inputs == {"text": 6}
    assert [s.inputs["code"] for s in by_name(trace, "execute_code")] == [len(c) for c in STEPS]
    assert "secret" not in str([s.to_dict() for s in trace.data.spans])


# -- robustness and registration --------------------------------------------------------------------------------


def test_a_failing_tap_never_breaks_the_call(make_rlm, experiment, monkeypatch, caplog):
    rlm, lm = make_rlm(STEPS, sub="hi!")
    tap = MlflowTap().install(rlm_events.instrument(rlm))

    start = tap._spans.start

    def broken(role: str, *args: Any, **kwargs: Any) -> Any:
        if role == "run":
            return start(role, *args, **kwargs)
        raise RuntimeError("tap bug")  # every span but the call's

    monkeypatch.setattr(tap._spans, "start", broken)
    caplog.set_level(logging.ERROR, logger="rlm_events.taps.mlflow")
    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "42"
    assert "MlflowTap failed at stage pre_iteration" in caplog.text
    assert "could not start the span of tool llm_query" in caplog.text
    assert mlflow.get_current_active_span() is None


def test_install_keeps_every_registration_in_order_and_uninstall_restores_them(make_rlm):
    rlm, _ = make_rlm(STEPS)
    events = rlm_events.instrument(rlm)
    guard, budget = CodeGuard(), Budget(max_iterations=3)
    guard.install(events)
    budget.install(events)
    events.use(Stage.PRE_EXECUTION, rewrite)
    before = {stage: list(events.plan.chains[stage]) for stage in Stage}

    tap = MlflowTap().install(events)
    after = {stage: list(events.plan.chains[stage]) for stage in Stage}
    ours = (tap._tool_middleware, tap._extract_middleware)
    for stage in Stage:  # every registration kept, in order, on its stages
        assert [mw for mw in after[stage] if not tap._witnesses.owns(mw) and mw not in ours] == before[stage]
    assert after[Stage.TOOL_CALL][0] is tap._tool_middleware and after[Stage.EXTRACT][0] is tap._extract_middleware
    assert [tap._witnesses.owns(mw) for mw in after[Stage.PRE_EXECUTION]] == [True, False, True, False, True]

    tap.uninstall(events)
    assert {stage: list(events.plan.chains[stage]) for stage in Stage} == before
    assert tap not in [t.fn for t in events.plan.all_taps]


def test_without_mlflow_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    with pytest.raises(ImportError, match=r"rlm-events\[mlflow\]"):
        MlflowTap()
    with pytest.raises(ValueError, match="max_chars"):
        monkeypatch.undo()
        MlflowTap(max_chars=0)


def test_the_root_reports_the_cost_an_unknown_cost_and_the_cache_saving(experiment):
    """Through the real LiteLLM client: rlm.cost_usd is the server's bill, absent (rlm.cost_known=false) for an
    unpriced model, never 0 then; a cached run reports rlm.cached_lm_calls and rlm.saved_cost_usd."""
    from conftest import REAL_INTERPRETER
    from dspy.clients.cache import Cache

    from rlm_events.testing import LocalOpenAIServer, build_rlm

    rlm = build_rlm("text -> answer", max_iters=4, interpreter_factory=REAL_INTERPRETER)
    MlflowTap().install(rlm_events.instrument(rlm))
    previous = dspy.cache
    dspy.cache = Cache(enable_disk_cache=False, enable_memory_cache=True, disk_cache_dir=None)
    try:
        with LocalOpenAIServer.scripted(STEPS, sub="hi", prices={"gpt-4o-mini": (0.15, 0.6)}) as server:
            for model, cache in (("any-model", False), ("gpt-4o-mini", True), ("gpt-4o-mini", True)):
                lm = dspy.LM(f"openai/{model}", api_base=server.base_url, api_key="x", cache=cache)
                with dspy.context(lm=lm):
                    rlm(text="t")
            bill = server.bill
    finally:
        dspy.cache = previous
    paid = sum(r.cost_usd or 0.0 for r in bill if r.model == "gpt-4o-mini")
    assert bill.calls == 8 and paid > 0  # the third run came from DSPy's cache
    roots = [by_name(t, "RLM.forward")[0] for t in sorted(traces(experiment), key=lambda t: t.info.request_time)]
    unpriced, priced, cached = (root.attributes for root in roots)
    assert "rlm.cost_usd" not in unpriced and unpriced["rlm.cost_known"] is False
    assert unpriced["rlm.unpriced_lm_calls"] == unpriced["rlm.lm_calls"] == 4
    assert priced["rlm.cost_usd"] == pytest.approx(paid, rel=1e-6) and "rlm.cached_lm_calls" not in priced
    assert cached["rlm.cost_usd"] == 0.0 and cached["rlm.cached_lm_calls"] == 4
    assert cached["rlm.saved_cost_usd"] == pytest.approx(paid, rel=1e-6)
