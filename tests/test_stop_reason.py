"""Why a run ended, said the same way everywhere: ``RunEndContext.stop_reason``, the JSONL trace and the logs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage
from rlm_events.builtins import Budget
from rlm_events.trace import JsonlTrace

_COUNT = itertools.count()


def ended(rlm: dspy.RLM, lm: Any, tmp_path: Path, *, use_async: bool = False) -> tuple[list[Any], list[dict]]:
    events = rlm_events.instrumentation_of(rlm) or rlm_events.instrument(rlm)
    ends: list[Any] = []
    events.tap([Stage.RUN_END], ends.append)
    path = tmp_path / f"trace-{next(_COUNT)}.jsonl"
    with JsonlTrace(path) as trace:
        trace.install(events)
        with dspy.context(lm=lm), contextlib.suppress(RuntimeError):
            asyncio.run(rlm.acall(text="t")) if use_async else rlm(text="t")
    return ends, [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_submit_and_max_iters(make_rlm, tmp_path, use_async):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"])
    ends, records = ended(rlm, lm, tmp_path, use_async=use_async)
    assert ends[0].stop_reason == records[-1]["stop_reason"] == "submit"

    rlm, lm = make_rlm(["print(1)"], max_iters=2, extract={"answer": "x"})
    ends, records = ended(rlm, lm, tmp_path, use_async=use_async)
    assert ends[0].stop_reason == records[-1]["stop_reason"] == "max_iters"
    assert [r.get("stop_reason") for r in records if r["stage"] == "post_iteration"] == [None, None]


def stop_lines(caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    """The WARNING lines about the end of a run: rlm-events' stop lines, DSPy's "reached max iterations" lines."""
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    ours = [r.getMessage() for r in warnings if r.name == "rlm_events" and "stopped the run" in r.getMessage()]
    dspys = [r.getMessage() for r in warnings if "reached max iterations" in r.getMessage()]
    return ours, dspys


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_budget_stop_logs_one_line_saying_who_stopped_it(make_rlm, tmp_path, caplog, use_async):
    rlm, lm = make_rlm(["print(1)"], max_iters=20, extract={"answer": "x"})
    Budget(max_iterations=3).install(rlm_events.instrument(rlm))
    with caplog.at_level(logging.WARNING):
        ends, records = ended(rlm, lm, tmp_path, use_async=use_async)
    assert ends[0].stop_reason == records[-1]["stop_reason"] == "budget" and ends[0].iterations == 3
    assert ends[0].prediction.answer == "x" and ends[0].forced_extract  # the extract fallback still answered
    stops = [r for r in records if r["stage"] == "post_iteration" and r["stop"]]
    assert [(r["iteration"], r["stop_reason"]) for r in stops] == [(2, "budget")]
    ours, dspys = stop_lines(caplog)
    assert ours == [
        "rlm-events: a Budget (iterations: 3 spent, limit 3) stopped the run after iteration 3 of 20; "
        "the extract fallback gives the answer"
    ]
    assert dspys == []  # DSPy's "reached max iterations" is not said of a stop


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_the_iteration_limit_keeps_dspys_own_line_and_no_stop_line(make_rlm, tmp_path, caplog, use_async):
    rlm, lm = make_rlm(["print(1)"], max_iters=2, extract={"answer": "x"})
    with caplog.at_level(logging.WARNING):
        ends, _ = ended(rlm, lm, tmp_path, use_async=use_async)
    assert ends[0].stop_reason == "max_iters" and ends[0].prediction.answer == "x"
    ours, dspys = stop_lines(caplog)
    assert ours == [] and len(dspys) == 1


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_middleware_stop_logs_one_line_with_its_reason_even_when_extract_middleware_answers(
    make_rlm, tmp_path, caplog, use_async
):
    rlm, lm = make_rlm(["print(1)"], max_iters=5, extract={"answer": "x"})
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.POST_ITERATION)
    def converged(ctx, next):
        ctx = next(ctx)
        ctx.stop, ctx.stop_reason = ctx.iteration == 1, "converged"
        return ctx

    with caplog.at_level(logging.WARNING):
        ended(rlm, lm, tmp_path, use_async=use_async)
    ours, dspys = stop_lines(caplog)
    assert ours == [
        "rlm-events: a post_iteration middleware (stop_reason 'converged') stopped the run after iteration 2 of 5; "
        "the extract fallback gives the answer"
    ]
    assert dspys == []

    @events.middleware(Stage.EXTRACT)
    def own_answer(ctx, next):
        ctx.prediction = dspy.Prediction(answer="mine")
        return ctx

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ends, _ = ended(rlm, lm, tmp_path, use_async=use_async)
    assert ends[-1].prediction.answer == "mine"
    ours, dspys = stop_lines(caplog)
    assert len(ours) == 1 and dspys == []


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_the_quiet_extract_gives_what_dspys_extract_fallback_gives(make_rlm, use_async):
    """A stop runs DSPy's extraction without its log line (rlm_events._patch.extract): on this DSPy release, both
    give the same prediction from the same history, with the same call to the extract predictor."""
    from dspy.primitives.repl_types import REPLHistory

    from rlm_events._patch.extract import aextract_quietly, extract_quietly

    rlm, _ = make_rlm(["print(1)"])
    history = REPLHistory().append(reasoning="look", code="print(1)", output="1")
    variables = rlm._build_variables(text="t")
    got = []
    for fallback, quiet in (
        (dspy.RLM._extract_fallback, extract_quietly),
        (dspy.RLM._aextract_fallback, aextract_quietly),
    ):
        for fn in (fallback, quiet):
            lm = dspy.utils.DummyLM([{"answer": "x"}])
            with dspy.context(lm=lm):
                result = fn(rlm, variables, history, ["answer"])
                result = asyncio.run(result) if asyncio.iscoroutine(result) else result
            got.append((dict(result), [m["messages"] for m in lm.history]))
    assert got[0] == got[1] and got[2] == got[3]
    assert got[0][0]["answer"] == "x" and got[0][0]["trajectory"] == [e.model_dump() for e in history]


def test_a_middleware_stop_and_its_own_reason(make_rlm, tmp_path):
    rlm, lm = make_rlm(["print(1)"], max_iters=5, extract={"answer": "x"})
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.POST_ITERATION)
    def enough(ctx, next):
        ctx = next(ctx)
        ctx.stop = ctx.iteration == 1
        return ctx

    ends, records = ended(rlm, lm, tmp_path)
    assert ends[0].stop_reason == records[-1]["stop_reason"] == "middleware"

    events.remove(Stage.POST_ITERATION, enough)

    @events.middleware(Stage.POST_ITERATION)
    def converged(ctx, next):
        ctx.stop, ctx.stop_reason = True, "converged"
        return next(ctx)

    ends, records = ended(rlm, lm, tmp_path)
    assert ends[-1].stop_reason == "converged"


def test_an_error(make_rlm, tmp_path):
    rlm, lm = make_rlm(["print(1)"])
    events = rlm_events.instrument(rlm)

    @events.middleware(Stage.PRE_EXECUTION)
    def boom(ctx, next):
        raise RuntimeError("no")

    ends, records = ended(rlm, lm, tmp_path)
    assert ends[0].stop_reason == records[-1]["stop_reason"] == "error"
