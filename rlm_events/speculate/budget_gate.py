"""Whether the run's Budgets let a call made ahead start: `BudgetGate`.

A call made ahead is held to the same Budgets as the real call it stands for: none starts once a Budget's token,
time or cost limit is reached, or past a tool's `max_tool_calls` cap (counting the calls already dispatched in
this pass); a hard Budget reserves each sub-LLM call made ahead as it reserves a real one.
"""

from __future__ import annotations

from typing import Any

from ..builtin import RLM_BUILTIN_TOOLS
from ..context import Run
from .ledger import Dispatch


class BudgetGate:
    """The Budgets installed on `run`'s instrumentation, and what the run has spent, for one dispatch pass."""

    def __init__(self, run: Run) -> None:
        from ..builtins.budget import Budget  # rlm_events.builtins re-exports Speculate: imported when used

        self.budgets = Budget.installed(run)
        self.spend: Any = Budget.spent(run)

    def refusal(self, dispatch: Dispatch, weight: int, per_tool: dict[str, int]) -> str | None:
        """Why a Budget would not let `dispatch` (`weight` LM calls) start (`None`: it may; a hard Budget's
        reservation is then held on `dispatch.reserved` until the call ends). `per_tool`: calls dispatched
        in this pass, by tool name."""
        spend = self.spend
        if not self.budgets or spend is None:
            return None
        for budget in self.budgets:
            refused = budget.admits(spend, dispatch.name, pending=per_tool.get(dispatch.name, 0))
            if refused is not None:
                return refused
        hard = next((b for b in self.budgets if b.hard), None)
        if hard is not None and dispatch.name in RLM_BUILTIN_TOOLS:  # reserved as the hard Budget reserves a call
            tokens, cost = weight * spend.largest_call_tokens, weight * spend.largest_call_cost_usd
            if not spend.reserve(tokens, cost, hard.max_tokens, hard.max_cost_usd):
                return "budget"
            dispatch.reserved = (spend, tokens, cost)
        return None


__all__ = ["BudgetGate"]
