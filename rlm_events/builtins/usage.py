"""What one Budget-metered RLM call has spent: [`Spend`][rlm_events.builtins.usage.Spend], the run's
[`Usage`][rlm_events.lm_usage.Usage] plus
iterations, time and tool calls. LM usage is parsed and attributed by [`rlm_events.lm_usage`][rlm_events.lm_usage], the
one meter
every built-in and tap reads (see there for the attribution policy).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..lm_usage import METER, Usage, UsageMeter, meter_lm
from ..runtime import current_run, lms_of

_LOCK = threading.Lock()  # guards the tool counters; contention is one increment per tool call


@dataclass
class Spend(Usage):
    """What one RLM call has spent so far, and why its [`Budget`][rlm_events.builtins.Budget] stopped it.

    Lives at `ctx.run.state["budget"]` (see [`Budget.spent()`][rlm_events.builtins.budget.Budget.spent]); it is also the
    run's `state["usage"]`, so
    its LM counts are the ones every trace and span reports.
    """

    iterations: int = 0
    seconds: float = 0.0
    tool_calls: dict[str, int] = field(default_factory=dict)
    denied_tool_calls: dict[str, int] = field(default_factory=dict)
    stopped_by: str | None = None
    """`"iterations"`, `"seconds"`, `"tokens"` or `"cost_usd"`: the limit that ended the run, if any."""
    reason: str | None = None
    """The same, in words: `"tokens: 1,532 spent, limit 1,000"`."""
    started: float = field(default_factory=time.monotonic, repr=False)
    largest_iteration_tokens: int = 0
    """The most tokens one iteration used (its action call and its code's sub-LLM calls)."""
    largest_iteration_cost_usd: float = 0.0
    iteration_start: tuple[int, float] = (0, 0.0)
    """Tokens and cost spent when the current iteration started."""
    reserved: tuple[int, float] = (0, 0.0)
    """Tokens and cost a hard Budget set aside for sub-LLM calls in flight."""

    def elapsed(self) -> float:
        """Seconds since the call started."""
        return time.monotonic() - self.started

    def reserve_tool(self, name: str, cap: int | None) -> bool:
        """Count one call of tool `name` unless that would exceed `cap`; whether it was counted (atomic, so
        concurrent tool calls of one run cannot overshoot the cap)."""
        with _LOCK:
            used = self.tool_calls.get(name, 0)
            if cap is not None and used >= cap:
                return False
            self.tool_calls[name] = used + 1
            return True

    def end_iteration(self) -> None:
        """Record what the iteration that just ended used, and start counting the next one."""
        with _LOCK:
            tokens, cost = self.tokens - self.iteration_start[0], self.cost_usd - self.iteration_start[1]
            self.largest_iteration_tokens = max(self.largest_iteration_tokens, tokens)
            self.largest_iteration_cost_usd = max(self.largest_iteration_cost_usd, cost)
            self.iteration_start = (self.tokens, self.cost_usd)

    def reserve(self, tokens: int, cost: float, max_tokens: int | None, max_cost: float | None) -> bool:
        """Set `tokens` and `cost` aside for calls about to start, unless what is spent and already set aside
        leaves no room for them (atomic: concurrent calls of one run cannot all take the last room)."""
        with _LOCK:
            held_tokens, held_cost = self.reserved
            if max_tokens is not None and self.tokens + held_tokens + tokens > max_tokens:
                return False
            if max_cost is not None and self.cost_usd + held_cost + cost > max_cost:
                return False
            self.reserved = (held_tokens + tokens, held_cost + cost)
            return True

    def release(self, tokens: int, cost: float) -> None:
        """Give back what [`reserve()`][rlm_events.builtins.usage.Spend.reserve] set aside, once the calls ended
        (their real usage is counted)."""
        with _LOCK:
            self.reserved = (self.reserved[0] - tokens, self.reserved[1] - cost)

    def count_denied(self, name: str) -> None:
        with _LOCK:
            self.denied_tool_calls[name] = self.denied_tool_calls.get(name, 0) + 1


__all__ = ["METER", "Spend", "UsageMeter", "current_run", "lms_of", "meter_lm"]
