"""What each ready-made tap costs per loop iteration on the caller's thread, and what a blocking tap stalls.

    python benchmarks/tap_cost.py [--iterations 20] [--repeats 25] [--stall-tap-s 5]

One real `dspy.RLM` per configuration (the in-process interpreter, a scripted LM, `--iterations` iterations per
call), the calls interleaved across configurations (each going first in turn), the fastest call of `--repeats` per
configuration (the least disturbed by the machine's other work; the median is printed too). The baseline
is an instrumented RLM with one trivial `run_end` tap (so it takes the instrumented path); each other configuration
adds one tap. Printed: milliseconds per call, the difference from the baseline per iteration, and the ratio
(fastest calls).
These are ratios on the machine at hand, not targets; a loaded machine makes them noisy.

Then the stall: under `acall`, with a heartbeat task on the same event loop (a `sleep(0.001)` loop recording the
longest gap between its beats), one call of a bare RLM and one of an RLM with a (queued) tap that blocks
`--stall-tap-s` seconds on every stage. Printed: each call's wall time and the heartbeat's longest gap, and the
difference; the target is that the tap delays neither by more than 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import dspy
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import rlm_events
from rlm_events.taps.logs import LoggingTap
from rlm_events.taps.otel import OpenTelemetryTap
from rlm_events.taps.progress import ProgressTap
from rlm_events.taps.timings import StageTimings
from rlm_events.testing import InProcessInterpreter, ScriptedLM
from rlm_events.trace import JsonlTrace


def configurations(directory: str) -> dict[str, Callable[[rlm_events.Instrumentation], Any]]:
    def otel(events: rlm_events.Instrumentation) -> Any:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
        return OpenTelemetryTap(tracer_provider=provider).install(events)

    return {
        "baseline": lambda events: events.tap([rlm_events.Stage.RUN_END], lambda ctx: None),
        "LoggingTap": lambda events: LoggingTap().install(events),
        "StageTimings": lambda events: StageTimings().install(events),
        "JsonlTrace": lambda events: JsonlTrace(os.path.join(directory, "trace.jsonl")).install(events),
        "ProgressTap (plain lines)": lambda events: ProgressTap(io.StringIO(), live=False).install(events),
        "a queued no-op tap, every stage": lambda events: events.tap(lambda ctx: None),
        "OpenTelemetryTap (in-memory exporter)": otel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--stall-tap-s", type=float, default=5.0)
    args = parser.parse_args()
    n = args.iterations
    steps = [f"x{i} = {i}\nprint(x{i})" for i in range(n - 1)] + ["SUBMIT(answer='ok')"]
    with tempfile.TemporaryDirectory() as directory:
        rlms = {}
        for name, install in configurations(directory).items():
            rlm = dspy.RLM("text -> answer", max_iters=n + 1, interpreter_factory=InProcessInterpreter)
            install(rlm_events.instrument(rlm))
            rlms[name] = rlm
        times: dict[str, list[float]] = {name: [] for name in rlms}
        with dspy.context(lm=ScriptedLM(steps)):
            names = list(rlms)
            for repeat in range(args.repeats):
                for name in names[repeat % len(names) :] + names[: repeat % len(names)]:  # each goes first in turn
                    rlm = rlms[name]
                    start = time.perf_counter()
                    rlm(text="t")
                    times[name].append(time.perf_counter() - start)
    base = min(times["baseline"])
    for name, samples in times.items():
        best, median = min(samples), statistics.median(samples)
        print(
            f"{name:38s} {best * 1e3:7.2f} ms/call (median {median * 1e3:7.2f}) "
            f"{(best - base) / n * 1e6:+7.1f} µs/iteration  x{best / base:.3f}"
        )
    rlm_events.flush(timeout=60)
    stall(steps, args.stall_tap_s)


STALL_REPEATS = 7


async def _beating_call(rlm: dspy.RLM, lm: ScriptedLM) -> tuple[float, float]:
    """One `acall` with a heartbeat on the same loop: (the call's wall time, the heartbeat's longest gap), in s."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beating = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.01)
    start = time.perf_counter()
    with dspy.context(lm=lm):
        await rlm.acall(text="t")
    took = time.perf_counter() - start
    stop.set()
    await beating
    return took, max(gaps)


def stall(steps: list[str], tap_s: float) -> None:
    """The bare call against one whose every stage has a tap blocking `tap_s` seconds (released afterwards)."""
    n = len(steps)
    release = threading.Event()
    rlms = {}
    for name in ("bare", f"a {tap_s:g} s tap on every stage"):
        rlm = rlms[name] = dspy.RLM("text -> answer", max_iters=n + 1, interpreter_factory=InProcessInterpreter)
        if name != "bare":
            rlm_events.instrument(rlm).tap(lambda ctx: release.wait(tap_s))
        asyncio.run(_beating_call(rlm, ScriptedLM(steps)))  # warm-up
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in rlms}
    for _ in range(STALL_REPEATS):  # interleaved; the medians
        for name, rlm in rlms.items():
            samples[name].append(asyncio.run(_beating_call(rlm, ScriptedLM(steps))))
    figures = {
        name: (statistics.median(t for t, _ in runs), statistics.median(g for _, g in runs))
        for name, runs in samples.items()
    }
    release.set()
    rlm_events.flush(timeout=60)
    (bare_call, bare_gap), (tap_call, tap_gap) = figures.values()
    for name, (took, gap) in figures.items():
        print(f"stall: {name:38s} acall {took * 1e3:8.2f} ms, heartbeat's longest gap {gap * 1e3:6.2f} ms (medians)")
    call_ms, gap_ms = (tap_call - bare_call) * 1e3, (tap_gap - bare_gap) * 1e3
    verdict = "ok" if call_ms <= 10 and gap_ms <= 10 else "MISSED"
    print(
        f"stall: the blocking tap added {call_ms:+.2f} ms to the call, {gap_ms:+.2f} ms to the heartbeat  "
        f"target <= 10 ms {verdict}"
    )


if __name__ == "__main__":
    main()
