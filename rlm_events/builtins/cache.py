"""`ToolCallCache`: answer a repeated identical tool call of one run from that run's memory."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from ..builtin import Builtin, ToolDenied, check_tool_names
from ..context import ToolCallContext
from ..stages import Stage

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

_STATE_KEY = "tool_cache"  # where a run's ToolCacheState lives in run.state (documented, read by no other module)


@dataclass
class ToolCacheState:
    """One run's cache (`ctx.run.state["tool_cache"]`): results by call key, and hit/miss counts."""

    hits: int = 0
    misses: int = 0
    results: dict[str, Any] = field(default_factory=dict, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class ToolCallCache(Builtin):
    """A `tool_call` middleware that memoises calls of the named tools within one run (opt-in).

    `ToolCallCache()` caches `llm_query`; `ToolCallCache(tools=("llm_query", "search"))` also a user tool.
    The key is the tool name with its positional and keyword arguments (as canonical JSON, so equal values give
    equal keys; `llm_query("a")` and `llm_query(prompt="a")` are different keys).

    Guarantees: the first call with a key runs the rest of the chain (and the tool); later calls with the same key
    in the same run get a copy of its result without calling the tool. Failed calls and budget denials
    ([`Budget`][rlm_events.builtins.Budget]'s `[Budget] …` results) are never cached. Results live in
    `ctx.run.state["tool_cache"]` ([`ToolCacheState`][rlm_events.builtins.cache.ToolCacheState]) and die with the run;
    concurrent runs never share.
    Install it before a Budget so hits are not counted against tool caps.
    """

    STAGES: ClassVar[tuple[Stage, ...]] = (Stage.TOOL_CALL,)

    def __init__(self, tools: Iterable[str] = ("llm_query",)) -> None:
        if isinstance(tools, str):
            raise TypeError(f"ToolCallCache(tools=...) takes a collection of tool names; use ({tools!r},)")
        names = frozenset(tools)
        if not names or not all(isinstance(n, str) and n.isidentifier() for n in names):
            raise ValueError(f"ToolCallCache(tools=...) needs one or more tool names, got {sorted(map(str, names))}")
        self.tools = names

    def check(self, events: Instrumentation) -> None:
        check_tool_names("ToolCallCache(tools=...)", sorted(self.tools), events)

    def __call__(self, ctx: Any, next: Any) -> Any:
        if not isinstance(ctx, ToolCallContext):
            raise self._wrong_stage(ctx)
        if ctx.name not in self.tools:
            return next(ctx)
        key = _key(ctx.name, ctx.args, ctx.kwargs)
        if key is None:  # arguments that have no stable identity: do not guess
            return next(ctx)
        state = ctx.run.state.setdefault(_STATE_KEY, ToolCacheState())
        with state.lock:
            cached = key in state.results
            if cached:
                state.hits += 1
                ctx.result = copy.deepcopy(state.results[key])
            else:
                state.misses += 1
        if cached:
            return ctx
        ctx = next(ctx)
        if not _is_denial(ctx.result):
            with state.lock:
                state.results.setdefault(key, copy.deepcopy(ctx.result))
        return ctx

    def __repr__(self) -> str:
        return f"ToolCallCache(tools={tuple(sorted(self.tools))!r})"


def _key(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    try:
        return json.dumps([name, list(args), kwargs], sort_keys=True, ensure_ascii=False, allow_nan=True)
    except (TypeError, ValueError):
        return None


def _is_denial(result: Any) -> bool:
    if isinstance(result, ToolDenied):
        return True
    return isinstance(result, list) and any(isinstance(r, ToolDenied) for r in result)


__all__ = ["ToolCacheState", "ToolCallCache"]
