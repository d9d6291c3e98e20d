"""Hooks as middleware: a sync or async hook called at its stage, its output checked and applied."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import dspy
from pydantic import BaseModel

from middleware import is_async_callable, middleware_name, run_sync

from ..instrumentation import Instrumentation
from ..stages import Stage
from ._kinds import Kind, always, nothing
from .tracing import HookSpan, hook_span

_NO_SPAN = nullcontext(HookSpan(Stage.PRE_ITERATION))  # outputs() is a no-op: the span never started

# -- hooks as middleware --------------------------------------------------------------------------------------


class HookMiddleware:
    """A hook (or, for pre_iteration without a hook, only the recorder the execution hooks need) as middleware.

    Being an instance of this class is what marks the middleware
    [`disable_rlm_hooks()`][rlm_events.hooks.disable_rlm_hooks] removes, so the hooks
    of an RLM are found in its own plan, deep copies included (they share their plan's middleware).
    `owns_instrumentation` says [`enable_rlm_hooks()`][rlm_events.hooks.enable_rlm_hooks] created the instrumentation.
    """

    __call__: Callable[[Any, Any], Any]  # sync or async, by subclass

    def __init__(self, kind: Kind, hook: Callable[..., Any] | None, owns_instrumentation: bool) -> None:
        self.kind, self.hook, self.owns_instrumentation = kind, hook, owns_instrumentation
        self.tap: Any = None  # the MlflowTap enable_rlm_hooks installed with these hooks, if any
        described = middleware_name(hook) if hook is not None else "(records variables)"
        # Middleware errors and notes name the middleware by __module__/__qualname__: name the user's hook there.
        self.__module__ = "rlm_events.hooks"  # the public home, not this private module
        self.__qualname__ = f"{kind.keyword}[{described}]"

    def __repr__(self) -> str:
        return f"<{self.__qualname__}>"

    def _hook_for(self, ctx: Any) -> Callable[..., Any] | None:
        """The hook to call at this `ctx`, if any (the recorder has none; post_iteration skips final ones)."""
        return self.hook if self.hook is not None and self.kind.applies(ctx) else None

    def _span(self, arguments: tuple[Any, ...]) -> AbstractContextManager[HookSpan]:
        """The hook call's `rlm_hook/<stage>` MLflow span when MLflow is traced with these hooks (else none)."""
        return hook_span(self.kind.stage, arguments) if self.tap is not None else _NO_SPAN

    def _checked(self, out: Any) -> BaseModel | None:
        if out is None or isinstance(out, self.kind.output):
            return out
        raise TypeError(
            f"{self.kind.keyword} {middleware_name(self.hook)} returned {type(out).__name__}; "
            f"it must return {self.kind.output.__name__} or None"
        )

    def _settle(self, ctx: Any, out: Any, span: HookSpan) -> None:
        """Check the hook's output `out`, fold it into `ctx` and record it on the hook's span."""
        checked = self._checked(out)
        if checked is not None:
            self.kind.apply(ctx, checked)
        span.outputs(out)


def _ran(out: Any) -> Any:
    """What a sync-registered hook returned, run on the private loop if it is awaitable ("return a coroutine and
    the system handles it")."""
    return run_sync(out) if inspect.isawaitable(out) else out


async def _awaited(out: Any) -> Any:
    return await out if inspect.isawaitable(out) else out


class SyncHookMiddleware(HookMiddleware):
    def __init__(self, kind: Kind, hook: Callable[..., Any] | None, owns_instrumentation: bool) -> None:
        super().__init__(kind, hook, owns_instrumentation)
        # Called at every iteration: what the kind does, read once; a step that does nothing is not called.
        self._applies = None if kind.applies is always else kind.applies
        self._after = None if kind.after is nothing else kind.after
        self._arguments, self._apply, self._output = kind.arguments, kind.apply, kind.output

    def __call__(self, ctx: Any, next: Callable[[Any], Any]) -> Any:
        hook, applies = self.hook, self._applies
        if hook is not None and (applies is None or applies(ctx)):
            if self.tap is None:  # untraced: no span, and an output model or None is not asked if it is awaitable
                out = hook(*self._arguments(ctx))
                if out is not None and type(out) is not self._output:
                    out = self._checked(_ran(out))
                if out is not None:
                    self._apply(ctx, out)
            else:
                with self._span(arguments := self._arguments(ctx)) as span:
                    self._settle(ctx, _ran(hook(*arguments)), span)
        ctx = next(ctx)
        if self._after is not None:
            self._after(ctx)
        return ctx


class AsyncHookMiddleware(HookMiddleware):  # the async twin: the hook and the rest of the chain are awaited
    async def __call__(self, ctx: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        hook = self._hook_for(ctx)
        if hook is not None:
            with self._span(arguments := self.kind.arguments(ctx)) as span:
                self._settle(ctx, await _awaited(hook(*arguments)), span)
        ctx = await next(ctx)
        self.kind.after(ctx)
        return ctx


def check_hook(kind: Kind, hook: Any) -> None:
    if not callable(hook):
        raise TypeError(f"{kind.keyword} must be callable or None, got {type(hook).__name__}: {hook!r}")
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):  # some builtins cannot be inspected; accept them
        return
    try:
        signature.bind(*kind.parameters)
    except TypeError:
        raise TypeError(
            f"{kind.keyword} {middleware_name(hook)} must accept ({', '.join(kind.parameters)}) positionally; "
            f"its signature is {signature}"
        ) from None


def adapt(kind: Kind, hook: Callable[..., Any] | None, owns_instrumentation: bool) -> HookMiddleware:
    cls = AsyncHookMiddleware if hook is not None and is_async_callable(hook) else SyncHookMiddleware
    return cls(kind, hook, owns_instrumentation)


def hooks_on(events: Instrumentation) -> Iterator[HookMiddleware]:
    for stage in Stage:
        for mw in events.plan.chains[stage]:
            if isinstance(mw, HookMiddleware):
                yield mw


def require_rlm(rlm: Any, function: str) -> None:
    if not isinstance(rlm, dspy.RLM):
        raise TypeError(f"{function}() expects a dspy.RLM instance, got {type(rlm).__name__}: {rlm!r}")
