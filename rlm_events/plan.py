"""What runs at a stage: its middleware chain, then its signal's receivers, then its taps (inline ones called here,
queued ones handed to `rlm_events.delivery`).

A `Plan` is an immutable snapshot of one [`Instrumentation`][rlm_events.Instrumentation]'s registrations. A call takes
the plan once when it starts and uses it to the end, so registrations made meanwhile never change a running call.

Which receivers hear the RLM being called is asked of `rlm_events._fast.blinker` (the fast path over blinker's
internals, with its fallback to `receivers_for()` / `has_receivers_for()`); receivers are then called as blinker's
`send()` calls them, except that what an `async def` receiver returns is run.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from blinker import NamedSignal

from middleware import Chain, add_note, middleware_name, run_sync

from ._failures import log_failure
from ._fast import blinker as _fast_blinker
from .context import StageContext, snapshot
from .delivery import DELIVERY, EventTime, stamp
from .signals import BY_STAGE
from .stages import Stage

logger = logging.getLogger("rlm_events")
_may_hear, _has_receivers_for = _fast_blinker.may_hear, _fast_blinker.hears
_kept_receivers = _fast_blinker.kept_receivers
_submit, _stamp = DELIVERY.submit, stamp

C = TypeVar("C", bound=StageContext)
TapFn = Callable[[Any], Any]


class Tap:
    """An observe-only callback: gets a read-only snapshot; its errors are logged, never raised.

    A tap is *queued* (its snapshots reach it on the delivery worker, `rlm_events.delivery`: the run never waits
    for it) unless it is *inline*: `inline=True`, or a class attribute `INLINE = True` on the callable. An inline tap
    runs on the caller's thread or loop (awaited under `acall`), must do no I/O and must have a bounded cost.

    The first failure of a tap in a call is logged at WARNING with its traceback; further failures of that tap
    in the same call at DEBUG, so a broken tap cannot flood the log.
    """

    __slots__ = ("_last_failed_run", "fn", "inline", "name", "stages")

    def __init__(self, fn: TapFn, stages: Iterable[Stage], inline: bool | None = None) -> None:
        self.fn, self.name, self.stages = fn, middleware_name(fn), frozenset(stages)
        if inline is None:  # declared by the callable, or by the tap object a bound method belongs to
            inline = bool(getattr(fn, "INLINE", False) or getattr(getattr(fn, "__self__", None), "INLINE", False))
        self.inline = inline
        self._last_failed_run: str | None = None

    def _failed(self, ctx: StageContext) -> None:
        first = self._last_failed_run != ctx.run.id
        self._last_failed_run = ctx.run.id
        log_failure(
            logger,
            logging.WARNING if first else logging.DEBUG,
            "tap %s failed at stage %r (run %s); the run continues",
            self.name,
            ctx.stage.value,
            ctx.run.id,
            traceback_too=first,
        )

    def deliver(self, snap: StageContext) -> None:
        """Call the tap with `snap` (already a snapshot), wherever this runs; an `async def` tap runs on the private
        loop. What it raises is logged."""
        try:
            out = self.fn(snap)
            if out is not None and inspect.isawaitable(out):
                run_sync(out)
        except Exception:
            self._failed(snap)

    def observe(self, ctx: StageContext) -> None:
        """Deliver a snapshot of `ctx` now, on this thread (an inline tap, sync caller)."""
        self.deliver(snapshot(ctx))

    async def aobserve(self, ctx: StageContext) -> None:
        """Deliver a snapshot of `ctx` now, awaiting an `async def` tap on the caller's loop (inline, async)."""
        snap = snapshot(ctx)
        try:
            out = self.fn(snap)
            if out is not None and inspect.isawaitable(out):
                await out
        except Exception:
            self._failed(snap)


def _queue(tap: Tap, ctx: StageContext, when: EventTime) -> None:
    """Hand a snapshot of `ctx` to `tap`'s delivery (never blocks: see `rlm_events.delivery`)."""
    _submit(tap.deliver, snapshot(ctx), when, ctx.stage is RUN_END)


def track_stage_signals() -> None:
    """Let the fast path read the stage signals' receivers where blinker keeps them, when it can (idempotent).

    Called by every new [`Instrumentation`][rlm_events.Instrumentation], not at import: importing rlm-events registers
    nothing.
    Until then (a plan with no instrumentation) receivers are found through blinker's public API: the same ones."""
    _fast_blinker.track(BY_STAGE.values())


RUN_END = Stage.RUN_END
# The stages that need an iteration's bookkeeping (its frame): the four iteration stages, and tool_call.
_FRAMED_STAGES = (Stage.PRE_ITERATION, Stage.PRE_EXECUTION, Stage.POST_EXECUTION, Stage.POST_ITERATION, Stage.TOOL_CALL)
_FRAMED_SIGNALS = tuple(BY_STAGE[stage] for stage in _FRAMED_STAGES)


def _hearing(heard: _fast_blinker.Kept, signal: NamedSignal, sender: Any) -> Sequence[Callable[..., Any]]:
    """The receivers of `signal` that hear `sender` now (`rlm_events._fast.blinker.receivers()`). Keeps in `heard`,
    the stage's `Kept` in a plan, the read that may answer the stage's next send for the same sender, or nothing.
    A kept read answers while no tracked signal announced a connection change since, the sender is the same and
    the signal is not muted: exactly what `receivers()` would then return. A plan used by several threads or
    senders at once only reads more often: each send reads `heard` once, and each read is whole."""
    found, heard.read = _kept_receivers(signal, sender)
    return found


def _failed(ctx: StageContext, exc: BaseException, sending: NamedSignal | None, tapped: Any) -> StageContext | None:
    """A stage failed with `exc` (raised by a receiver of `sending`, when set, and noted so). Returns the run_end
    the taps see when that stage is run_end and it has taps: the call raises `exc`, so it is the run's `error` (its
    stop_reason `"error"`); the prediction, if any, is kept for the record. No tap may keep the run open."""
    if sending is not None and isinstance(exc, Exception):
        add_note(exc, f"raised in a receiver of signal {sending.name!r}")
    if ctx.stage is not RUN_END or not tapped:
        return None
    return ctx.model_copy(update={"error": exc, "stop_reason": "error"})


class Plan:
    """Immutable registrations: a chain per stage and the taps of each stage.

    Everything a stage needs at fire time is resolved once here, when registrations change, not per call.
    """

    __slots__ = ("_any_busy", "_iterations_busy", "_route", "busy", "chains", "taps")

    def __init__(self, chains: dict[Stage, Chain[Any]] | None = None, taps: tuple[Tap, ...] = ()) -> None:
        self.chains = chains or {stage: Chain(label=stage.value) for stage in Stage}
        self.taps = {stage: tuple(t for t in taps if stage in t.stages) for stage in Stage}
        # Per stage: whether middleware or taps are registered (signal receivers are checked when firing).
        self.busy = {stage: bool(self.chains[stage]) or bool(self.taps[stage]) for stage in Stage}
        self._any_busy = any(self.busy.values())
        self._iterations_busy = any(self.busy[stage] for stage in _FRAMED_STAGES)
        # Per stage: its chain (None when empty: no __bool__ call per fire), its signal, its taps (None: none), and
        # the read of its receivers kept from its last send (see _hearing): the one thing here that changes.
        self._route = {
            stage: (self.chains[stage] or None, BY_STAGE[stage], self.taps[stage] or None, _fast_blinker.Kept())
            for stage in Stage
        }

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

    def iterations_idle_for(self, sender: Any) -> bool:
        """Whether nothing would see an iteration stage of `sender`'s call (no middleware, tap or receiver on
        pre_iteration, pre_execution, post_execution, post_iteration, or tool_call, whose context names the
        iteration): its iterations can run as DSPy's own, without the per-iteration bookkeeping."""
        if self._iterations_busy:
            return False
        return not any(s.receivers and _may_hear(s, sender) for s in _FRAMED_SIGNALS)

    def fire(self, ctx: C, sender: Any, terminal: Callable[[C], Any] | None = None) -> C:
        """Fold `ctx` through its stage's chain, send the signal, feed the taps (sync caller).

        What a middleware or receiver raises propagates (blinker's semantics) and the stage's taps do not see the
        stage, except at `run_end`: there the taps get it first, with that error as the run's `error`, so every tap
        sees every call end and keeps no state of it. Queued taps get their snapshots through
        `rlm_events.delivery`; inline taps are called here."""
        chain, signal, taps, heard = self._route[ctx.stage]
        sending = None  # the signal, once its receivers are being called: what they raise is noted as theirs
        try:
            if chain is not None:
                ctx = chain.run(ctx, terminal)
            elif terminal is not None:
                ctx = self.chains[ctx.stage].run(ctx, terminal)
            if signal.receivers:
                sending = signal
                # The receivers kept from this stage's last send while they still answer (see _hearing), in place:
                # this runs between two stretches of DSPy's own work, where every call costs its cold code.
                read = heard.read
                found: Sequence[Callable[..., Any]]
                if read is not None and read[0] == _fast_blinker.generation and read[1]() is sender:
                    found = () if signal.is_muted else read[3]
                else:
                    found = _hearing(heard, signal, sender)
                # As blinker's send(), but an async def receiver is not asked about: what it returns is run.
                for receiver in found:  # none while muted
                    out = receiver(sender, ctx=ctx)
                    if out is not None and inspect.isawaitable(out):
                        run_sync(out)  # on the private loop: the caller's loop is never nested
        except BaseException as exc:
            ended = _failed(ctx, exc, sending, taps)
            if ended is not None:
                self._feed(ended, taps)  # type: ignore[arg-type]  # ended: the stage has taps
            raise
        if taps:
            self._feed(ctx, taps)
        return ctx

    @staticmethod
    def _feed(ctx: StageContext, taps: tuple[Tap, ...]) -> None:
        """Each tap in registration order: an inline one now, a queued one its snapshot (so what an inline tap
        defers, a trace's line, keeps its place among the queued taps' events)."""
        when = _stamp()
        for tap in taps:
            if tap.inline:
                tap.observe(ctx)
            else:
                _queue(tap, ctx, when)

    async def afire(self, ctx: C, sender: Any, terminal: Callable[[C], Any] | None = None) -> C:
        """As `fire()`, for an async caller: middleware, receivers and inline taps may be `async def`, and are
        awaited on the caller's loop."""
        stage = ctx.stage
        _, signal, taps, heard = self._route[stage]
        sending = None
        try:
            ctx = await self.chains[stage].arun(ctx, terminal)
            if signal.receivers:
                sending = signal
                for receiver in _hearing(heard, signal, sender):  # as blinker's send_async(); sync ones in place
                    out = receiver(sender, ctx=ctx)
                    if out is not None and inspect.isawaitable(out):
                        await out
        except BaseException as exc:
            ended = _failed(ctx, exc, sending, taps)
            if ended is not None:
                await self._afeed(ended, taps)  # type: ignore[arg-type]
            raise
        if taps:
            await self._afeed(ctx, taps)
        return ctx

    @staticmethod
    async def _afeed(ctx: StageContext, taps: tuple[Tap, ...]) -> None:
        when = _stamp()
        for tap in taps:
            if tap.inline:
                await tap.aobserve(ctx)
            else:
                _queue(tap, ctx, when)
