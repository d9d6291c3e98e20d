"""How long each stage of instrumented `dspy.RLM` calls takes: count, total, p50 and p95, per call or overall.

```pycon
>>> timings = StageTimings().install(events)  # doctest: +SKIP
>>> print(timings.table())  # doctest: +SKIP
stage            count   total ms    p50 ms    p95 ms    max ms
run_start            1       69.5      69.5      69.5      69.5
pre_iteration        3      301.5      99.8     102.3     102.5
...

```

What a stage's duration is, exactly
-----------------------------------
An *event* is the moment a stage's taps run, i.e. after its middleware chain and signal receivers finished.

* The loop stages `run_start`, `pre_iteration`, `pre_execution`, `post_execution`, `post_iteration` and
  `extract`: the time from the stage's event to the next loop-stage event of the same call (`tool_call`
  events are not counted as "next"). So `pre_iteration` measures the LM writing the code, `pre_execution`
  the code running (tool calls included), `post_execution` DSPy folding the result into the history,
  `run_start` the interpreter setup before the first iteration, and whichever stage comes last before
  `run_end` the rest of the call (interpreter shutdown). Each also includes the middleware of the stage that
  follows it.
* `run_end`: the whole call, `RunEndContext.duration_s` (from the call's start to its end, failed calls
  included).
* `tool_call`: the tool call itself, measured by a `tool_call` middleware around the rest of the chain (the
  middleware installed after this one and the real call). Tool calls happen inside `pre_execution`'s time.

So for one call, the loop stages' durations add up exactly to the time from `run_start`'s event to
`run_end`'s event (about `run_end`'s duration: that starts a little earlier, at the call's start, and ends a
little earlier, before `run_end`'s middleware), and the count of each stage is the number of its events
(`tool_call`: of its calls that returned or raised).
Percentiles interpolate linearly between the closest ranks (as numpy's default does).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

from ..context import RunEndContext, StageContext, ToolCallContext
from ..stages import Stage
from ._tool_tap import ToolAwareTap


@dataclass(frozen=True)
class StageStats:
    """The durations of one stage, in seconds."""

    count: int
    total_s: float
    p50_s: float
    p95_s: float
    max_s: float


def percentile(sorted_values: list[float], q: float) -> float:
    """The `q`-th percentile (0-100) of non-empty, ascending `sorted_values`, interpolating linearly."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = (len(sorted_values) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def _stats(samples: list[float]) -> StageStats:
    ordered = sorted(samples)
    return StageStats(
        count=len(ordered),
        total_s=math.fsum(ordered),
        p50_s=percentile(ordered, 50),
        p95_s=percentile(ordered, 95),
        max_s=ordered[-1],
    )


class StageTimings(ToolAwareTap):
    """Collects stage durations (defined in the module docstring) of every call it observes. Thread-safe.

    Inline (it times the events as they happen, on the run's thread): a clock read and a few dict operations under
    a lock per event, no I/O.

    Args:
        max_runs: keep the samples of this many most recent calls (`None`: all); overall statistics cover them.
    """

    INLINE = True

    def __init__(self, *, max_runs: int | None = 1000) -> None:
        if max_runs is not None and max_runs < 1:
            raise ValueError(f"max_runs must be at least 1 or None, got {max_runs}")
        self.max_runs = max_runs
        self._lock = threading.Lock()
        self._samples: OrderedDict[str, dict[Stage, list[float]]] = OrderedDict()
        self._last_event: dict[str, tuple[Stage, float]] = {}  # calls in progress: their latest loop event
        self._tool_middleware = self._time_tool  # one object, so uninstall() can find it

    # -- registration ---------------------------------------------------------------------------------------

    # -- collecting -----------------------------------------------------------------------------------------

    def __call__(self, ctx: StageContext) -> None:
        """Record the event `ctx` (the tap entry point)."""
        now = time.perf_counter()
        run_id = ctx.run.id
        with self._lock:
            previous = self._last_event.pop(run_id, None)
            if previous is not None:
                self._add(run_id, previous[0], now - previous[1])
            if isinstance(ctx, RunEndContext):
                self._add(run_id, Stage.RUN_END, ctx.duration_s)
            else:
                self._last_event[run_id] = (ctx.stage, now)
                self._samples_of(run_id)  # a call shows up in run_ids from its first event

    def _time_tool(self, ctx: ToolCallContext, next: Any) -> ToolCallContext:
        started = time.perf_counter()
        try:
            return next(ctx)  # type: ignore[no-any-return]
        finally:
            took = time.perf_counter() - started
            with self._lock:
                self._add(ctx.run.id, Stage.TOOL_CALL, took)

    def _samples_of(self, run_id: str) -> dict[Stage, list[float]]:
        samples = self._samples.get(run_id)
        if samples is None:
            samples = self._samples[run_id] = {}
            if self.max_runs is not None:
                while len(self._samples) > self.max_runs:
                    dropped, _ = self._samples.popitem(last=False)
                    self._last_event.pop(dropped, None)
        return samples

    def _add(self, run_id: str, stage: Stage, seconds: float) -> None:
        self._samples_of(run_id).setdefault(stage, []).append(seconds)

    # -- reading --------------------------------------------------------------------------------------------

    @property
    def run_ids(self) -> list[str]:
        """The calls with samples, oldest first."""
        with self._lock:
            return list(self._samples)

    def stats(self) -> dict[Stage, StageStats]:
        """Statistics per stage over every kept call, in stage order; stages never seen are left out."""
        with self._lock:
            merged: dict[Stage, list[float]] = {}
            for samples in self._samples.values():
                for stage, values in samples.items():
                    merged.setdefault(stage, []).extend(values)
        return {stage: _stats(merged[stage]) for stage in Stage if merged.get(stage)}

    def for_run(self, run_id: str) -> StageTimings:
        """A detached copy holding only the samples of call `run_id`; `KeyError` if it has none."""
        with self._lock:
            samples = self._samples.get(run_id)
            if samples is None:
                raise KeyError(f"no timings for run {run_id!r}; known runs: {list(self._samples)}")
            copy = StageTimings(max_runs=1)
            copy._samples[run_id] = {stage: list(values) for stage, values in samples.items()}
        return copy

    def to_dict(self) -> dict[str, Any]:
        """`{"runs": n, "stages": {stage: {count, total_s, p50_s, p95_s, max_s}}}` (JSON-ready)."""
        stats = self.stats()
        with self._lock:
            runs = len(self._samples)
        return {"runs": runs, "stages": {stage.value: asdict(s) for stage, s in stats.items()}}

    def table(self) -> str:
        """A plain-text table, one row per stage seen, durations in milliseconds."""
        header = f"{'stage':<15} {'count':>6} {'total ms':>10} {'p50 ms':>9} {'p95 ms':>9} {'max ms':>9}"
        rows = [header]
        for stage, s in self.stats().items():
            rows.append(
                f"{stage.value:<15} {s.count:>6} {s.total_s * 1e3:>10.1f} {s.p50_s * 1e3:>9.1f} "
                f"{s.p95_s * 1e3:>9.1f} {s.max_s * 1e3:>9.1f}"
            )
        return "\n".join(rows)

    def reset(self) -> None:
        """Forget every sample (calls in progress keep being timed from their next event on)."""
        with self._lock:
            self._samples.clear()

    def __repr__(self) -> str:
        with self._lock:
            return f"<StageTimings runs={len(self._samples)}>"


__all__ = ["StageStats", "StageTimings", "percentile"]
