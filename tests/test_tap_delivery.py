"""Taps never stall a run (issue 24): queued taps get their snapshots on the delivery worker.

Real `dspy.RLM` calls with a scripted LM on the library's in-process interpreter. Nothing here is timed: that the
run does not wait for a slow tap is shown by the order of events (the call returned, and a heartbeat on the same
loop ticked, while the tap was still blocked). The stall in milliseconds is measured by `benchmarks/tap_cost.py`.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage, delivery
from rlm_events.taps.timings import StageTimings
from rlm_events.testing import InProcessInterpreter

SLOW_TAP_S = 5.0  # how long the slow tap would block if nobody released it


class Order:
    """A thread-safe log of what happened, in order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seen: list[str] = []

    def __call__(self, what: str) -> None:
        with self._lock:
            self.seen.append(what)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """Unblocks the slow taps at the end of a test (so the worker is free for the next one)."""
    gate = threading.Event()
    yield gate
    gate.set()
    assert rlm_events.flush(timeout=30)


def slow_tap(order: Order, gate: threading.Event, started: threading.Event | None = None) -> Any:
    def tap(ctx: Any) -> None:
        order(f"tap {ctx.stage.value} started on {threading.current_thread().name}")
        if started is not None:
            started.set()
        gate.wait(SLOW_TAP_S)  # a 5 s exporter, unless the test releases it
        order(f"tap {ctx.stage.value} ended")

    return tap


def test_a_blocking_tap_does_not_hold_the_call(make_rlm, release):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    order = Order()
    events.tap(["run_start", "run_end"], slow_tap(order, release))
    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "ok"
    order("call returned")
    release.set()
    assert rlm_events.flush(timeout=30)
    assert order.seen.index("call returned") < order.seen.index("tap run_start ended")
    assert order.seen[-1] == "tap run_end ended"  # delivered all the same, in order, on the worker
    assert "tap run_start started on rlm-events-taps" in order.seen


def test_a_blocking_tap_does_not_stall_the_event_loop_under_acall(make_rlm, release):
    rlm, lm = make_rlm(["print('a')", "SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    order = Order()
    started = threading.Event()
    events.tap(slow_tap(order, release, started))  # every stage
    # The first iteration waits until the worker is inside the tap (it delivers in batches, up to 20 ms later), so
    # the rest of the call runs while the tap is blocked, whatever the machine's speed.
    events.use(Stage.PRE_ITERATION, lambda ctx, next: next(ctx) if started.wait(30) else None)

    async def heartbeat(stop: asyncio.Event) -> None:
        while not stop.is_set():
            order("beat")
            await asyncio.sleep(0)

    async def main() -> Any:
        stop = asyncio.Event()
        beating = asyncio.create_task(heartbeat(stop))
        with dspy.context(lm=lm):
            result = await rlm.acall(text="t")
        order("call returned")
        await asyncio.sleep(0)
        order("beat after the call")
        stop.set()
        await beating
        return result

    assert asyncio.run(main()).answer == "ok"
    # The call returned and the loop kept beating, all while the first tap event was still blocked.
    seen = list(order.seen)
    ends = [i for i, what in enumerate(seen) if what.endswith(" ended")]
    assert all(i > seen.index("beat after the call") > seen.index("call returned") for i in ends)
    assert seen.count("beat") > 1
    assert any(what.startswith("tap run_start started") for what in seen)


def test_flush_delivers_everything_in_order(make_rlm):
    rlm, lm = make_rlm(["print('a')", "print('b')", "SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    queued: list[tuple[str, str]] = []
    inline: list[tuple[str, str]] = []
    events.tap(lambda ctx: queued.append((ctx.run.id, ctx.stage.value)))
    events.tap(lambda ctx: inline.append((ctx.run.id, ctx.stage.value)), inline=True)
    with dspy.context(lm=lm):
        for _ in range(20):
            rlm(text="t")
    assert rlm_events.flush(timeout=30)
    assert len(inline) == 20 * 14  # run_start, 3 x (4 loop stages), run_end
    assert queued == inline
    assert delivery.stats().pending == 0


def test_a_full_queue_drops_and_counts_and_never_blocks(make_rlm, release):
    rlm, lm = make_rlm(["print('a')", "SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    order = Order()
    events.tap(["run_start"], slow_tap(order, release))  # holds the worker
    seen: list[str] = []
    events.tap(lambda ctx: seen.append(ctx.stage.value))
    capacity = delivery.stats().capacity
    delivery.configure(capacity=3)
    try:
        before = delivery.stats()
        with dspy.context(lm=lm):
            assert rlm(text="t").answer == "ok"  # returns although the queue is full
        order("call returned")
        during = delivery.stats()
    finally:
        delivery.configure(capacity=capacity)
    release.set()
    assert rlm_events.flush(timeout=30)
    assert during.dropped > before.dropped  # dropped and counted
    assert during.queued - before.queued + during.dropped - before.dropped == 1 + 10  # every snapshot accounted for
    assert seen[-1] == "run_end"  # a run_end has room past the bound, so the tap still closes the run
    assert len(seen) < 10
    assert order.seen.index("call returned") < order.seen.index("tap run_start ended")
    with pytest.raises(ValueError, match="capacity"):
        delivery.configure(capacity=0)


class Boom(RuntimeError):
    pass


def test_a_thousand_failing_calls_leave_no_state_behind(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    timings = StageTimings(max_runs=10).install(events)
    ends: list[weakref.ref[Any]] = []
    events.tap(["run_end"], lambda ctx: ends.append(weakref.ref(ctx)))

    def refuse(ctx: Any, next: Any) -> Any:
        raise Boom("refused")

    events.use(Stage.PRE_ITERATION, refuse)
    with dspy.context(lm=lm):
        for _ in range(1000):
            with pytest.raises(Boom):
                rlm(text="t")
    assert rlm_events.flush(timeout=60)
    gc.collect()
    assert len(ends) == 1000
    assert not any(ref() is not None for ref in ends)  # no snapshot kept by the queue or the worker
    assert delivery.stats().pending == 0
    assert len(timings._last_event) == 0 and len(timings.run_ids) <= 10


def test_a_failing_queued_tap_is_logged_on_the_worker_and_the_run_goes_on(make_rlm, caplog):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)

    def broken(ctx: Any) -> None:
        raise Boom("tap bug")

    events.tap(broken)
    with dspy.context(lm=lm):
        assert rlm(text="t").answer == "ok"
    assert rlm_events.flush(timeout=30)
    failures = [r for r in caplog.records if "tap" in r.getMessage() and "failed" in r.getMessage()]
    assert failures and failures[0].threadName == "rlm-events-taps"


def test_inline_taps_declare_themselves():
    from rlm_events.taps.otel import OpenTelemetryTap
    from rlm_events.trace.writer import JsonlTrace

    # Inline: spans, timings, and the taps that build what they show at the event and defer the writing.
    assert OpenTelemetryTap.INLINE and StageTimings.INLINE and JsonlTrace.INLINE and rlm_events.taps.ProgressTap.INLINE
    assert not getattr(rlm_events.taps.LoggingTap, "INLINE", False)


def test_an_inline_async_tap_is_awaited_on_the_callers_loop(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='ok')"], interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    loops: list[Any] = []

    async def tap(ctx: Any) -> None:
        loops.append(asyncio.get_running_loop())

    events.tap(["run_end"], tap, inline=True)

    async def main() -> Any:
        with dspy.context(lm=lm):
            await rlm.acall(text="t")
        return asyncio.get_running_loop()

    assert loops == [asyncio.run(main())]


def test_nothing_starts_before_a_queued_tap_fires():
    code = (
        "import threading, rlm_events, rlm_events.delivery, rlm_events.taps\n"
        "from rlm_events.testing import build_rlm\n"
        "events = rlm_events.instrument(build_rlm('text -> answer'))\n"
        "events.tap(print)\n"
        "names = [t.name for t in threading.enumerate()]\n"
        "assert 'rlm-events-taps' not in names, names\n"
        "assert rlm_events.delivery.stats().queued == 0\n"
        "assert rlm_events.flush(timeout=1)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
