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


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_a_budget_stop_is_named_and_explained_after_dspys_line(make_rlm, tmp_path, caplog, use_async):
    rlm, lm = make_rlm(["print(1)"], max_iters=20, extract={"answer": "x"})
    Budget(max_iterations=3).install(rlm_events.instrument(rlm))
    with caplog.at_level(logging.WARNING):
        ends, records = ended(rlm, lm, tmp_path, use_async=use_async)
    assert ends[0].stop_reason == records[-1]["stop_reason"] == "budget" and ends[0].iterations == 3
    stops = [r for r in records if r["stage"] == "post_iteration" and r["stop"]]
    assert [(r["iteration"], r["stop_reason"]) for r in stops] == [(2, "budget")]
    messages = [r.getMessage() for r in caplog.records]
    ours = [i for i, m in enumerate(messages) if "was stopped by a budget after iteration 3 of 20" in m]
    assert len(ours) == 1
    dspys = [i for i, m in enumerate(messages) if "reached max iterations" in m and "rlm-events" not in m]
    assert all(i < ours[0] for i in dspys), messages  # right after DSPy's own line (when DSPy logs it)


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
