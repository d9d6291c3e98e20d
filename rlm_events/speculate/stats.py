"""What speculation did in one run: [`SpeculateStats`][rlm_events.speculate.stats.SpeculateStats]."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..lm_usage import Usage


class _Spent:
    """A read-only attribute of `SpeculateStats`: one count of its `spent` ledger."""

    def __init__(self, field_name: str, doc: str) -> None:
        self.field_name, self.__doc__ = field_name, doc

    def __get__(self, stats: Any, owner: type | None = None) -> Any:
        return self if stats is None else getattr(stats.spent, self.field_name)


@dataclass
class SpeculateStats:
    """What speculation did in one run: `Speculate.stats(run)` (`ctx.run.state["speculate"]`; final at
    `run_end`).

    Every dispatched call ends as exactly one of `claimed`, `wasted` or `cancelled` (it had not started when
    its real call came, or when the iteration ended: the real call was made instead, and it cost nothing);
    `speculated` counts the ones that started. `missed` counts real calls of speculable tools
    that no dispatched call matched; `refused` predictions that were not dispatched, by reason (`per_iteration`,
    `budget`, `tool_cap`, `max_llm_calls`, `arguments`, `recorded`: a resumed durable run's record answers it). LM
    use of the calls made ahead is also on the run's [`Usage`][rlm_events.lm_usage.Usage] (`speculative_*` and
    `wasted_*`), which traces and spans report.

    Mispredictions: `wasted` calls were made ahead for nothing (the code made other calls, or none);
    `misprediction_rate` is their share of the decided calls that ran. `past_unknown` counts the calls planned past
    a call the planner could not follow (`Speculate(past_unknown_calls=True)`, the default), and
    `past_unknown_wasted` those of them wasted: what planning past unknown calls cost.
    """

    planned: int = 0
    """Calls the shadow found the code will make, with arguments it could compute."""
    dispatched: int = 0
    """Predictions started ahead (the others are in `refused`)."""
    refused: dict[str, int] = field(default_factory=dict)
    """Predictions not dispatched, by reason."""
    speculated: int = 0
    claimed: int = 0
    """Dispatched calls whose result a real call took."""
    wasted: int = 0
    """Dispatched calls that ran for nothing (no real call matched, or they failed or timed out)."""
    cancelled: int = 0
    """Dispatched calls that had not started when their real call came or their iteration ended: never run."""
    missed: int = 0
    """Real calls of speculable tools that no dispatched call matched."""
    timeouts: int = 0
    """Claims that waited `timeout` seconds for their call made ahead, then made the call themselves."""
    failed: int = 0
    """Dispatched calls that raised: their real calls were made by the code."""
    past_unknown: int = 0
    """Dispatched calls planned past a call the planner could not follow."""
    past_unknown_wasted: int = 0
    """Of those, the wasted ones: what planning past unknown calls cost."""
    spent: Usage = field(default_factory=Usage)
    """The LM use of the settled calls made ahead (`speculative_*`, and `wasted_*` of those wasted); the
    properties below read it."""
    repl: str = ""
    """How the shadow read the REPL's variables: `namespace`, `probe`, `off` or `unavailable: <why>`."""
    repl_reads: int = 0
    stream: str = ""
    """How the actions' code was read: `""` (when complete, at `pre_execution`: `Speculate(stream=False)`, or no
    action streamed yet), `"streamed"` (while the LM wrote it, every action so far) or `"fallback: <why>"` (why
    the last action that was not streamed could not be)."""
    streamed_chunks: int = 0
    dispatched_streaming: int = 0
    """Dispatched calls started while the LM was still writing the code."""
    planning_seconds: float = 0.0
    waited_seconds: float = 0.0
    """Time real calls spent waiting for a dispatched call to finish before claiming it."""
    running_at_end: int = 0
    """Wasted calls still running when the run ended (after waiting up to `timeout`): their LM use is added to the
    run's counts when they finish."""

    lm_calls = _Spent(
        "speculative_lm_calls", "LM calls the dispatched calls made (a batched call makes one per prompt)."
    )
    tokens = _Spent("speculative_tokens", "Tokens of the dispatched calls, claimed or wasted.")
    wasted_lm_calls = _Spent("wasted_lm_calls", "LM calls of the wasted calls.")
    wasted_tokens = _Spent("wasted_tokens", "Tokens of the wasted calls.")
    wasted_cost_usd = _Spent("wasted_cost_usd", "What the wasted calls cost (as far as LiteLLM could price them).")

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1

    @property
    def claimed_tokens(self) -> int:
        """Tokens of the claimed calls."""
        return self.spent.speculative_tokens - self.spent.wasted_tokens

    @property
    def misprediction_rate(self) -> float:
        """Wasted calls over the calls made ahead that were claimed or wasted (0.0 when there were none)."""
        decided = self.claimed + self.wasted
        return self.wasted / decided if decided else 0.0


__all__ = ["SpeculateStats"]
