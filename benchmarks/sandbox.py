"""What the sandbox costs: ``rlm_events.sandbox.Sandboxed`` against plain ``dspy.LocalInterpreter`` (DSPy 3.4+).

Run ``python benchmarks/sandbox.py`` (``--rounds N``, ``--quick`` for a smoke run, ``--json PATH`` to also write
the figures). Offline, wall time, medians of N rounds; the two interpreters alternate within each round, so drift
on a busy machine hits both alike. Measured:

* **per execution**, in a warm interpreter: a statement (``x = 1``), a host tool call (``ping()``), printed output,
  and a small computation (``sum(range(10**5))``, the same Python either way: that ratio shows the limits cost
  nothing while code runs);
* **per session**: create and start (to the worker's first message), shut down, and the whole session with one
  statement (the sandbox's startup and teardown: bubblewrap, namespaces, mounts, the scratch directory and its
  tmpfs, and the sandbox's cgroup where the host allows one);
* **per RLM call**: a real ``dspy.RLM`` on a scripted LM, 5 iterations, a fresh interpreter per call.
"""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dspy

from rlm_events.sandbox import Sandboxed
from rlm_events.testing import ScriptedLM, build_rlm

SNIPPETS = {
    "statement": "x = 1",
    "tool call": "ping()",
    "print": "print('a' * 100)",
    "compute": "sum(range(10**5))",
}
# ScriptedLM implements BaseLM.forward, which DSPy 3.4 calls legacy.
warnings.filterwarnings("ignore", "Implementing custom LMs through BaseLM", DeprecationWarning)
RLM_STEPS = ["x = 1", "print(x)", "y = ping()", "print(y)", "SUBMIT(answer=str(x))"]


def ping() -> str:
    return "pong"


def timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def measure(rounds: int) -> dict[str, Any]:
    factories: dict[str, Callable[..., Any]] = {"LocalInterpreter": dspy.LocalInterpreter, "Sandboxed": Sandboxed()}
    sessions = ["session: start", "session: shutdown", "session: all"]
    samples: dict[str, dict[str, list[float]]] = {k: {} for k in [*SNIPPETS, *sessions, "RLM call (5 iterations)"]}

    # per execution, warm
    warm = {name: factory({"ping": ping}) for name, factory in factories.items()}
    for interpreter in warm.values():
        interpreter.execute("0")
        for code in SNIPPETS.values():
            interpreter.execute(code)
    for _ in range(rounds):
        for name, interpreter in warm.items():
            for label, code in SNIPPETS.items():
                samples[label].setdefault(name, []).append(timed(lambda i=interpreter, c=code: i.execute(c)))
    for interpreter in warm.values():
        interpreter.shutdown()

    # per session: create, start, one statement, shut down
    for _ in range(max(3, rounds // 10)):
        for name, factory in factories.items():
            began = time.perf_counter()
            interpreter = factory()
            interpreter.start()
            started = time.perf_counter()
            interpreter.execute("x = 1")
            stopping = time.perf_counter()
            interpreter.shutdown()
            ended = time.perf_counter()
            for label, seconds in zip(sessions, (started - began, ended - stopping, ended - began), strict=True):
                samples[label].setdefault(name, []).append(seconds)

    # per RLM call
    rlms = {
        name: build_rlm("text -> answer", max_iters=len(RLM_STEPS), interpreter_factory=factory, tools=[ping])
        for name, factory in factories.items()
    }
    for _ in range(max(3, rounds // 10)):
        for name, rlm in rlms.items():
            lm = ScriptedLM(RLM_STEPS)

            def call(rlm: Any = rlm, lm: Any = lm) -> None:
                with dspy.context(lm=lm):
                    result = rlm(text="go")
                assert result.answer == "1" and len(result.trajectory) == len(RLM_STEPS)

            samples["RLM call (5 iterations)"].setdefault(name, []).append(timed(call))

    rows = []
    for label, by_name in samples.items():
        local, sandboxed = statistics.median(by_name["LocalInterpreter"]), statistics.median(by_name["Sandboxed"])
        rows.append(
            {
                "measure": label,
                "local_ms": local * 1e3,
                "sandboxed_ms": sandboxed * 1e3,
                "added_ms": (sandboxed - local) * 1e3,
                "ratio": sandboxed / local,
                "n": len(by_name["Sandboxed"]),
            }
        )
    return {
        "python": platform.python_version(),
        "dspy": dspy.__version__,
        "cpus": os.cpu_count(),
        "root": os.geteuid() == 0,
        "cgroup": Sandboxed().limits["max_processes"].startswith("sandbox"),
        "rounds": rounds,
        "rows": rows,
    }


def report(figures: dict[str, Any]) -> str:
    lines = [
        f"DSPy {figures['dspy']}, Python {figures['python']}, {figures['cpus']} CPUs, "
        f"{'as root' if figures['root'] else 'as a user'}, "
        f"{'a cgroup per sandbox' if figures.get('cgroup') else 'per-process limits'}; medians (wall time)",
        "",
        "| measure | dspy.LocalInterpreter | Sandboxed | added | ratio | n |",
        "|---|---|---|---|---|---|",
    ]
    for row in figures["rows"]:
        lines.append(
            f"| {row['measure']} | {row['local_ms']:.3f} ms | {row['sandboxed_ms']:.3f} ms | "
            f"{row['added_ms']:+.3f} ms | x{row['ratio']:.2f} | {row['n']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=200, help="rounds per execution measure (default 200)")
    parser.add_argument("--quick", action="store_true", help="a few rounds: checks that it works, not timing")
    parser.add_argument("--json", metavar="PATH", type=Path, help="also write the figures as JSON to PATH")
    args = parser.parse_args(argv)
    if not hasattr(dspy, "LocalInterpreter"):
        print(f"dspy.LocalInterpreter needs DSPy 3.4+ (this is {dspy.__version__})", file=sys.stderr)
        return 2
    figures = measure(3 if args.quick else args.rounds)
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
