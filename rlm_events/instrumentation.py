"""The user-facing handle: register middleware and taps; `instrument()` / `uninstrument()`."""

from __future__ import annotations

import inspect
import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from dspy import RLM, Module

from . import _patch
from ._fast import blinker as _fast_blinker
from .plan import Plan, Tap, track_stage_signals
from .signals import BY_STAGE
from .stages import Stage

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("rlm_events")
StageLike = Stage | str


class Instrumentation:
    """The registrations shared by every `dspy.RLM` that [`instrument()`][rlm_events.instrumentation.instrument] patched
    for one target.

    Thread-safe: registrations replace an immutable `Plan` under a lock (copy-on-write),
    so a running call keeps the plan it started with and is never affected by changes made meanwhile.
    """

    def __init__(self) -> None:
        track_stage_signals()  # the first instrumentation, not the import, turns the receivers' fast path on
        self._lock = threading.Lock()
        self._plan = Plan()
        self._modules: weakref.WeakValueDictionary[int, RLM] = weakref.WeakValueDictionary()
        self._receivers: list[tuple[Stage, Callable[..., Any]]] = []  # connected through connect(), for clear()
        self._deaths: dict[int, weakref.finalize[Any, Any]] = {}  # per module: let its receivers go when it dies

    @property
    def plan(self) -> Plan:
        """The current registrations (immutable)."""
        return self._plan

    @property
    def modules(self) -> tuple[RLM, ...]:
        """The `dspy.RLM` instances this instrumentation is attached to."""
        return tuple(self._modules.values())

    def use(self, stage: StageLike, mw: F) -> F:
        """Append `mw(ctx, next)` to `stage`'s chain (innermost so far); return `mw`.

        Raises [`UnknownStageError`][rlm_events.UnknownStageError] for an unknown stage and `TypeError` for something
        that is
        not callable as `(ctx, next)`, now rather than mid-run.
        """
        self._register([Stage.parse(stage)], mw)
        return mw

    def _register(self, stages: list[Stage], mw: Callable[..., Any]) -> None:
        self._swap((), [(stage, mw) for stage in stages])  # all stages or none: see replace()

    def replace(self, old: Iterable[Callable[..., Any]], new: Iterable[tuple[StageLike, Callable[..., Any]]]) -> None:
        """Remove every registration of each middleware in `old`, then append each `(stage, mw)` of `new`, in
        one change: a call starting meanwhile sees all of the old middleware or all of the new, never a mix.

        Validates `new` as [`use()`][rlm_events.instrumentation.Instrumentation.use] does; on a bad entry nothing
        changes.
        """
        self._swap(tuple(old), [(Stage.parse(stage), mw) for stage, mw in new])

    def _swap(self, old: tuple[Callable[..., Any], ...], new: list[tuple[Stage, Callable[..., Any]]]) -> None:
        for stage, mw in new:
            # A middleware object may declare the stages it serves (STAGES); anywhere else it would do nothing.
            declared = getattr(mw, "STAGES", None)
            if isinstance(declared, (tuple, list, frozenset, set)) and declared and stage not in declared:
                expected = ", ".join(Stage.parse(s).value for s in declared)
                raise TypeError(
                    f"{type(mw).__name__} is a middleware for stage(s) {expected}; it cannot be used at stage "
                    f"{stage.value!r}"
                )
        # One plan swap for everything, so a call starting meanwhile sees the change whole or not at all.
        with self._lock:
            chains = dict(self._plan.chains)
            for mw in old:
                for stage in Stage:
                    chains[stage] = chains[stage].remove(mw)
            for stage, mw in new:
                try:
                    chains[stage] = chains[stage].append(mw)
                except TypeError as exc:
                    raise TypeError(f"cannot use {mw!r} at stage {stage.value!r}: {exc}") from None
            self._plan = Plan(chains, self._plan.all_taps)

    def middleware(self, *stages: StageLike) -> Callable[[F], F]:
        """Decorator form of [`use()`][rlm_events.instrumentation.Instrumentation.use] for one or more stages:
        `@events.middleware(Stage.PRE_EXECUTION)`."""
        if not stages or (len(stages) == 1 and callable(stages[0]) and not isinstance(stages[0], str)):
            raise TypeError(
                "middleware(): a stage is missing; name the stage(s) to register on, "
                "e.g. @events.middleware(Stage.PRE_EXECUTION)"
            )
        resolved = [Stage.parse(s) for s in stages]

        def register(mw: F) -> F:
            self._register(resolved, mw)
            return mw

        return register

    def remove(self, stage: StageLike, mw: Callable[..., Any]) -> None:
        """Undo [`use()`][rlm_events.instrumentation.Instrumentation.use]: remove `mw` from `stage`'s chain. Unknown
        middleware are ignored."""
        stage = Stage.parse(stage)
        with self._lock:
            self._plan = Plan({**self._plan.chains, stage: self._plan.chains[stage].remove(mw)}, self._plan.all_taps)

    def remove_all(self, mw: Callable[..., Any]) -> None:
        """Remove every registration of middleware `mw`, on every stage. Unknown middleware are ignored."""
        self._swap((mw,), [])

    def tap(self, *args: Any, inline: bool | None = None) -> Any:
        """`tap(stages, fn)`: observe `stages` (a stage or an iterable of them) with `fn(snapshot)`;
        `tap(fn)`: observe every stage. Returns `fn`; [`untap()`][rlm_events.instrumentation.Instrumentation.untap]
        removes it.

        `fn` gets a read-only snapshot after middleware and receivers ran. Whatever it raises is logged and
        never reaches the run. By default the snapshot is queued and `fn` runs on the delivery worker thread, so the
        run never waits for it ([`rlm_events.flush()`][rlm_events.delivery.flush] waits for it);
        `inline=True` (or `INLINE = True` on `fn`) calls it on the caller's thread instead, for work that must happen
        at the event and costs little. `async def` taps run on a private loop (inline ones are awaited in
        `aforward`).
        """
        if len(args) == 1:
            stages, fn = None, args[0]
        elif len(args) == 2:
            stages, fn = args
        else:
            raise TypeError(f"tap() takes (stages, fn) or (fn), got {len(args)} arguments")
        if not callable(fn) or (len(args) == 2 and callable(stages) and not isinstance(stages, str)):
            raise TypeError(
                f"tap(stages, fn) needs a callable last, got {type(fn).__name__}; e.g. events.tap(['run_end'], print)"
            )
        try:
            inspect.signature(fn).bind(None)
        except TypeError:
            raise TypeError(f"tap {fn!r} must accept exactly one argument (the context snapshot)") from None
        except ValueError:  # not introspectable
            pass
        if stages is None:
            resolved = list(Stage)
        elif isinstance(stages, (Stage, str)):
            resolved = [Stage.parse(stages)]
        else:
            resolved = [Stage.parse(s) for s in stages]
        with self._lock:
            self._plan = Plan(self._plan.chains, (*self._plan.all_taps, Tap(fn, resolved, inline)))
        return fn

    def untap(self, fn: Callable[..., Any]) -> None:
        """Undo [`tap()`][rlm_events.instrumentation.Instrumentation.tap]: remove every tap registered with `fn`."""
        with self._lock:
            self._plan = Plan(self._plan.chains, tuple(t for t in self._plan.all_taps if t.fn is not fn))

    def connect(self, stage: StageLike, receiver: F, *, weak: bool = True) -> F:
        """Connect `receiver(sender, ctx=...)` to `stage`'s signal for every RLM of this instrumentation (and
        RLMs copied from them); return it. [`disconnect()`][rlm_events.instrumentation.Instrumentation.disconnect]
        and [`clear()`][rlm_events.instrumentation.Instrumentation.clear] undo it."""
        stage = Stage.parse(stage)
        signal = BY_STAGE[stage]
        for module in self.modules:
            signal.connect(receiver, sender=module, weak=weak)
        with self._lock:
            self._receivers.append((stage, receiver))
        return receiver

    def disconnect(self, stage: StageLike, receiver: Callable[..., Any]) -> None:
        """Undo [`connect()`][rlm_events.instrumentation.Instrumentation.connect]: `receiver` no longer hears `stage`
        from the RLMs of this instrumentation."""
        stage = Stage.parse(stage)
        _disconnected(stage, receiver, self.modules)
        with self._lock:
            self._receivers = [(s, r) for s, r in self._receivers if (s, r) != (stage, receiver)]

    def clear(self) -> None:
        """Remove every middleware and tap, and disconnect every receiver
        [`connect()`][rlm_events.instrumentation.Instrumentation.connect] connected."""
        with self._lock:
            self._plan = Plan()
            receivers, self._receivers = self._receivers, []
        for stage, receiver in receivers:
            _disconnected(stage, receiver, self.modules)

    def __repr__(self) -> str:
        chains = {s.value: len(c) for s, c in self._plan.chains.items() if c}
        return f"<Instrumentation modules={len(self._modules)} middleware={chains} taps={len(self._plan.all_taps)}>"

    # -- the patch layer's Handle protocol ----------------------------------------------------------------------

    def attached(self, rlm: RLM) -> None:
        """Called by the patch layer: `rlm` now runs with these registrations. If it is garbage-collected while
        instrumented, the receivers [`connect()`][rlm_events.instrumentation.Instrumentation.connect] connected for
        it are let go with it (blinker would keep them in the stage signals' `receivers`)."""
        self._modules[id(rlm)] = rlm
        death = self._deaths[id(rlm)] = weakref.finalize(rlm, self._died, id(rlm))
        death.atexit = False  # at exit the signals go with the process: nothing to let go

    def detached(self, rlm: RLM) -> None:
        """Called by the patch layer: `rlm` no longer runs with these registrations; the receivers
        [`connect()`][rlm_events.instrumentation.Instrumentation.connect] connected for it are disconnected
        (`uninstrument()` leaves nothing behind)."""
        self._modules.pop(id(rlm), None)
        death = self._deaths.pop(id(rlm), None)
        if death is not None:
            death.detach()
        for stage, receiver in list(self._receivers):
            _disconnected(stage, receiver, [rlm])

    def _died(self, rlm_id: int) -> None:
        """An attached RLM was garbage-collected (its id not reused yet): the receivers connected for it go too,
        unless they are connected elsewhere (to another RLM, or to every sender)."""
        self._deaths.pop(rlm_id, None)
        for stage, receiver in list(self._receivers):
            try:
                _fast_blinker.release(BY_STAGE[stage], receiver, dead_sender=rlm_id)
            except Exception:  # run by the garbage collector, anywhere: never raise there
                logger.debug("rlm-events: could not let a receiver of a collected RLM go", exc_info=True)

    def copy(self) -> Instrumentation:
        """A new instrumentation with the same registrations and no modules (a deep copy of an instrumented RLM
        gets one)."""
        clone = Instrumentation()
        clone._plan = self._plan
        return clone


def _disconnected(stage: Stage, receiver: Callable[..., Any], modules: Iterable[RLM]) -> None:
    """Disconnect `receiver` from `stage`'s signal for each of `modules`; then, if it is connected to no sender at
    all, from the signal itself: blinker keeps a receiver disconnected sender by sender in `signal.receivers` (and
    alive, when connected with `weak=False`) until it is disconnected from every sender at once."""
    signal = BY_STAGE[stage]
    for module in modules:
        signal.disconnect(receiver, sender=module)
    _fast_blinker.release(signal, receiver)


def _rlms_in(target: Any) -> list[RLM]:
    if isinstance(target, RLM):
        return [target]
    if not isinstance(target, Module):
        raise TypeError(
            f"instrument() expects a dspy.RLM or a dspy.Module that contains one; got {type(target).__name__}"
        )
    found = {id(m): m for _, m in target.named_sub_modules() if isinstance(m, RLM)}
    if not found:
        raise TypeError(f"instrument(): {type(target).__name__} contains no dspy.RLM to instrument")
    return list(found.values())


def instrument(target: Module) -> Instrumentation:
    """Patch `target` (a `dspy.RLM`, or every `dspy.RLM` inside a composite module) and return its handle.

    Only these instances change; other RLMs are untouched. Idempotent: a second call returns the same
    [`Instrumentation`][rlm_events.instrumentation.Instrumentation]. Raises `TypeError` for a target without RLM,
    `ValueError` when the RLMs inside a
    composite are already instrumented separately, and [`UnsupportedDSPyError`][rlm_events.UnsupportedDSPyError] when
    the
    installed DSPy's RLM loop lacks a piece rlm-events needs.
    """
    rlms = _rlms_in(target)
    existing = {id(i): i for i in map(instrumentation_of, rlms) if i is not None}
    if len(existing) == 1 and all(instrumentation_of(r) is not None for r in rlms):
        return next(iter(existing.values()))
    if existing:
        raise ValueError(
            "instrument(): some RLMs inside this module are already instrumented separately; "
            "uninstrument() them first or instrument each RLM on its own"
        )
    events = Instrumentation()
    attached: list[RLM] = []
    try:
        for rlm in rlms:
            _patch.attach(rlm, events)
            attached.append(rlm)
    except BaseException:
        for rlm in attached:
            _patch.detach(rlm)
        raise
    return events


def uninstrument(target: Module) -> None:
    """Exactly undo [`instrument()`][rlm_events.instrumentation.instrument] on `target` (idempotent; a
    never-instrumented target is left alone)."""
    for rlm in _rlms_in(target):
        _patch.detach(rlm)


def instrumentation_of(target: RLM) -> Instrumentation | None:
    """The [`Instrumentation`][rlm_events.instrumentation.Instrumentation] attached to `target`, or `None`."""
    handle = _patch.instrumentation_of(target)
    return handle if isinstance(handle, Instrumentation) else None


__all__ = ["Instrumentation", "instrument", "instrumentation_of", "uninstrument"]
