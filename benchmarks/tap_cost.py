"""What each ready-made tap costs per loop iteration, inline on the caller's thread.

    python benchmarks/tap_cost.py [--iterations 20] [--repeats 25]

One real `dspy.RLM` per configuration (the in-process interpreter, a scripted LM, `--iterations` iterations per
call), the calls interleaved across configurations (each going first in turn), the fastest call of `--repeats` per
configuration (the least disturbed by the machine's other work; the median is printed too). The baseline
is an instrumented RLM with one trivial `run_end` tap (so it takes the instrumented path); each other configuration
adds one tap. Printed: milliseconds per call, the difference from the baseline per iteration, and the ratio
(fastest calls).
These are ratios on the machine at hand, not targets; a loaded machine makes them noisy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
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
        "OpenTelemetryTap (in-memory exporter)": otel,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=25)
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


if __name__ == "__main__":
    main()
