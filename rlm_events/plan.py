"""What runs at a stage: its middleware chain, then its signal's receivers, then its taps.

A `Plan` is an immutable snapshot of one [`Instrumentation`][rlm_events.Instrumentation]'s registrations. A call takes
the plan once when it starts and uses it to the end, so registrations made meanwhile never change a running call.

Which receivers hear the RLM being called is asked of `rlm_events._fast.blinker` (the fast path over blinker's
internals, with its fallback to `receivers_for()` / `has_receivers_for()`); receivers are then called as blinker's
`send()` calls them, except that what an `async def` receiver returns is run.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from blinker import NamedSignal

from middleware import Chain, add_note, middleware_name, run_sync

from ._fast import blinker as _fast_blinker
from .context import StageContext, snapshot
from .signals import BY_STAGE
from .stages import Stage

logger = logging.getLogger("rlm_events")
_receivers, _may_hear, _has_receivers_for = _fast_blinker.receivers, _fast_blinker.may_hear, _fast_blinker.hears

C = TypeVar("C", bound=StageContext)
TapFn = Callable[[Any], Any]


class Tap:
    """An observe-only callback: gets a read-only snapshot; its errors are logged, never raised.

    The first failure of a tap in a call is logged at WARNING with its traceback; further failures of that tap
    in the same call at DEBUG, so a broken tap cannot flood the log.
    """

    __slots__ = ("_last_failed_run", "fn", "name", "stages")

    def __init__(self, fn: TapFn, stages: Iterable[Stage]) -> None:
        self.fn, self.name, self.stages = fn, middleware_name(fn), frozenset(stages)
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
            if out is not None and inspect.isawaitable(out):
                run_sync(out)
        except Exception:
            self._failed(ctx)

    async def aobserve(self, ctx: StageContext) -> None:
        try:
            out = self.fn(snapshot(ctx))
            if out is not None and inspect.isawaitable(out):
                await out
        except Exception:
            self._failed(ctx)


def track_stage_signals() -> None:
    """Let the fast path read the stage signals' receivers where blinker keeps them, when it can (idempotent).

    Called by every new [`Instrumentation`][rlm_events.Instrumentation], not at import: importing rlm-events registers
    nothing.
    Until then (a plan with no instrumentation) receivers are found through blinker's public API: the same ones."""
    _fast_blinker.track(BY_STAGE.values())


def _noted(exc: Exception, signal: NamedSignal) -> None:
    add_note(exc, f"raised in a receiver of signal {signal.name!r}")


RUN_END = Stage.RUN_END


def _ended_by(ctx: StageContext, exc: BaseException) -> StageContext:
    """The run_end the taps see when its middleware or a receiver raised `exc`: the call raises it, so it is the
    run's `error` (its stop_reason `"error"`); the prediction, if any, is kept for the record."""
    return ctx.model_copy(update={"error": exc, "stop_reason": "error"})


class Plan:
    """Immutable registrations: a chain per stage and the taps of each stage.

    Everything a stage needs at fire time is resolved once here, when registrations change, not per call.
    """

    __slots__ = ("_any_busy", "_route", "busy", "chains", "taps")

    def __init__(self, chains: dict[Stage, Chain[Any]] | None = None, taps: tuple[Tap, ...] = ()) -> None:
        self.chains = chains or {stage: Chain(label=stage.value) for stage in Stage}
        self.taps = {stage: tuple(t for t in taps if stage in t.stages) for stage in Stage}
        # Per stage: whether middleware or taps are registered (signal receivers are checked when firing).
        self.busy = {stage: bool(self.chains[stage]) or bool(self.taps[stage]) for stage in Stage}
        self._any_busy = any(self.busy.values())
        # Per stage: the chain, or None when it is empty (no __bool__ call per fire), its signal and its taps.
        self._route = {stage: (self.chains[stage] or None, BY_STAGE[stage], self.taps[stage]) for stage in Stage}

    @property
    def all_taps(self) -> tuple[Tap, ...]:
        return tuple(dict.fromkeys(t for taps in self.taps.values() for t in taps))

    def wants(self, stage: Stage, sender: Any = None) -> bool:
        """Whether anything may see `stage`: middleware, a tap, or a signal receiver; cheap (~0.1 µs).

        With `sender` (the RLM being called), only receivers connected to that sender or to every sender count,
        so receivers connected to other RLMs do not pull this one off its fast path. A weakly connected receiver
        that died counts until blinker drops it on the next send: that costs one unused context, never an event.
        """
        if self.busy[stage]:
            return True
        signal = BY_STAGE[stage]
        if not signal.receivers:
            return False
        return sender is None or _may_hear(signal, sender)

    @property
    def idle(self) -> bool:
        """Nothing registered and no receiver on any stage signal: a call can skip instrumentation entirely."""
        return not self._any_busy and not any(s.receivers for s in BY_STAGE.values())

    def idle_for(self, sender: Any) -> bool:
        """As `idle`, counting only the receivers that would hear `sender` (the RLM being called)."""
        if self._any_busy:
            return False
        return not any(s.receivers and _has_receivers_for(s, sender) for s in BY_STAGE.values())

    def fire(self, ctx: C, sender: Any, terminal: Callable[[C], Any] | None = None) -> C:
        """Fold `ctx` through its stage's chain, send the signal, feed the taps (sync caller).

        What a middleware or receiver raises propagates (blinker's semantics) and the stage's taps do not see the
        stage, except at `run_end`: there the taps get it first, with that error as the run's `error`, so every tap
        sees every call end and keeps no state of it."""
        chain, signal, taps = self._route[ctx.stage]
        try:
            if chain is not None:
                ctx = chain.run(ctx, terminal)
            elif terminal is not None:
                ctx = self.chains[ctx.stage].run(ctx, terminal)
            if signal.receivers:
                receivers = _receivers(signal, sender)  # none while muted
                try:
                    # As blinker's send(), but an async def receiver is not asked about: what it returns is run.
                    for receiver in receivers:
                        out = receiver(sender, ctx=ctx)
                        if out is not None and inspect.isawaitable(out):
                            run_sync(out)  # on the private loop: the caller's loop is never nested
                except Exception as exc:
                    _noted(exc, signal)
                    raise
        except BaseException as exc:
            if taps and ctx.stage is RUN_END:  # the call's last stage: no tap may keep the run open
                ended = _ended_by(ctx, exc)
                for tap in taps:
                    tap.observe(ended)
            raise
        for tap in taps:
            tap.observe(ctx)
        return ctx

    # The async twin of fire: middleware, receivers and taps are awaited on the caller's loop.
    async def afire(self, ctx: C, sender: Any, terminal: Callable[[C], Any] | None = None) -> C:
        """As `fire()`, for an async caller: middleware and receivers may be `async def`, and are awaited."""
        stage = ctx.stage
        _, signal, taps = self._route[stage]
        try:
            ctx = await self.chains[stage].arun(ctx, terminal)
            if signal.receivers:
                receivers = _receivers(signal, sender)  # none while muted
                try:
                    for receiver in receivers:  # as blinker's send_async(); sync receivers are called in place
                        out = receiver(sender, ctx=ctx)
                        if out is not None and inspect.isawaitable(out):
                            await out
                except Exception as exc:
                    _noted(exc, signal)
                    raise
        except BaseException as exc:
            if taps and stage is RUN_END:  # as in fire(): every tap sees every run_end
                ended = _ended_by(ctx, exc)
                for tap in taps:
                    await tap.aobserve(ended)
            raise
        for tap in taps:
            await tap.aobserve(ctx)
        return ctx
