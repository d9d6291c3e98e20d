"""What runs at a stage: its middleware chain, then its signal's receivers, then its taps.

A :class:`Plan` is an immutable snapshot of one :class:`~rlm_events.Instrumentation`'s registrations. A call takes
the plan once when it starts and uses it to the end, so registrations made meanwhile never change a running call.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from types import MethodType
from typing import Any, TypeVar

from blinker import NamedSignal
from blinker import base as _blinker

from middleware import Chain, add_note, middleware_name, run_sync

from .context import StageContext, snapshot
from .signals import BY_STAGE
from .stages import Stage

logger = logging.getLogger("rlm_events")
_ANY_ID = getattr(_blinker, "ANY_ID", 0)  # the key of receivers connected to every sender


def _ids_are_plain() -> bool:
    """Whether this blinker keys a plain object by ``id(obj)`` in ``_by_sender`` (1.8 and 1.9 do): only then may
    :func:`_may_hear` look there directly; otherwise it asks blinker's public API."""
    make_id, probe = getattr(_blinker, "make_id", None), object()
    return callable(make_id) and make_id(probe) == id(probe) and isinstance(getattr(_blinker, "ANY_ID", None), int)


_PLAIN_IDS = _ids_are_plain()

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


def _sync_receiver(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
    return lambda *args, **kwargs: run_sync(fn(*args, **kwargs))


def _async_receiver(fn: Callable[..., Any]) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def receiver(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    return receiver


def _noted(exc: Exception, signal: NamedSignal) -> None:
    add_note(exc, f"raised in a receiver of signal {signal.name!r}")


def _may_hear(signal: NamedSignal, sender: Any) -> bool:
    """Whether a receiver may be connected for ``sender`` or for ANY (it may be dead or disconnected: a cheap first
    filter, so that receivers connected only to other RLMs cost next to nothing).

    blinker's ``has_receivers_for()`` answers this too, but computes the sender's id with ``inspect.ismethod()``,
    which on a ``dspy.Module`` goes through DSPy's Python-level ``__getattribute__``: for the plain objects RLMs
    are, the id is ``id(sender)``, looked up directly where this blinker keeps it.
    """
    by_sender = getattr(signal, "_by_sender", None) if _PLAIN_IDS else None
    if not isinstance(by_sender, dict) or issubclass(type(sender), (str, int, MethodType)):
        return signal.has_receivers_for(sender)
    return bool(by_sender.get(_ANY_ID)) or bool(by_sender.get(id(sender)))


def _has_receivers_for(signal: NamedSignal, sender: Any) -> bool:
    # receivers_for() resolves the live receivers connected to ``sender`` or to ANY: exact, after the cheap filter.
    return _may_hear(signal, sender) and next(iter(signal.receivers_for(sender)), None) is not None


class Plan:
    """Immutable registrations: a chain per stage and the taps of each stage.

    Everything a stage needs at fire time is resolved once here, when registrations change, not per call.
    """

    __slots__ = ("_any_busy", "_busy", "_route", "chains", "taps")

    def __init__(self, chains: dict[Stage, Chain[Any]] | None = None, taps: tuple[Tap, ...] = ()) -> None:
        self.chains = chains or {stage: Chain(label=stage.value) for stage in Stage}
        self.taps = {stage: tuple(t for t in taps if stage in t.stages) for stage in Stage}
        self._busy = {stage: bool(self.chains[stage]) or bool(self.taps[stage]) for stage in Stage}
        self._any_busy = any(self._busy.values())
        # Per stage: the chain, or None when it is empty (no __bool__ call per fire), its signal and its taps.
        self._route = {stage: (self.chains[stage] or None, BY_STAGE[stage], self.taps[stage]) for stage in Stage}

    @property
    def all_taps(self) -> tuple[Tap, ...]:
        return tuple(dict.fromkeys(t for taps in self.taps.values() for t in taps))

    def wants(self, stage: Stage, sender: Any = None) -> bool:
        """Whether anything would see ``stage``: middleware, a tap, or a signal receiver; cheap (~0.2 µs).

        With ``sender`` (the RLM being called), only receivers that would hear that sender count, so receivers
        connected to other RLMs do not pull this one off its fast path.
        """
        if self._busy[stage]:
            return True
        signal = BY_STAGE[stage]
        if not signal.receivers:
            return False
        return sender is None or _has_receivers_for(signal, sender)

    @property
    def idle(self) -> bool:
        """Nothing registered and no receiver on any stage signal: a call can skip instrumentation entirely."""
        return not self._any_busy and not any(s.receivers for s in BY_STAGE.values())

    def idle_for(self, sender: Any) -> bool:
        """As :attr:`idle`, counting only the receivers that would hear ``sender`` (the RLM being called)."""
        if self._any_busy:
            return False
        return not any(s.receivers and _has_receivers_for(s, sender) for s in BY_STAGE.values())

    def fire(self, ctx: C, sender: Any, terminal: Callable[[C], Any] | None = None) -> C:
        """Fold ``ctx`` through its stage's chain, send the signal, feed the taps (sync caller)."""
        chain, signal, taps = self._route[ctx.stage]
        if chain is not None:
            ctx = chain.run(ctx, terminal)
        elif terminal is not None:
            ctx = self.chains[ctx.stage].run(ctx, terminal)
        # Receivers connected only to other RLMs cost a blinker lookup per send: skip it cheaply.
        if signal.receivers and _may_hear(signal, sender):
            try:
                signal.send(sender, _async_wrapper=_sync_receiver, ctx=ctx)
            except Exception as exc:
                _noted(exc, signal)
                raise
        for tap in taps:
            tap.observe(ctx)
        return ctx

    async def afire(self, ctx: C, sender: Any, terminal: Callable[[C], Any] | None = None) -> C:
        """As :meth:`fire`, for an async caller: middleware may be ``async def``; the signal uses ``send_async``."""
        stage = ctx.stage
        _, signal, taps = self._route[stage]
        ctx = await self.chains[stage].arun(ctx, terminal)
        if signal.receivers and _may_hear(signal, sender):
            try:
                await signal.send_async(sender, _sync_wrapper=_async_receiver, ctx=ctx)
            except Exception as exc:
                _noted(exc, signal)
                raise
        for tap in taps:
            await tap.aobserve(ctx)
        return ctx
