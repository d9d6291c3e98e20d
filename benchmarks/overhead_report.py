"""The overhead benchmark's figures and tables (see ``benchmarks/overhead.py``): one configuration's row, the
statistics it is judged by, and the report as plain text."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class Row:
    """One configuration's figures in one loop benchmark (``None`` where not applicable)."""

    key: str
    label: str
    available: bool
    note: str = ""
    median_ms: float | None = None
    median_wall_ms: float | None = None
    added_us_per_iteration: float | None = None
    ratio: float | None = None
    ratio_ci95: float | None = None
    target: str | None = None
    met: bool | None = None


def ci95_of_median(values: Sequence[float]) -> float | None:
    """Half-width of an approximate 95% confidence interval of the median (normal approximation via the MAD);
    ``None`` with fewer than 3 values."""
    if len(values) < 3:
        return None
    centre = statistics.median(values)
    mad = statistics.median(abs(v - centre) for v in values) * 1.4826
    return 1.96 * 1.2533 * mad / len(values) ** 0.5


def met_target(target: str, row: Row) -> bool:
    assert row.ratio is not None and row.added_us_per_iteration is not None
    if target.endswith("us/iter"):
        return row.added_us_per_iteration < float(target.removeprefix("<").removesuffix("us/iter"))
    if target.startswith("ratio<="):
        return row.ratio <= float(target.removeprefix("ratio<="))
    if target == "ratio~1.00":  # no effect: 1.00 lies inside the confidence interval, or the ratio is within 0.5 %
        return abs(row.ratio - 1) <= max(row.ratio_ci95 or 0.0, 0.005)
    raise ValueError(f"unknown target {target!r}")


def formatted(value: float | None, spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def verdict_of(met: bool | None) -> str:
    return "(not judged)" if met is None else ("ok" if met else "MISSED")


def render(report: dict[str, Any]) -> str:
    """The report as plain-text tables."""
    env = report["environment"]
    load = "/".join(f"{x:.2f}" for x in env["load_avg_before"])
    lines = [
        f"rlm-events {env['rlm_events']} overhead: DSPy {env['dspy']}, Python {env['python']}, "
        f"{env['cpus']} CPUs, load {load} (1/5/15 min) at start",
    ]
    if env.get("dspy_stack_walk_replaced"):
        lines.append("DSPy's inspect.stack() per forward() lookup replaced by DSPy 3.4's check, in every configuration")
    for loop in report["loops"]:
        lines += [
            "",
            f"{loop['interpreter']}: {loop['iterations']} iterations per call, {loop['rounds']} interleaved rounds, "
            f"{loop['clock']} time; bare loop {loop['bare_us_per_iteration']:.0f} us/iteration",
            f"  {'configuration':<48} {'median ms':>9} {'+us/iter':>9} {'ratio':>7} {'±95%':>6}  target",
        ]
        for row in loop["configs"]:
            if not row["available"]:
                lines.append(f"  {row['label']:<48} {'n/a':>9} {'n/a':>9} {'n/a':>7} {'':>6}  {row['note']}")
                continue
            bare = row["key"] == "bare"
            target = f"{row['target']} {verdict_of(row['met'])}" if row["target"] else ""
            lines.append(
                f"  {row['label']:<48} {row['median_ms']:>9.2f} "
                f"{'—' if bare else format(row['added_us_per_iteration'], '+.1f'):>9} "
                f"{row['ratio']:>7.3f} {formatted(None if bare else row['ratio_ci95'], '.3f'):>6}  {target}"
                + (f"  ! {row['note']}" if row["note"] else "")
            )
    if report["memory"] is None:  # --loops-only
        return "\n".join(lines)
    memory = report["memory"]
    limit = report["memory_target_bytes"]
    lines += [
        "",
        f"Memory: {memory['runs']} calls of {memory['iterations']} iterations (tracemalloc), "
        f"process max RSS {memory['max_rss_bytes'] / 2**20:.0f} MiB",
    ]
    for key, label in (("bare", "bare"), ("busy_tapped", "3 middleware + 3 listeners + 1 tap, every stage")):
        m = memory[key]
        verdict = verdict_of(m["growth_bytes"] <= limit) if key != "bare" else ""
        lines.append(
            f"  {label:<48} growth {m['growth_bytes'] / 1024:>8.1f} KiB  peak {m['peak_bytes'] / 1024:>8.1f} KiB  "
            f"contexts/runs alive between calls {m['contexts_alive_between_calls']}/{m['runs_alive_between_calls']}"
            + (f"  target <=1 MiB {verdict}" if verdict else "")
        )
    left = memory["left_after_teardown"]
    lines.append(
        f"  after uninstrument + drop: {left['contexts']} contexts, {left['runs']} runs, "
        f"{left['receivers']} receivers left"
    )
    lines += ["", "Stage dispatch (one call)"]
    for row in report["dispatch"]:
        target = f"target <={row['target_us']:g} us {verdict_of(row['met'])}" if row["target_us"] is not None else ""
        lines.append(f"  {row['name']:<60} {row['us']:>7.3f} us  {target}")
    return "\n".join(lines)
