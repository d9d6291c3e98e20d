"""The logging, OpenTelemetry and stage-timing taps, on real dspy.RLM loops (LocalInterpreter, ScriptedLM)."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from collections import Counter
from typing import Any

import dspy
import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import rlm_events
from rlm_events import Stage
from rlm_events.taps.logs import LoggingTap
from rlm_events.taps.otel import OpenTelemetryTap
from rlm_events.taps.timings import StageTimings, percentile
from rlm_events.testing import ScriptedLM

MODEL = "openai/gpt-4o-mini"
STEPS = [
    "x = 6 * 7\nprint(x)",
    "print(llm_query('say hi'))",
    "SUBMIT(answer=str(x))",
]


def run_ids_of(events: rlm_events.Instrumentation) -> list[str]:
    """Collect the run id of every call (a tap of our own, independent of the taps under test)."""
    ids: list[str] = []
    events.tap([Stage.RUN_START], lambda ctx: ids.append(ctx.run.id), inline=True)
    return ids


def usage(entries: list[dict[str, Any]]) -> tuple[int, int]:
    return (
        sum(e["usage"]["prompt_tokens"] for e in entries),
        sum(e["usage"]["completion_tokens"] for e in entries),
    )


def boom(ctx: Any, next: Any) -> Any:
    raise RuntimeError("boom")


# -- logging ----------------------------------------------------------------------------------------------------


def test_logging_tap_logs_each_stage_with_the_run_id_at_the_right_level(make_rlm, caplog):
    rlm, lm = make_rlm(STEPS, sub="hi!")
    events = rlm_events.instrument(rlm)
    ids = run_ids_of(events)
    LoggingTap().install(events)
    caplog.set_level(logging.DEBUG, logger="rlm_events.runs")

    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "42"

    rlm_events.flush()  # queued taps: wait for their snapshots
    records = [r for r in caplog.records if r.name == "rlm_events.runs"]
    (run_id,) = ids
    for record in records:
        assert record.rlm_run_id == run_id  # type: ignore[attr-defined]
        assert run_id in record.getMessage()
    info = [r for r in records if r.levelno == logging.INFO]
    debug = [r for r in records if r.levelno == logging.DEBUG]
    assert [r.rlm_stage for r in info] == [  # type: ignore[attr-defined]
        "run_start",
        "post_iteration",
        "tool_call",
        "post_iteration",
        "post_iteration",
        "run_end",
    ]
    assert "started: RLM(text -> answer), inputs: text" in info[0].getMessage()
    assert "iteration 2/6 tool llm_query('say hi') -> 'hi!'" in info[2].getMessage()
    assert "submitted the answer" in info[4].getMessage()
    assert "finished in" in info[-1].getMessage() and "after 3 iterations" in info[-1].getMessage()
    assert [r.rlm_iteration for r in info] == [None, 0, 1, 1, 2, None]  # type: ignore[attr-defined]
    # code and results only at DEBUG
    codes = [r.getMessage() for r in debug if r.rlm_stage == "pre_execution"]  # type: ignore[attr-defined]
    assert [c.split("code:\n", 1)[1] for c in codes] == STEPS
    results = [r.getMessage() for r in debug if r.rlm_stage == "post_execution"]  # type: ignore[attr-defined]
    assert results[0].endswith("result:\n42") and results[1].endswith("result:\nhi!")
    assert not any("x = 6 * 7" in r.getMessage() for r in info)


def test_logging_tap_uses_the_given_logger_and_level_and_logs_failures_at_error(make_rlm, caplog):
    rlm, lm = make_rlm(STEPS)
    events = rlm_events.instrument(rlm)
    events.use(Stage.POST_EXECUTION, boom)
    LoggingTap(logging.getLogger("my.app"), level=logging.WARNING).install(events)
    caplog.set_level(logging.WARNING, logger="my.app")

    with dspy.context(lm=lm), pytest.raises(RuntimeError, match="boom"):
        rlm(text="t")

    rlm_events.flush()  # queued taps: wait for their snapshots
    records = [r for r in caplog.records if r.name == "my.app"]
    assert [(r.levelno, r.rlm_stage) for r in records] == [  # type: ignore[attr-defined]
        (logging.WARNING, "run_start"),
        (logging.ERROR, "run_end"),
    ]
    assert "failed after" in records[1].getMessage() and "RuntimeError: boom" in records[1].getMessage()


def test_logging_tap_keeps_concurrent_runs_apart(make_rlm, caplog):
    rlm, lm = make_rlm(STEPS, sub="hi!")
    events = rlm_events.instrument(rlm)
    ids = run_ids_of(events)
    LoggingTap().install(events)
    caplog.set_level(logging.INFO, logger="rlm_events.runs")

    async def main() -> None:
        with dspy.context(lm=lm):
            await asyncio.gather(*(rlm.acall(text=f"t{i}") for i in range(3)))

    asyncio.run(main())
    rlm_events.flush()  # LoggingTap is queued
    per_run = Counter(r.rlm_run_id for r in caplog.records if r.name == "rlm_events.runs")  # type: ignore[attr-defined]
    assert sorted(per_run) == sorted(ids) and len(ids) == 3
    assert set(per_run.values()) == {6}  # start, 3 iterations, 1 tool call, end: each run its own


def test_logging_tap_rejects_bad_arguments():
    with pytest.raises(TypeError, match="logging level"):
        LoggingTap(level="INFO")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_chars"):
        LoggingTap(max_chars=0)


# -- OpenTelemetry ----------------------------------------------------------------------------------------------


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()  # passed in: the global provider stays untouched
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def iteration_spans(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> list[ReadableSpan]:
    found = [s for s in spans if s.name.startswith("iteration ")]
    return sorted(found, key=lambda s: s.attributes["rlm.iteration"])


def otel_tree(spans: tuple[ReadableSpan, ...] | list[ReadableSpan], root: ReadableSpan) -> tuple[Any, ...]:
    """``(name, (children...))`` under ``root``, children by start time: the shape MlflowTap's traces have."""
    below = sorted((s for s in spans if parent_id(s) == span_id(root)), key=lambda s: s.start_time)
    return (root.name, tuple(otel_tree(spans, child) for child in below))


def test_otel_span_tree_attributes_and_usage(make_rlm, exporter, provider):
    rlm, lm = make_rlm(STEPS, sub="hi!", model=MODEL, cost_per_1k_tokens=0.5)
    events = rlm_events.instrument(rlm)
    ids = run_ids_of(events)
    OpenTelemetryTap(provider).install(events)

    with dspy.context(lm=lm):
        rlm(text="t")

    spans = exporter.get_finished_spans()
    (run,) = by_name(spans, "invoke_agent RLM(text -> answer)")
    iterations = iteration_spans(spans)
    (tool,) = by_name(spans, "execute_tool llm_query")
    executions = sorted(by_name(spans, "execute_code"), key=lambda s: s.start_time)
    assert len(spans) == 11
    assert run.parent is None
    assert otel_tree(spans, run) == (
        "invoke_agent RLM(text -> answer)",
        (
            ("iteration 1", (("generate_action", ()), ("execute_code", ()))),
            ("iteration 2", (("generate_action", ()), ("execute_code", (("execute_tool llm_query", ()),)))),
            ("iteration 3", (("generate_action", ()), ("execute_code", ()))),
        ),
    )
    for child in spans:
        if child is not run:
            assert run.start_time <= child.start_time <= child.end_time <= run.end_time

    a = run.attributes
    assert a["gen_ai.operation.name"] == "invoke_agent"
    assert a["gen_ai.agent.name"] == "RLM(text -> answer)"
    assert a["gen_ai.request.model"] == MODEL
    assert a["gen_ai.provider.name"] == a["gen_ai.system"] == "openai"
    assert a["rlm.run.id"] == ids[0] and a["rlm.iterations"] == 3 and a["rlm.forced_extract"] is False
    assert a["rlm.stop_reason"] == "submit"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == usage(lm.history)
    assert a["rlm.cost_usd"] == pytest.approx(sum(e["cost"] for e in lm.history))
    assert run.status.status_code is StatusCode.UNSET

    # iteration 2 used the action call and the llm_query call; the others one action call each
    action, second, sub, third = lm.history
    expected = [usage([action]), usage([second, sub]), usage([third])]
    assert [
        (s.attributes["gen_ai.usage.input_tokens"], s.attributes["gen_ai.usage.output_tokens"]) for s in iterations
    ] == expected
    actions = sorted(by_name(spans, "generate_action"), key=lambda s: s.start_time)
    assert [
        (s.attributes["gen_ai.usage.input_tokens"], s.attributes["gen_ai.usage.output_tokens"]) for s in actions
    ] == [usage([action]), usage([second]), usage([third])]
    assert {s.attributes["gen_ai.request.model"] for s in actions} == {MODEL}
    assert executions[1].attributes.get("gen_ai.usage.output_tokens") == usage([sub])[1]  # the llm_query call
    assert [s.attributes["rlm.code.length"] for s in executions] == [len(c) for c in STEPS]
    assert [s.attributes["rlm.submitted"] for s in iterations] == [False, False, True]
    assert "rlm.code" not in executions[0].attributes  # content is opt-in

    t = tool.attributes
    assert (t["gen_ai.operation.name"], t["gen_ai.tool.name"], t["rlm.iteration"]) == ("execute_tool", "llm_query", 1)


def test_otel_captures_content_and_the_extract_fallback(make_rlm, exporter, provider):
    rlm, lm = make_rlm(["print('working')"], max_iters=2, extract={"answer": "late"})
    events = rlm_events.instrument(rlm)
    OpenTelemetryTap(provider, capture_content=True).install(events)

    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "late"

    spans = exporter.get_finished_spans()
    (run,) = by_name(spans, "invoke_agent RLM(text -> answer)")
    (extract,) = by_name(spans, "extract")
    iterations = iteration_spans(spans)
    executions = by_name(spans, "execute_code")
    assert run.attributes["rlm.forced_extract"] is True and "gen_ai.provider.name" not in run.attributes
    assert run.attributes["rlm.stop_reason"] == "max_iters"
    assert parent_id(extract) == span_id(run)
    assert max(s.end_time for s in iterations) <= extract.start_time
    assert extract.attributes["gen_ai.usage.input_tokens"] == usage([lm.history[-1]])[0]
    assert run.attributes["gen_ai.usage.input_tokens"] == usage(lm.history)[0]
    assert {s.attributes["rlm.code"] for s in executions} == {"print('working')"}
    assert {s.attributes["rlm.output"] for s in executions} == {"working"}
    assert "late" in extract.attributes["rlm.output"]


def test_otel_failed_run_ends_every_span_with_error_status(make_rlm, exporter, provider):
    rlm, lm = make_rlm(STEPS)
    events = rlm_events.instrument(rlm)
    OpenTelemetryTap(provider).install(events)
    events.use(Stage.POST_EXECUTION, boom)  # fails inside iteration 1

    with dspy.context(lm=lm), pytest.raises(RuntimeError, match="boom"):
        rlm(text="t")

    spans = exporter.get_finished_spans()
    (run,) = by_name(spans, "invoke_agent RLM(text -> answer)")
    (iteration,) = iteration_spans(spans)  # left open by the failure, ended by run_end
    (execution,) = by_name(spans, "execute_code")
    for span in (run, iteration, execution):
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "RuntimeError"
    assert run.attributes["rlm.stop_reason"] == "error"
    assert run.status.description == "RuntimeError: boom"
    (event,) = run.events
    assert event.name == "exception" and event.attributes["exception.message"] == "boom"


def test_otel_a_call_leaves_nothing_behind_whatever_happened(make_rlm, exporter, provider):
    """Failed or not, a call ends every span it started, restores the caller's current span and leaves no
    per-call state in the tap."""
    from opentelemetry import trace

    rlm, lm = make_rlm(STEPS * 2, sub="hi!")
    events = rlm_events.instrument(rlm)
    tap = OpenTelemetryTap(provider).install(events)
    fail = threading.Event()
    events.use(Stage.POST_EXECUTION, lambda ctx, next: boom(ctx, next) if fail.is_set() else next(ctx))
    started: list[Any] = []

    class Started(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            started.append(span)

    provider.add_span_processor(Started())

    with provider.get_tracer("test").start_as_current_span("caller") as caller, dspy.context(lm=lm):
        assert rlm(text="t").answer == "42"
        fail.set()
        with pytest.raises(RuntimeError, match="boom"):
            rlm(text="t")
        assert trace.get_current_span() is caller

    assert len(tap._forest) == 0
    ended = {span_id(s) for s in exporter.get_finished_spans()}
    assert started and {s.context.span_id for s in started} <= ended


def test_otel_failing_tool_gets_an_error_span_and_the_run_goes_on(make_rlm, exporter, provider):
    def lookup(key: str) -> str:
        raise ValueError(f"no such key: {key}")

    rlm, lm = make_rlm(["print(lookup(key='k'))", "SUBMIT(answer='done')"], tools=[lookup])
    events = rlm_events.instrument(rlm)
    OpenTelemetryTap(provider).install(events)

    with dspy.context(lm=lm):
        result = rlm(text="t")

    assert result.answer == "done" and "no such key: k" in result.trajectory[0]["output"]
    spans = exporter.get_finished_spans()
    (tool,) = by_name(spans, "execute_tool lookup")
    (run,) = by_name(spans, "invoke_agent RLM(text -> answer)")
    assert tool.status.status_code is StatusCode.ERROR and tool.attributes["error.type"] == "ValueError"
    assert run.status.status_code is StatusCode.UNSET


def check_tree(spans: tuple[ReadableSpan, ...], parent: ReadableSpan, run_id: str, iterations: int) -> None:
    """The spans of ``run_id`` form one tree under ``parent``: run -> iterations -> execute_code -> tool calls."""
    mine = [s for s in spans if s.attributes.get("rlm.run.id") == run_id]
    (run,) = [s for s in mine if s.name.startswith("invoke_agent")]
    its = {s.attributes["rlm.iteration"]: s for s in mine if s.name.startswith("iteration ")}
    executions = {s.attributes["rlm.iteration"]: s for s in mine if s.name == "execute_code"}
    tools = [s for s in mine if s.name.startswith("execute_tool")]
    assert parent_id(run) == span_id(parent)
    assert run.context.trace_id == parent.context.trace_id
    assert sorted(its) == list(range(iterations))
    assert all(parent_id(s) == span_id(run) for s in its.values())
    assert all(parent_id(s) == span_id(its[i]) for i, s in executions.items())
    assert tools and all(parent_id(t) == span_id(executions[t.attributes["rlm.iteration"]]) for t in tools)
    assert {s.context.trace_id for s in mine} == {parent.context.trace_id}


def test_otel_concurrent_async_runs_get_separate_correctly_parented_trees(make_rlm, exporter, provider):
    rlm, lm = make_rlm(STEPS, sub="hi!")
    events = rlm_events.instrument(rlm)
    ids: dict[str, str] = {}
    events.tap([Stage.RUN_START], lambda ctx: ids.__setitem__(ctx.input_args["text"], ctx.run.id), inline=True)
    OpenTelemetryTap(provider).install(events)
    tracer = provider.get_tracer("test")

    async def request(i: int) -> None:
        with tracer.start_as_current_span(f"request {i}"):
            await rlm.acall(text=f"t{i}")

    async def main() -> None:
        with dspy.context(lm=lm):  # one LM shared by all: each call's LM calls are still its own
            await asyncio.gather(*(request(i) for i in range(4)))

    asyncio.run(main())
    spans = exporter.get_finished_spans()
    for i in range(4):
        (parent,) = by_name(spans, f"request {i}")
        check_tree(spans, parent, ids[f"t{i}"], iterations=3)
    runs = [s for s in spans if s.name.startswith("invoke_agent")]
    assert len(runs) == 4 and len({s.context.trace_id for s in runs}) == 4
    per_run = [(s.attributes["gen_ai.usage.input_tokens"], s.attributes["gen_ai.usage.output_tokens"]) for s in runs]
    assert len(set(per_run)) == 1 and per_run[0][0] > 0  # the same script: the same usage, attributed exactly
    assert tuple(map(sum, zip(*per_run, strict=True))) == usage(lm.history)  # nothing counted twice or lost


def test_otel_concurrent_threaded_runs_with_their_own_lms_report_their_own_usage(make_rlm, exporter, provider):
    rlm, lm = make_rlm(STEPS, sub="hi!")
    events = rlm_events.instrument(rlm)
    OpenTelemetryTap(provider).install(events)
    tracer = provider.get_tracer("test")
    lms = {i: lm.copy() for i in range(3)}

    def request(i: int) -> None:
        with tracer.start_as_current_span(f"request {i}"), dspy.context(lm=lms[i]):
            rlm(text="x" * (100 * i))  # different prompt sizes: different usage per call

    threads = [threading.Thread(target=request, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    spans = exporter.get_finished_spans()
    for i in range(3):
        (parent,) = by_name(spans, f"request {i}")
        (run,) = [s for s in spans if parent_id(s) == span_id(parent)]
        check_tree(spans, parent, run.attributes["rlm.run.id"], iterations=3)
        assert (run.attributes["gen_ai.usage.input_tokens"], run.attributes["gen_ai.usage.output_tokens"]) == usage(
            lms[i].history
        )


def test_otel_spans_are_current_so_other_instrumentation_nests_in_the_loop(make_rlm, exporter, provider):
    """An instrumented LM client's spans land under generate_action, the tool that called it, and extract."""
    tracer = provider.get_tracer("an instrumented LM client")

    class TracedLM(ScriptedLM):
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            with tracer.start_as_current_span("chat scripted"):
                return super().forward(*args, **kwargs)

    rlm, _ = make_rlm(STEPS, max_iters=2)
    lm = TracedLM(["print(llm_query('say hi'))", "print('more')"], sub="hi!", extract={"answer": "x"})
    events = rlm_events.instrument(rlm)
    OpenTelemetryTap(provider).install(events)

    with dspy.context(lm=lm):
        rlm(text="t")

    spans = exporter.get_finished_spans()
    (run,) = by_name(spans, "invoke_agent RLM(text -> answer)")
    lm_call = ("chat scripted", ())
    assert otel_tree(spans, run)[1] == (
        ("iteration 1", (("generate_action", (lm_call,)), ("execute_code", (("execute_tool llm_query", (lm_call,)),)))),
        ("iteration 2", (("generate_action", (lm_call,)), ("execute_code", ()))),
        ("extract", (lm_call,)),
    )


def test_otel_without_opentelemetry_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # makes `import opentelemetry` fail
    with pytest.raises(ImportError, match=r"rlm-events\[otel\]"):
        OpenTelemetryTap()


# -- stage timings ----------------------------------------------------------------------------------------------


def test_timings_count_every_event_and_add_up(make_rlm):
    rlm, lm = make_rlm(STEPS, sub="hi!")
    events = rlm_events.instrument(rlm)
    seen: Counter[str] = Counter()
    ids = run_ids_of(events)
    events.tap(lambda ctx: seen.update([ctx.stage.value]))
    timings = StageTimings().install(events)

    started = time.perf_counter()
    with dspy.context(lm=lm):
        rlm(text="t")
    call = time.perf_counter() - started

    rlm_events.flush()  # queued taps: wait for their snapshots
    stats = timings.for_run(ids[0]).stats()
    assert {stage.value: s.count for stage, s in stats.items()} == dict(seen)
    assert list(stats) == [s for s in Stage if s.value in seen]  # stage order
    for s in stats.values():
        assert 0 <= s.p50_s <= s.p95_s <= s.max_s <= s.total_s
    loop = sum(s.total_s for stage, s in stats.items() if stage not in (Stage.RUN_END, Stage.TOOL_CALL))
    assert 0 < loop <= call and 0 < stats[Stage.RUN_END].total_s <= call  # all measured inside the call
    assert stats[Stage.TOOL_CALL].total_s <= stats[Stage.PRE_EXECUTION].total_s  # tool calls run inside it


def test_timings_across_concurrent_runs_per_run_table_and_export(make_rlm):
    rlm, lm = make_rlm(STEPS, sub="hi!")
    events = rlm_events.instrument(rlm)
    ids = run_ids_of(events)
    timings = StageTimings().install(events)

    def call() -> None:
        with dspy.context(lm=lm):
            rlm(text="t")

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(timings.run_ids) == sorted(ids)
    overall = timings.stats()
    assert overall[Stage.PRE_ITERATION].count == 9 and overall[Stage.RUN_END].count == 3
    assert overall[Stage.TOOL_CALL].count == 3
    for run_id in ids:
        assert timings.for_run(run_id).stats()[Stage.POST_ITERATION].count == 3
    exported = json.loads(json.dumps(timings.to_dict()))
    assert exported["runs"] == 3
    assert exported["stages"]["pre_execution"]["count"] == 9
    assert set(exported["stages"]["run_end"]) == {"count", "total_s", "p50_s", "p95_s", "max_s"}
    lines = timings.table().splitlines()
    assert lines[0].split()[:3] == ["stage", "count", "total"]
    assert [line.split()[:2] for line in lines[1:]] == [[s.value, str(overall[s].count)] for s in overall]
    with pytest.raises(KeyError, match="no timings for run 'nope'"):
        timings.for_run("nope")


def test_timings_keep_only_the_latest_runs(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='a')"])
    events = rlm_events.instrument(rlm)
    ids = run_ids_of(events)
    timings = StageTimings(max_runs=2).install(events)
    with dspy.context(lm=lm):
        for _ in range(3):
            rlm(text="t")
    assert timings.run_ids == ids[1:]
    assert timings.stats()[Stage.RUN_END].count == 2
    timings.reset()
    assert timings.stats() == {} and "runs=0" in repr(timings)


def test_percentile_interpolates_between_closest_ranks():
    assert percentile([5.0], 95) == 5.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([float(i) for i in range(1, 21)], 95) == pytest.approx(19.05)
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError, match="max_runs"):
        StageTimings(max_runs=0)
