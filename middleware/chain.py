"""An ordered, immutable chain of `(ctx, next)` middleware, after koa-compose's `dispatch(i)`.

A middleware is `mw(ctx, next)`. It may change `ctx`, call `next(ctx)` at most once to run the rest of the
chain, act after `next` returns, or return without calling `next` to short-circuit everything inside it. It
returns the context (usually `return next(ctx)`). The first middleware added is the outermost. The innermost
`next` calls the chain's *terminal* (the real work, if any) or returns the context unchanged.

The sync/async rule:

* `def` middleware get a plain `next`: `ctx = next(ctx)`.
* `async def` middleware get an awaitable `next`: `ctx = await next(ctx)`.
* [`Chain.run()`][middleware.chain.Chain.run] (sync caller): `def` middleware run inline. From the first `async def`
  middleware on, the
  rest of the chain runs to completion on a private event loop in a helper thread (see `middleware._loop`);
  the caller's loop, if it has one, is never nested or blocked on itself.
* [`Chain.arun()`][middleware.chain.Chain.arun] (async caller): `async def` middleware are awaited on the caller's loop.
  A `def`
  middleware runs inline when nothing async follows it; when something does, it runs in a worker thread
  (`asyncio.to_thread`) and its `next` hands the async remainder back to the caller's loop, so every
  `async def` middleware always runs on the caller's loop.

Chains are immutable: [`Chain.append()`][middleware.chain.Chain.append] and
[`Chain.remove()`][middleware.chain.Chain.remove] return new chains, so a caller that took a
chain keeps running exactly that chain while others change theirs.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar, Union

from ._loop import run_sync
from .errors import ChainError, add_note, middleware_name

C = TypeVar("C")
Terminal = Callable[[C], Union[C, Awaitable[C]]]
Middleware = Callable[[C, Any], Any]

_PASSED_THROUGH = "__middleware_passed_through__"


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """Whether calling `fn` returns a coroutine by declaration (`async def` function or `__call__`)."""
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)


def _check_arity(fn: Callable[..., Any], name: str) -> None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins and some C callables cannot be inspected; accept them
        return
    try:
        signature.bind(None, None)
    except TypeError:
        raise TypeError(f"middleware {name} must accept exactly (ctx, next); its signature is {signature}") from None


class _Entry:
    """One registered middleware with what the dispatcher needs to know about it, computed once."""

    __slots__ = ("fn", "is_async", "name")

    def __init__(self, fn: Middleware[Any]) -> None:
        if not callable(fn):
            raise TypeError(f"middleware must be callable, got {type(fn).__name__}: {fn!r}")
        self.fn, self.name, self.is_async = fn, middleware_name(fn), is_async_callable(fn)
        _check_arity(fn, self.name)

    def checked(self, out: Any, ctx: Any, label: str) -> Any:
        if out is ctx or isinstance(out, type(ctx)):
            return out
        raise TypeError(
            f"middleware {self.name} at stage {label!r} returned {type(out).__name__}; it must return the "
            f"{type(ctx).__name__} it was given (`return next(ctx)`, or `return ctx` to short-circuit)"
        )

    def failed(self, exc: BaseException, label: str) -> None:
        if isinstance(exc, Exception) and not getattr(exc, _PASSED_THROUGH, False):
            add_note(exc, f"raised in middleware {self.name} at stage {label!r}")


class _Next:
    """The `next` handed to one middleware: callable once; marks errors from deeper in as passed through."""

    __slots__ = ("_called", "_entry", "_label", "_rest")

    def __init__(self, entry: _Entry, label: str, rest: Callable[[Any], Any]) -> None:
        self._entry, self._label, self._rest, self._called = entry, label, rest, False

    def _claim(self) -> None:
        if self._called:
            raise ChainError(f"middleware {self._entry.name} at stage {self._label!r} called next() more than once")
        self._called = True

    def __call__(self, ctx: Any) -> Any:
        self._claim()
        try:
            return self._rest(ctx)
        except Exception as exc:
            setattr(exc, _PASSED_THROUGH, True)
            raise


class _AsyncNext(_Next):
    __slots__ = ()

    async def __call__(self, ctx: Any) -> Any:  # type: ignore[override]
        self._claim()
        try:
            return await self._rest(ctx)
        except Exception as exc:
            setattr(exc, _PASSED_THROUGH, True)
            raise


class Chain(Generic[C]):
    """An immutable, ordered sequence of middleware; `label` (e.g. a stage name) appears in every error."""

    __slots__ = ("_entries", "_last_async", "label")

    def __init__(self, middleware: Iterable[Middleware[C]] = (), *, label: str = "chain") -> None:
        entries: Iterable[Any] = middleware
        self._entries: tuple[_Entry, ...] = tuple(m if isinstance(m, _Entry) else _Entry(m) for m in entries)
        self._last_async = max((i for i, e in enumerate(self._entries) if e.is_async), default=-1)
        self.label = label

    def append(self, mw: Middleware[C]) -> Chain[C]:
        """Return a new chain with `mw` innermost; raises `TypeError` now if `mw` cannot be a middleware."""
        return Chain((*self._entries, _Entry(mw)), label=self.label)  # type: ignore[arg-type]

    def remove(self, mw: Middleware[C]) -> Chain[C]:
        """Return a new chain without any registration of `mw` (unchanged if it was not there)."""
        return Chain((e for e in self._entries if e.fn is not mw), label=self.label)  # type: ignore[misc]

    def __iter__(self) -> Iterator[Middleware[C]]:
        return (e.fn for e in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def __repr__(self) -> str:
        return f"Chain({[e.name for e in self._entries]!r}, label={self.label!r})"

    def run(self, ctx: C, terminal: Terminal[C] | None = None, _index: int = 0) -> C:
        """Fold `ctx` through the chain from a sync caller and return the resulting context."""
        # The hot path of every stage, run between two stretches of DSPy's own work (so with cold caches): as few
        # Python frames and objects as possible. `next` is a closure, not an object with an __init__; the innermost
        # `next` returns at once; the usual outcome (`out is ctx`) skips the awaitable and type checks.
        entries = self._entries
        count = len(entries)
        if _index == count:
            if terminal is None:
                return ctx
            out = terminal(ctx)
            return out if out is ctx or not inspect.isawaitable(out) else run_sync(out)  # type: ignore[return-value]
        entry = entries[_index]
        if entry.is_async:
            return run_sync(self._adispatch(_index, ctx, terminal))
        deeper = _index + 1  # where `next` goes on; 0: nowhere, it hands the context back (innermost, no terminal)
        if deeper == count and terminal is None:
            deeper = 0
        called = False

        def next(ctx: C) -> C:  # the name middleware see in tracebacks
            nonlocal called
            if called:
                raise ChainError(f"middleware {entry.name} at stage {self.label!r} called next() more than once")
            called = True
            if not deeper:
                return ctx
            try:
                return self.run(ctx, terminal, deeper)
            except Exception as exc:
                setattr(exc, _PASSED_THROUGH, True)  # raised deeper in: the middleware it passed through adds no note
                raise

        try:
            out = entry.fn(ctx, next)
            if out is not ctx and inspect.isawaitable(out):  # a `def` that returned a coroutine
                out = run_sync(out)
        except BaseException as exc:
            entry.failed(exc, self.label)
            raise
        return out if out is ctx else entry.checked(out, ctx, self.label)

    async def arun(self, ctx: C, terminal: Terminal[C] | None = None) -> C:
        """Fold `ctx` through the chain from an async caller and return the resulting context."""
        return await self._adispatch(0, ctx, terminal)

    async def _adispatch(self, i: int, ctx: C, terminal: Terminal[C] | None) -> C:
        if i == len(self._entries):
            out = ctx if terminal is None else terminal(ctx)
            return await out if inspect.isawaitable(out) else out  # type: ignore[return-value]
        entry, label = self._entries[i], self.label
        try:
            if entry.is_async:
                out = await entry.fn(ctx, _AsyncNext(entry, label, lambda c: self._adispatch(i + 1, c, terminal)))
            elif i > self._last_async and (terminal is None or not is_async_callable(terminal)):
                # Nothing async below: run the remainder inline, exactly as a sync caller would.
                out = entry.fn(ctx, _Next(entry, label, lambda c: self.run(c, terminal, i + 1)))
            else:
                loop = asyncio.get_running_loop()

                def bridge(c: C) -> C:  # runs in the worker thread; the async remainder runs on the caller's loop
                    return asyncio.run_coroutine_threadsafe(self._adispatch(i + 1, c, terminal), loop).result()

                out = await asyncio.to_thread(entry.fn, ctx, _Next(entry, label, bridge))
            if inspect.isawaitable(out):
                out = await out
        except BaseException as exc:
            entry.failed(exc, label)
            raise
        return entry.checked(out, ctx, label)


def compose(*middleware: Middleware[C], label: str = "chain") -> Chain[C]:
    """Build a [`Chain`][middleware.chain.Chain] from middleware in order (first = outermost)."""
    return Chain(middleware, label=label)
