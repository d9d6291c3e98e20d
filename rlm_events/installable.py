"""The one install protocol of built-ins, taps and record/replay helpers: `x.install(events)` registers what
`x` declares, `x.uninstall(events)` removes exactly that."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .stages import Stage

if TYPE_CHECKING:
    from .instrumentation import Instrumentation

SelfT = TypeVar("SelfT", bound="Installable")


class Registrations(NamedTuple):
    """What an [`Installable`][rlm_events.installable.Installable] registers: `(stage, middleware)` pairs, in order (the
    first is outermost
    among them), and `(stages, tap)` pairs."""

    middleware: Sequence[tuple[Stage, Callable[..., Any]]] = ()
    taps: Sequence[tuple[Sequence[Stage], Callable[..., Any]]] = ()


class Installable:
    """Something that registers itself on an [`Instrumentation`][rlm_events.Instrumentation].

    Subclasses say what with [`registrations()`][rlm_events.installable.Installable.registrations] (the same objects
    every time: [`uninstall()`][rlm_events.installable.Installable.uninstall] removes the very
    callables [`install()`][rlm_events.installable.Installable.install] registered) and may validate the RLMs first
    ([`check()`][rlm_events.installable.Installable.check]). `install` adds all
    middleware in one plan change, so a call starting meanwhile sees all of them or none, then the taps.
    """

    def registrations(self) -> Registrations:  # pragma: no cover - every subclass says what it registers
        raise NotImplementedError

    def check(self, events: Instrumentation) -> None:
        """Validate the configuration against the RLMs of `events`; raise now rather than mid-run."""

    def install(self: SelfT, events: Instrumentation) -> SelfT:
        """Register on `events` (after [`check()`][rlm_events.installable.Installable.check]); return `self`."""
        self.check(events)
        registrations = self.registrations()
        events.replace((), registrations.middleware)
        for stages, fn in registrations.taps:
            events.tap(stages, fn)
        return self

    def uninstall(self, events: Instrumentation) -> None:
        """Remove what [`install()`][rlm_events.installable.Installable.install] registered on `events`."""
        registrations = self.registrations()
        for stage, mw in registrations.middleware:
            events.remove(stage, mw)
        for _, fn in registrations.taps:
            events.untap(fn)


__all__ = ["Installable", "Registrations"]
