"""What the code guard's static check costs per step, uncached: microseconds per `GuardPolicy.check(code)`.

    python benchmarks/guard_cost.py [--repeats 200] [--json out.json] [--quick]

Steps of about 10, 50 and 200 lines are made of the guard corpus's ordinary analysis snippets
(tests/guard_corpus), whole snippets in order until the step has the lines wanted; each is checked by the strict and
the default policy, every check from scratch (no cache: a new code string each time, with a comment that differs).
Printed: the fastest and the median microseconds per check of `--repeats` (the fastest is the least disturbed by
the machine's other work), and apart what CodeGuard pays for code it has checked before (`cached`: it remembers
the last 256 distinct checks). Issue 21's target: a 50-line step checked in at most 1 ms. These are figures on the
machine at hand, not assertions.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import statistics
import time
from pathlib import Path
from typing import Any

from rlm_events.guard import GuardPolicy
from rlm_events.guard._middleware import checked

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


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="a few repeats: checks that the benchmark runs")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else args.repeats
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
    report = {"command": "python benchmarks/guard_cost.py", "repeats": repeats, "checks": rows}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
