"""The `tool_call` stage around every tool the executed code can call (`llm_query`, `llm_query_batched`, the
user's tools, PredictRLM's `predict()`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from middleware import is_async_callable

from ..context import ToolCallContext
from .call import Call

TOOL_ATTR = "__rlm_events_tool__"  # on a wrapper: the tool it calls


def raw_tool(fn: Any) -> Any:
    """The tool behind a `tool_call` wrapper of `wrap_tool()` (`fn` itself for anything else)."""
    return fn.__dict__.get(TOOL_ATTR, fn) if hasattr(fn, "__dict__") else fn


def wrap_tool(call: Call, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` as the code of `call` calls it: through the `tool_call` stage (sync or async, as `fn` is)."""
    plan, module = call.plan, call.module

    def new_ctx(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ToolCallContext:
        index = call.frame.index if call.frame is not None else None
        return call.ctx(ToolCallContext, index, name=name, args=args, kwargs=kwargs, result=None)

    if is_async_callable(fn):  # also an object whose __call__ is async

        async def aterminal(c: ToolCallContext) -> ToolCallContext:
            c.result = await fn(*c.args, **c.kwargs)
            return c

        @functools.wraps(fn)
        async def atool(*args: Any, **kwargs: Any) -> Any:
            return (await plan.afire(new_ctx(args, kwargs), module, aterminal)).result

        atool.__dict__[TOOL_ATTR] = fn
        return atool

    def terminal(c: ToolCallContext) -> ToolCallContext:
        c.result = fn(*c.args, **c.kwargs)
        return c

    @functools.wraps(fn)
    def tool(*args: Any, **kwargs: Any) -> Any:
        return plan.fire(new_ctx(args, kwargs), module, terminal).result

    tool.__dict__[TOOL_ATTR] = fn
    return tool
