"""The overhead benchmark's memory and stage-dispatch measurements (see ``benchmarks/overhead.py``)."""

from __future__ import annotations

import gc
import resource
import timeit
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import overhead_configs as configs
from dspy.primitives.repl_types import REPLHistory

import rlm_events
from rlm_events import PreExecutionContext, Run, Stage, StageContext, snapshot
from rlm_events.context import construct
from rlm_events.signals import BY_STAGE
from rlm_events.testing import InProcessInterpreter

# -- memory ------------------------------------------------------------------------------------------------------


def census() -> dict[str, int]:
    """What is alive, once the tap snapshots queued so far were delivered (waiting for delivery is not a leak)."""
    rlm_events.flush(timeout=30)
    gc.collect()
    alive = gc.get_objects()
    return {
        # By type: isinstance() with a pydantic model class asks every object for an attribute in pydantic 2.10 and
        # earlier, and some objects (diskcache's FanoutCache) raise for names they do not know.
        "contexts": sum(1 for o in alive if issubclass(type(o), StageContext)),
        "runs": sum(1 for o in alive if issubclass(type(o), Run)),
        "receivers": sum(len(s.receivers) for s in BY_STAGE.values()),
    }


def memory_benchmark(
    make_rlm: configs.MakeRLM, *, runs: int, iterations: int, warmup: int, tmp: Path
) -> dict[str, Any]:
    """``tracemalloc`` growth and peak over ``runs`` short calls, bare and with middleware, receivers and a tap on
    every stage; then what is left alive once the instrumented RLM is uninstrumented and dropped."""
    before = census()
    results: dict[str, Any] = {"runs": runs, "iterations": iterations}
    for key, apply in (("bare", configs.bare), ("busy_tapped", lambda r, t: configs.busy(r, t, taps=1))):
        rlm, lm = make_rlm(configs.script(iterations), **configs.workload(iterations, InProcessInterpreter))
        setup = apply(rlm, tmp)
        for _ in range(warmup):  # caches, interned strings, pydantic schemas: allocated once, not growth
            configs.checked_call(rlm, lm, setup, iterations)
        gc.collect()
        tracemalloc.start()
        try:
            for _ in range(runs):
                configs.checked_call(rlm, lm, setup, iterations)
            gc.collect()
            growth, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        during = census()
        setup.teardown()
        rlm_events.uninstrument(rlm)
        del rlm, lm, setup
        results[key] = {
            "growth_bytes": growth,
            "peak_bytes": peak,
            "contexts_alive_between_calls": during["contexts"] - before["contexts"],
            "runs_alive_between_calls": during["runs"] - before["runs"],
        }
    after = census()
    results["left_after_teardown"] = {k: after[k] - before[k] for k in after}
    results["max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return results


# -- stage dispatch ----------------------------------------------------------------------------------------------


def per_call_us(fn: Callable[[], Any], loops: int) -> float:
    return min(timeit.repeat(fn, number=loops, repeat=5)) / loops * 1e6


def dispatch_benchmark(make_rlm: configs.MakeRLM, *, loops: int) -> list[dict[str, Any]]:
    """What one stage seam costs when nothing is subscribed to its stage, and the parts of a subscribed one."""
    rlm, _ = make_rlm(configs.script(2), **configs.workload(2, InProcessInterpreter))
    events = rlm_events.instrument(rlm)
    events.use(Stage.RUN_END, configs.passthrough)  # the call is instrumented; pre_execution is idle
    idle = events.plan
    other, _ = make_rlm(configs.script(2), **configs.workload(2, InProcessInterpreter))
    busy = rlm_events.instrument(other)
    for _ in range(3):
        busy.use(Stage.PRE_EXECUTION, configs.passthrough)
    listeners = [lambda sender, ctx: None for _ in range(3)]
    run = Run.model_construct(id="bench", module=rlm, started_at=None, state={})
    history = REPLHistory()

    def context() -> PreExecutionContext:  # as the stage seams build one: every field given, in order
        fields = {"stage": Stage.PRE_EXECUTION, "iteration": 0, "input_args": {}, "run": run}
        return construct(
            PreExecutionContext, {**fields, "code": "x = 1", "reasoning": "", "history": history, "result": None}
        )

    ctx = context()
    stage = Stage.PRE_EXECUTION
    alone: list[tuple[str, Callable[[], Any], float | None]] = [
        ("idle stage seam: is anything subscribed? (plan.wants)", lambda: idle.wants(stage), 2.0),
        ("fire an idle stage anyway (plan.fire)", lambda: idle.fire(ctx, rlm), 2.0),
        ("call start: is the whole plan idle? (plan.idle)", lambda: idle.idle, None),
        ("build a stage context (as the seams do)", context, None),
        ("read-only snapshot for one tap", lambda: snapshot(ctx), None),
        ("fire: 3 pass-through middleware", lambda: busy.plan.fire(ctx, other), None),
    ]
    # With receivers in the process, even on another RLM, blinker has to look them up for every send.
    crowded: list[tuple[str, Callable[[], Any], float | None]] = [
        ("fire: 3 pass-through middleware + 3 listeners", lambda: busy.plan.fire(ctx, other), None),
        ("fire an idle stage, listeners on another RLM", lambda: idle.fire(ctx, rlm), 2.0),
    ]
    rows = []

    def measure(figures: list[tuple[str, Callable[[], Any], float | None]]) -> None:
        for name, fn, target in figures:
            us = per_call_us(fn, loops)
            rows.append({"name": name, "us": us, "target_us": target, "met": None if target is None else us <= target})

    try:
        measure(alone)
        for listener in listeners:
            BY_STAGE[stage].connect(listener, sender=other, weak=False)
        measure(crowded)
    finally:
        for listener in listeners:
            BY_STAGE[stage].disconnect(listener)
        rlm_events.uninstrument(rlm)
        rlm_events.uninstrument(other)
    return rows
