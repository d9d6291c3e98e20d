"""What rlm-events' LM meter adds to a real LM call: a real ``dspy.RLM`` whose LM is the real client
(``dspy.LM("openai/gpt-4o-mini", api_base=...)``: LiteLLM, or DSPy 3.4's own engine) against
:class:`~rlm_events.local_openai.LocalOpenAIServer`, bare vs instrumented with a metering ``Budget``.

Each call runs ``iterations`` iterations, one LM call each (DSPy's cache off). One round calls the bare RLM and the
metered one, in an order alternated every round, so machine drift hits both alike; wall time. Figures: the median
bare call, the time the meter adds per iteration (median of the per-round differences, divided by the iterations)
and the median per-round ratio, as a percentage of the bare call (target: at most 2%). Every call is checked (its
answer, its iterations, and the metered run's calls against the server's bill).

Run it through ``python benchmarks/overhead.py`` (its "Real LM client" section), or alone:
``python benchmarks/real_client.py [--rounds N]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network lookup when dspy imports litellm

import argparse
import statistics
import time
from typing import Any

import dspy
from dspy.clients import base_lm

import rlm_events
from rlm_events.builtins import Budget
from rlm_events.local_openai import LocalOpenAIServer
from rlm_events.testing import InProcessInterpreter, build_rlm

TARGET_PERCENT = 2.0


def _call(rlm: dspy.RLM, lm: dspy.LM, iterations: int) -> tuple[float, float]:
    """One checked call: its wall time and this process's CPU time (the server's share is alike in both)."""
    with dspy.context(lm=lm):
        start, cpu = time.perf_counter(), time.process_time()
        prediction = rlm(question="What is the answer?")
        elapsed = time.perf_counter() - start, time.process_time() - cpu
    if prediction.answer != "done" or len(prediction.trajectory) != iterations:
        raise AssertionError(f"the workload changed: {len(prediction.trajectory)} iterations, {prediction.answer!r}")
    lm.history.clear()
    base_lm.GLOBAL_HISTORY.clear()
    return elapsed


def benchmark(*, rounds: int = 100, iterations: int = 3, warmup: int = 3, delay: float = 0.0) -> dict[str, Any]:
    """Run the benchmark; a plain JSON-able report (see the module's docstring). ``delay``: the server's latency
    per answer, in seconds (0: the worst case for the ratio, the call is the client's own work only)."""
    steps = [f"print({i})" for i in range(iterations - 1)] + ["SUBMIT(answer='done')"]
    with LocalOpenAIServer.scripted(steps, delay=delay) as server:
        lms = [dspy.LM("openai/gpt-4o-mini", api_base=server.base_url, api_key="x", cache=False) for _ in "ab"]
        rlms = [build_rlm("question -> answer", max_iters=iterations, interpreter_factory=InProcessInterpreter)]
        rlms.append(build_rlm("question -> answer", max_iters=iterations, interpreter_factory=InProcessInterpreter))
        events = rlm_events.instrument(rlms[1])
        Budget(max_iterations=10 * iterations).install(events)
        spent: list[Any] = []
        events.tap(["run_end"], lambda ctx: spent.append(Budget.spent(ctx).lm_calls), inline=True)
        try:
            for _ in range(warmup):
                _call(rlms[0], lms[0], iterations), _call(rlms[1], lms[1], iterations)
            bare: list[tuple[float, float]] = []
            metered: list[tuple[float, float]] = []
            for round_ in range(rounds):
                order = (0, 1) if round_ % 2 == 0 else (1, 0)
                times = {which: _call(rlms[which], lms[which], iterations) for which in order}
                bare.append(times[0])
                metered.append(times[1])
        finally:
            rlm_events.uninstrument(rlms[1])
        if set(spent) != {iterations} or server.bill.calls != 2 * iterations * (warmup + rounds):
            raise AssertionError(f"the meter counted {set(spent)} calls per run, want {iterations}")
    pairs = list(zip(metered, bare, strict=True))
    ratio = statistics.median(m[0] / b[0] for m, b in pairs)
    added = statistics.median(m[0] - b[0] for m, b in pairs) / iterations
    percent = (ratio - 1) * 100
    return {
        "rounds": rounds,
        "iterations": iterations,
        "server_delay_s": delay,
        "bare_ms": statistics.median(b[0] for b in bare) * 1e3,
        "metered_ms": statistics.median(m[0] for m in metered) * 1e3,
        "added_us_per_iteration": added * 1e6,
        "added_cpu_us_per_iteration": statistics.median(m[1] - b[1] for m, b in pairs) / iterations * 1e6,
        "cpu_ratio": statistics.median(m[1] / b[1] for m, b in pairs),
        "ratio": ratio,
        "percent": percent,
        "target_percent": TARGET_PERCENT,
        "met": percent <= TARGET_PERCENT if rounds >= 10 else None,
    }


def render(report: dict[str, Any]) -> str:
    verdict = "(not judged)" if report["met"] is None else ("ok" if report["met"] else "MISSED")
    return (
        f"Real LM client (dspy.LM via the local OpenAI-compatible server): {report['iterations']} iterations per "
        f"call, {report['rounds']} interleaved rounds, server latency {report['server_delay_s'] * 1e3:g} ms\n"
        f"  bare {report['bare_ms']:.2f} ms/call, metered {report['metered_ms']:.2f} ms/call: "
        f"{report['added_us_per_iteration']:+.1f} us/iteration, ratio {report['ratio']:.4f} "
        f"({report['percent']:+.2f}%)  target <= {report['target_percent']:g}% {verdict}\n"
        f"  CPU time of this process: {report['added_cpu_us_per_iteration']:+.1f} us/iteration, "
        f"ratio {report['cpu_ratio']:.4f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--delay", type=float, default=0.0, help="the server's latency per answer, in seconds")
    args = parser.parse_args()
    print(render(benchmark(rounds=args.rounds, iterations=args.iterations, delay=args.delay)))
