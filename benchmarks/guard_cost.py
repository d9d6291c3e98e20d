"""What the code guard costs: its static check per step, uncached (microseconds per `GuardPolicy.check(code)`), and
its run-time layer per execution (the same step run with and without it).

    python benchmarks/guard_cost.py [--repeats 200] [--json out.json] [--quick]

Steps of about 10, 50 and 200 lines are made of the guard corpus's ordinary analysis snippets
(tests/guard_corpus), whole snippets in order until the step has the lines wanted; each is checked by the strict and
the default policy, every check from scratch (no cache: a new code string each time, with a comment that differs).
Printed: the fastest and the median microseconds per check of `--repeats` (the fastest is the least disturbed by
the machine's other work), and apart what CodeGuard pays for code it has checked before (`cached`: it remembers
the last 256 distinct checks). Issue 21's target: a 50-line step checked in at most 1 ms.

The run-time layer (`InProcessInterpreter(guard=...)`, the sandbox's worker) recompiles the code so that its
attribute reads and writes, calls of guarded built-ins and imports are checked as they run. Its cost depends on what
the code does, so it is measured on two steps, each executed `--repeats` times in one interpreter with the layer
(`guard="default"`) and without it (`guard=None`), interleaved: `RUNTIME_STEPS`, an ordinary analysis step on a text
(split, count, regex, JSON, sort) and an attribute-heavy loop over objects of the code's own class (the worst case:
every step checks an attribute). Printed: the median microseconds per execution of each and their ratio.

And what the host pays while a guarded interpreter is alive (its audit hook sees every event of the process): a
logging record (logging reads `f_code`, an audited read) and a `compile()` of the host, at a stack depth of 30,
before any guarded execution and then with one guarded interpreter alive. These are figures on the machine at hand,
not assertions.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import io
import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

from rlm_events.guard import GuardPolicy
from rlm_events.guard._middleware import checked
from rlm_events.inprocess import InProcessInterpreter

ROOT = Path(__file__).resolve().parent.parent


def _corpus() -> list[tuple[str, str]]:
    """The guard corpus's ordinary snippets (tests/guard_corpus/ordinary.py, a data file of the test suite)."""
    spec = importlib.util.spec_from_file_location("guard_corpus_ordinary", ROOT / "tests/guard_corpus/ordinary.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return list(module.ORDINARY)


ORDINARY = _corpus()

SIZES = (10, 50, 200)
TARGET_US = {50: 1000.0}

# Executed with and without the run-time layer; `text` is given as the step's variable.
RUNTIME_STEPS = {
    "analysis": (
        "import collections, json, re\n"
        "words = re.findall(r'[a-z]+', text.lower())\n"
        "counts = collections.Counter(words)\n"
        "top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]\n"
        "rows = [{'word': w, 'n': n, 'share': round(n / len(words), 4)} for w, n in top]\n"
        "print(json.dumps(json.loads(json.dumps(rows)))[:80])"
    ),
    "attributes": (
        "class Point:\n"
        "    def __init__(self, x, y):\n"
        "        self.x, self.y = x, y\n"
        "points = [Point(i, 2 * i) for i in range(500)]\n"
        "total = 0\n"
        "for p in points:\n"
        "    p.x = p.x + p.y\n"
        "    total += p.x * p.y\n"
        "print(total)"
    ),
}
TEXT = " ".join(f"word{i % 50} lorem ipsum dolor sit amet" for i in range(400))


def step_of(lines: int) -> str:
    """Whole ordinary snippets, in corpus order (repeated if needed), until the step has at least `lines` lines."""
    parts: list[str] = []
    count = 0
    while count < lines:
        for _, code in ORDINARY:
            ast.parse(code)
            parts.append(code)
            count += len(code.splitlines())
            if count >= lines:
                break
    return "\n".join(parts)


def cost(policy: GuardPolicy, code: str, repeats: int) -> dict[str, float]:
    """Microseconds per check, each on a code string it has not seen (a distinct trailing comment)."""
    timings: list[float] = []
    for i in range(repeats):
        fresh = f"{code}\n# {i}"
        start = time.perf_counter()
        policy.check(fresh)
        timings.append((time.perf_counter() - start) * 1e6)
    return {"fastest_us": min(timings), "median_us": statistics.median(timings)}


def cached_cost(policy: GuardPolicy, code: str, repeats: int) -> float:
    """Microseconds per check of the same code again, as CodeGuard checks it (remembered per distinct code)."""
    checked(policy, code, frozenset(), None, frozenset())
    start = time.perf_counter()
    for _ in range(repeats):
        checked(policy, code, frozenset(), None, frozenset())
    return (time.perf_counter() - start) * 1e6 / repeats


def runtime_cost(repeats: int) -> list[dict[str, Any]]:
    """Median microseconds per execution of each of `RUNTIME_STEPS` without and with the run-time layer, and their
    ratio; the two interpreters run in turn, one execution each, so that the machine's drift hits both alike."""
    rows: list[dict[str, Any]] = []
    for name, code in RUNTIME_STEPS.items():
        plain, guarded = InProcessInterpreter(), InProcessInterpreter(guard="default")
        timings: dict[str, list[float]] = {"plain": [], "guarded": []}
        try:
            for i in range(repeats + 1):  # the first of each: compiling, imports
                for key, repl in (("plain", plain), ("guarded", guarded)):
                    start = time.perf_counter()
                    out = repl.execute(code, variables={"text": TEXT})
                    if i:
                        timings[key].append((time.perf_counter() - start) * 1e6)
                    if isinstance(out, str) and out.startswith("[Error]"):
                        raise RuntimeError(f"{name} ({key}): {out}")
        finally:
            plain.shutdown()
            guarded.shutdown()
        row = {"step": name, **{f"{k}_us": statistics.median(v) for k, v in timings.items()}}
        row["ratio"] = row["guarded_us"] / row["plain_us"]
        rows.append(row)
        print(
            f"run-time layer, {name:<10} without {row['plain_us']:8.0f} µs  with {row['guarded_us']:8.0f} µs  "
            f"ratio {row['ratio']:.2f}"
        )
    return rows


def host_cost(repeats: int) -> dict[str, dict[str, float]]:
    """Microseconds per host logging record and per host `compile()`, 30 frames deep, before any guarded execution
    in this process and then while a guarded interpreter is alive (call it before anything else arms a guard)."""
    logger = logging.getLogger("rlm_events.benchmarks.guard_cost")
    logger.handlers, logger.propagate = [logging.StreamHandler(io.StringIO())], False
    logger.setLevel(logging.INFO)

    def timed(depth: int = 30) -> dict[str, float]:
        if depth:
            return timed(depth - 1)
        start = time.perf_counter()
        for _ in range(repeats):
            logger.info("record %s", 1)
        record = (time.perf_counter() - start) * 1e6 / repeats
        start = time.perf_counter()
        for _ in range(repeats):
            compile("x = 1", "<host>", "exec")
        return {"log_record_us": record, "compile_us": (time.perf_counter() - start) * 1e6 / repeats}

    before = timed()
    alive = InProcessInterpreter(guard="default")
    try:
        alive.execute("x = 1")
        during = timed()
    finally:
        alive.shutdown()
    for key in before:
        print(f"host, {key[:-3]:<10} no guard {before[key]:7.1f} µs  a guarded interpreter alive {during[key]:7.1f} µs")
    return {"before": before, "guarded_interpreter_alive": during}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a few repeats: checks that the benchmark runs")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
    host = host_cost(repeats * 20)  # first: before anything in this process arms a guard
    rows: list[dict[str, Any]] = []
    for size in SIZES:
        code = step_of(size)
        for name in ("strict", "default"):
            policy = GuardPolicy.named(name)
            policy.check(code)  # warm: imports, caches of the interpreter
            row = {"lines": len(code.splitlines()), "policy": name, **cost(policy, code, repeats)}
            row["cached_us"] = cached_cost(policy, code, repeats)
            target = TARGET_US.get(size)
            row["target_us"] = target
            row["met"] = None if target is None else row["fastest_us"] <= target
            rows.append(row)
            print(
                f"{row['lines']:>4} lines  {name:<8} fastest {row['fastest_us']:8.0f} µs  "
                f"median {row['median_us']:8.0f} µs  cached {row['cached_us']:5.1f} µs"
                + ("" if target is None else f"  (target ≤ {target:.0f} µs uncached)")
            )
    report = {
        "command": "python benchmarks/guard_cost.py",
        "repeats": repeats,
        "checks": rows,
        "runtime": runtime_cost(repeats),
        "host": host,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
