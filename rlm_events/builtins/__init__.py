"""Ready-made middleware for `dspy.RLM`: each a `(ctx, next)` object registered with one line.

```pycon
>>> from rlm_events.builtins import CodeGuard, Budget, RetryHint, HistoryTrimmer, ToolCallCache
>>> # CodeGuard("strict").install(events); Budget(max_cost_usd=0.5).install(events); ...

```

| built-in | stage(s) | what it does |
| --- | --- | --- |
| [`CodeGuard`][rlm_events.builtins.CodeGuard] | pre_execution | refuses code that breaks a [`GuardPolicy`][rlm_events.builtins.GuardPolicy] (AST check), tells the LM why |
| [`Budget`][rlm_events.builtins.Budget] | run_start, tool_call, post_iteration, run_end | stops the run at an iteration / time / token / cost limit; caps and denies tool calls by name; meters real LM usage per call |
| [`RetryHint`][rlm_events.builtins.RetryHint] | post_execution | appends a hint (failing line, close names) to `[Error]` results |
| [`HistoryTrimmer`][rlm_events.builtins.HistoryTrimmer] | pre_iteration | shortens old outputs to a head/tail preview (or drops them) |
| [`ToolCallCache`][rlm_events.builtins.ToolCallCache] | tool_call | memoises identical `llm_query` (or named tool) calls in a run |
| [`Speculate`][rlm_events.builtins.Speculate] | run_start, pre_execution, tool_call, post_execution, run_end | makes the sub-LLM and pure tool calls the code is about to make ahead, concurrently; real calls claim exact matches |
"""  # noqa: E501

from ..builtin import Builtin, ToolDenied
from ..guard import CodeGuard, GuardPolicy, Violation
from ..speculate import Speculate, SpeculateStats
from .budget import Budget
from .cache import ToolCacheState, ToolCallCache
from .retry import RetryHint
from .trim import HistoryTrimmer, TrimStats
from .usage import Spend, UsageMeter, current_run

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
