"""What a durable run costs per iteration: the commits to SQLite and to PostgreSQL against the bare loop.

    python benchmarks/durable.py [--iterations 20] [--repeats 15] [--postgres DSN]

One real `dspy.RLM` per configuration (the in-process interpreter, a scripted LM, `--iterations` iterations per
call, one tool call per iteration), the calls interleaved across configurations (each going first in turn), the
fastest call of `--repeats` per configuration (the median is printed too). The baseline is the same RLM,
instrumented with one trivial `run_end` tap. A durable iteration commits its code, its tool result and the iteration
(three transactions). PostgreSQL is measured when `--postgres` or `RLM_EVENTS_TEST_POSTGRES` gives a DSN.
Targets: at most 5 ms per iteration on SQLite, 10 ms on a local PostgreSQL. Figures are for the machine at hand.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import dspy

import rlm_events
from rlm_events.durable import Durable, PostgresStore, SQLiteStore
from rlm_events.testing import InProcessInterpreter, ScriptedLM, build_rlm

TARGET_MS = {"Durable(SQLiteStore)": 5.0, "Durable(PostgresStore)": 10.0}


def lookup(key: str) -> str:
    """Look a key up."""
    return key * 2


def configurations(directory: str, dsn: str | None) -> dict[str, Callable[[rlm_events.Instrumentation], Any]]:
    found: dict[str, Callable[[rlm_events.Instrumentation], Any]] = {
        "bare (instrumented, one tap)": lambda events: events.tap([rlm_events.Stage.RUN_END], lambda ctx: None),
        "Durable(SQLiteStore)": lambda events: Durable(SQLiteStore(os.path.join(directory, "runs.db"))).install(events),
    }
    if dsn:
        found["Durable(PostgresStore)"] = lambda events: Durable(PostgresStore(dsn)).install(events)
    return found


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--postgres", metavar="DSN", default=os.environ.get("RLM_EVENTS_TEST_POSTGRES"))
    args = parser.parse_args(argv)
    n = args.iterations
    steps = [f"x{i} = lookup(key='k{i}')\nprint(x{i})" for i in range(n - 1)] + ["SUBMIT(answer='ok')"]
    per_iteration: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as directory:
        rlms = {}
        for name, install in configurations(directory, args.postgres).items():
            rlm = build_rlm("text -> answer", max_iters=n + 1, tools=[lookup], interpreter_factory=InProcessInterpreter)
            install(rlm_events.instrument(rlm))
            rlms[name] = rlm
        times: dict[str, list[float]] = {name: [] for name in rlms}
        order = collections.deque(rlms)
        with dspy.context(lm=ScriptedLM(steps)):
            for _ in range(args.repeats):
                for name in order:
                    start = time.perf_counter()
                    rlms[name](text="t")
                    times[name].append(time.perf_counter() - start)
                order.rotate(-1)  # each configuration goes first in turn
    base = min(next(iter(times.values())))
    for name, samples in times.items():
        best, median = min(samples), statistics.median(samples)
        cost = (best - base) / n * 1e3
        per_iteration[name] = cost
        target = TARGET_MS.get(name)
        verdict = f"  (target <= {target:.0f} ms: {'met' if cost <= target else 'MISSED'})" if target else ""
        print(f"{name:30s} {best * 1e3:8.2f} ms/call (median {median * 1e3:8.2f})  {cost:+6.2f} ms/iteration{verdict}")
    if not args.postgres:
        print("PostgreSQL not measured: pass --postgres DSN (or set RLM_EVENTS_TEST_POSTGRES)")
    return per_iteration


if __name__ == "__main__":
    main()
