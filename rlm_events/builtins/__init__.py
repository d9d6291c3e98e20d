"""Ready-made middleware for ``dspy.RLM``: each a ``(ctx, next)`` object registered with one line.

>>> from rlm_events.builtins import CodeGuard, Budget, RetryHint, HistoryTrimmer, ToolCallCache
>>> # CodeGuard("strict").install(events); Budget(max_cost_usd=0.5).install(events); ...

=================  ==================  ====================================================================
built-in           stage(s)            what it does
=================  ==================  ====================================================================
CodeGuard          pre_execution       refuses code that breaks a GuardPolicy (AST check), tells the LM why
Budget             run_start,          stops the run at an iteration / time / token / cost limit; caps and
                   tool_call,          denies tool calls by name; meters real LM usage per call
                   post_iteration,
                   run_end
RetryHint          post_execution      appends a hint (failing line, close names) to ``[Error]`` results
HistoryTrimmer     pre_iteration       shortens old outputs to a head/tail preview (or drops them)
ToolCallCache      tool_call           memoises identical ``llm_query`` (or named tool) calls in a run
Speculate          run_start,          makes the sub-LLM and pure tool calls the code is about to make ahead,
                   pre_execution,      concurrently; real calls claim exact matches
                   tool_call,
                   post_execution,
                   run_end
=================  ==================  ====================================================================
"""

from typing import TYPE_CHECKING, Any

from ._base import Builtin, ToolDenied
from .budget import Budget
from .cache import ToolCacheState, ToolCallCache
from .retry import RetryHint
from .trim import HistoryTrimmer, TrimStats
from .usage import Spend, UsageMeter, current_run

if TYPE_CHECKING:
    from ..guard import CodeGuard, GuardPolicy, Violation
    from ..speculate import Speculate, SpeculateStats

# Built-ins that live in packages of their own (which subclass Builtin, so they import this package): re-exported
# here on first use, so either package can be imported first.
_ELSEWHERE = {"CodeGuard": "rlm_events.guard", "GuardPolicy": "rlm_events.guard", "Violation": "rlm_events.guard"}
_ELSEWHERE.update(Speculate="rlm_events.speculate", SpeculateStats="rlm_events.speculate")


def __getattr__(name: str) -> Any:
    if name in _ELSEWHERE:
        import importlib

        value = getattr(importlib.import_module(_ELSEWHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Budget",
    "Builtin",
    "CodeGuard",
    "GuardPolicy",
    "HistoryTrimmer",
    "RetryHint",
    "Speculate",
    "SpeculateStats",
    "Spend",
    "ToolCacheState",
    "ToolCallCache",
    "ToolDenied",
    "TrimStats",
    "UsageMeter",
    "Violation",
    "current_run",
]
