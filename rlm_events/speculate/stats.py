"""What speculation did in one run: [`SpeculateStats`][rlm_events.speculate.stats.SpeculateStats]."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SpeculateStats:
    """What speculation did in one run: `Speculate.stats(run)` (`ctx.run.state["speculate"]`; final at
    `run_end`).

    Every dispatched call ends as exactly one of `claimed`, `wasted` or `cancelled` (it had not started when
    its real call came, or when the iteration ended: the real call was made instead, and it cost nothing);
    `speculated` counts the ones that started. `missed` counts real calls of speculable tools
    that no dispatched call matched; `refused` predictions that were not dispatched, by reason (`per_iteration`,
    `budget`, `tool_cap`, `max_llm_calls`, `arguments`). LM use of the calls made ahead is also on the run's
    [`Usage`][rlm_events.lm_usage.Usage] (`speculative_*` and `wasted_*`), which traces and spans report.
    """

    planned: int = 0
    dispatched: int = 0
    speculated: int = 0
    claimed: int = 0
    wasted: int = 0
    cancelled: int = 0
    missed: int = 0
    timeouts: int = 0
    failed: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    lm_calls: int = 0
    """LM calls the dispatched calls made (a batched call makes one per prompt)."""
    tokens: int = 0
    claimed_tokens: int = 0
    wasted_lm_calls: int = 0
    wasted_tokens: int = 0
    wasted_cost_usd: float = 0.0
    repl: str = ""
    """How the shadow read the REPL's variables: `namespace`, `probe`, `off` or `unavailable: <why>`."""
    repl_reads: int = 0
    planning_seconds: float = 0.0
    waited_seconds: float = 0.0
    """Time real calls spent waiting for a dispatched call to finish before claiming it."""
    running_at_end: int = 0
    """Wasted calls still running when the run ended (after waiting up to `timeout`): their LM use is added to the
    run's counts when they finish."""

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


__all__ = ["SpeculateStats"]
