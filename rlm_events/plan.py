"""What runs at a stage: its middleware chain, then its signal's receivers, then its taps.

A :class:`Plan` is an immutable snapshot of one :class:`~rlm_events.Instrumentation`'s registrations. A call takes
the plan once when it starts and uses it to the end, so registrations made meanwhile never change a running call.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, TypeVar

from blinker import NamedSignal

from middleware import Chain, add_note, is_async_callable, middleware_name, run_sync

from .context import StageContext, snapshot
from .signals import BY_STAGE
from .stages import Stage

logger = logging.getLogger("rlm_events")

C = TypeVar("C", bound=StageContext)
TapFn = Callable[[Any], Any]


class Tap:
    """An observe-only callback: gets a read-only snapshot; its errors are logged, never raised.

    The first failure of a tap in a call is logged at WARNING with its traceback; further failures of that tap
    in the same call at DEBUG, so a broken tap cannot flood the log.
    """

    __slots__ = ("_last_failed_run", "fn", "is_async", "name", "stages")

    def __init__(self, fn: TapFn, stages: Iterable[Stage]) -> None:
        self.fn, self.name, self.stages = fn, middleware_name(fn), frozenset(stages)
        self.is_async = is_async_callable(fn)
        self._last_failed_run: str | None = None

    def _failed(self, ctx: StageContext) -> None:
        first = self._last_failed_run != ctx.run.id
        self._last_failed_run = ctx.run.id
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "tap %s failed at stage %r (run %s); the run continues",
            self.name,
            ctx.stage.value,
            ctx.run.id,
            exc_info=first,
        )

    def observe(self, ctx: StageContext) -> None:
        try:
            out = self.fn(snapshot(ctx))
            if inspect.isawaitable(out):
                run_sync(out)
        except Exception:
            self._failed(ctx)

    async def aobserve(self, ctx: StageContext) -> None:
        try:
            out = self.fn(snapshot(ctx))
            if inspect.isawaitable(out):
                await out
        except Exception:
            self._failed(ctx)


def _sync_receiver(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    return lambda *args, **kwargs: run_sync(fn(*args, **kwargs))


def _async_receiver(fn: Callable[..., Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def receiver(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return receiver


def _noted(exc: Exception, signal: NamedSignal) -> None:
    add_note(exc, f"raised in a receiver of signal {signal.name!r}")


class Plan:
    """Immutable registrations: a chain per stage and the taps of each stage."""

    __slots__ = ("_busy", "chains", "taps")

    def __init__(self, chains: dict[Stage, Chain[Any]] | None = None, taps: tuple[Tap, ...] = ()) -> None:
        self.chains = chains or {stage: Chain(label=stage.value) for stage in Stage}
        self.taps = {stage: tuple(t for t in taps if stage in t.stages) for stage in Stage}
        self._busy = {stage: bool(self.chains[stage]) or bool(self.taps[stage]) for stage in Stage}

    @property
    def all_taps(self) -> tuple[Tap, ...]:
        return tuple(dict.fromkeys(t for taps in self.taps.values() for t in taps))

    def wants(self, stage: Stage) -> bool:
        """Whether anything (middleware, tap, or any signal receiver) would see ``stage``; cheap."""
        return self._busy[stage] or bool(BY_STAGE[stage].receivers)

    @property
    def idle(self) -> bool:
        """Nothing registered and no receiver on any stage signal: a call can skip instrumentation entirely."""
        return not any(self._busy.values()) and not any(s.receivers for s in BY_STAGE.values())

    def fire(self, ctx: C, sender: Any, terminal: Callable[[C], Any] | None = None) -> C:
        """Fold ``ctx`` through its stage's chain, send the signal, feed the taps (sync caller)."""
        stage = ctx.stage
        ctx = self.chains[stage].run(ctx, terminal)
        signal = BY_STAGE[stage]
        if signal.receivers:
            try:
                signal.send(sender, _async_wrapper=_sync_receiver, ctx=ctx)
            except Exception as exc:
                _noted(exc, signal)
                raise
        for tap in self.taps[stage]:
            tap.observe(ctx)
        return ctx

    async def afire(self, ctx: C, sender: Any, terminal: Callable[[C], Any] | None = None) -> C:
        """As :meth:`fire`, for an async caller: middleware may be ``async def``; the signal uses ``send_async``."""
        stage = ctx.stage
        ctx = await self.chains[stage].arun(ctx, terminal)
        signal = BY_STAGE[stage]
        if signal.receivers:
            try:
                await signal.send_async(sender, _sync_wrapper=_async_receiver, ctx=ctx)
            except Exception as exc:
                _noted(exc, signal)
                raise
        for tap in self.taps[stage]:
            await tap.aobserve(ctx)
        return ctx
