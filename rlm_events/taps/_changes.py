"""Which middleware changed a stage's context: witnesses between the middleware of a stage's chain.

A tap sees each stage's context once its chain has run, so it cannot tell what the LM wrote from what a middleware
put in its place, nor which middleware did. `ChangeWitnesses` finds out by observing the chain itself:
`install(events)` rebuilds the chains of the watched stages as `w0, m1, w1, m2, … mk, wk` (every middleware
kept, in its order, on every stage it was on; the witnesses `wi` only read the context and always call `next`
once). A value that differs between what `w(i-1)` and `wi` see, on the way in or out, was changed by `mi`.
Middleware registered after `install` sit inside `wk` and are named together, from the current plan.

What a stage's chain changed is left in `ctx.run.state` for the tap, read with `ChangeWitnesses.changes()`:
the values the chain was given (`original`: the LM's code at `pre_execution`) and `by`, the
`(middleware name, fields it changed)` pairs, outermost first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from middleware import middleware_name

from ..stages import Stage

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

logger = logging.getLogger("rlm_events.taps")

WATCHED: dict[Stage, tuple[str, ...]] = {
    Stage.PRE_EXECUTION: ("code", "result"),
    Stage.POST_EXECUTION: ("code", "result"),
    Stage.POST_ITERATION: ("stop", "prediction"),
}
"""The stages whose changes are attributed, and the context fields compared (`pre_execution`'s `result` is the
result a middleware supplied instead of running the code)."""


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, (str, bool, int, float)) and type(a) is type(b):
        return bool(a == b)
    return False  # other objects (predictions, FinalOutput) are compared by identity: a new object is a change


@dataclass
class StageChanges:
    """What one run of a stage's chain changed: the values it was given and who changed which."""

    original: dict[str, Any] = field(default_factory=dict)
    by: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    def changed_by(self, name: str) -> list[str]:
        """The middleware that changed field `name`, outermost first."""
        return [who for who, fields in self.by if name in fields]


class _Witness:
    """One witness in a chain; reads the context, calls `next` once."""

    __slots__ = ("owner", "position", "stage")

    def __init__(self, owner: ChangeWitnesses, stage: Stage, position: int) -> None:
        self.owner, self.stage, self.position = owner, stage, position

    def __call__(self, ctx: Any, next: Callable[[Any], Any]) -> Any:
        return self.owner._witness(self, ctx, next)

    def __repr__(self) -> str:
        return f"<{self.owner.label} change witness {self.stage.value} #{self.position}>"


class ChangeWitnesses:
    """The witnesses of one tap (`label` names the tap in logs and reprs)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.key = f"rlm_events.taps:changes:{id(self)}"
        self._witnesses: dict[Stage, list[_Witness]] = {}
        self._between: dict[tuple[Stage, int], list[str]] = {}  # names of the middleware inside each witness
        self._events: Instrumentation | None = None

    def owns(self, mw: Any) -> bool:
        return isinstance(mw, _Witness) and mw.owner is self

    def layout(
        self, events: Instrumentation, first: dict[Stage, list[Callable[..., Any]]] | None = None
    ) -> tuple[list[Any], list[tuple[Stage, Any]]]:
        """`(old, new)` for `events.replace`: every chain as it is, witnesses interleaved on the watched stages,
        and the middleware of `first` outermost on their stages (the tap's own)."""
        plan = events.plan
        first = first or {}
        ours = {id(mw) for mws in first.values() for mw in mws}
        old: list[Any] = []
        seen: set[int] = set()
        new: list[tuple[Stage, Any]] = []
        for stage in Stage:
            kept = []
            for mw in plan.chains[stage]:
                if id(mw) not in seen:
                    seen.add(id(mw))
                    old.append(mw)
                if not self.owns(mw) and id(mw) not in ours:
                    kept.append(mw)
            chain: list[Any] = list(first.get(stage, []))
            if stage in WATCHED:
                witnesses = [_Witness(self, stage, i) for i in range(len(kept) + 1)]
                self._witnesses[stage] = witnesses
                chain.append(witnesses[0])
                for i, mw in enumerate(kept):
                    self._between[(stage, i)] = [middleware_name(mw)]
                    chain += [mw, witnesses[i + 1]]
            else:
                chain += kept
            new += [(stage, mw) for mw in chain]
        old += [mw for mws in first.values() for mw in mws if id(mw) not in seen]
        self._events = events
        return old, new

    def all(self) -> list[_Witness]:
        return [w for ws in self._witnesses.values() for w in ws]

    def _inside(self, witness: _Witness) -> list[str]:
        names = self._between.get((witness.stage, witness.position))
        if names is not None:
            return names
        # The innermost witness: whatever was registered after install() sits inside it.
        events = self._events
        if events is None:
            return []
        chain = list(events.plan.chains[witness.stage])
        try:
            after = chain[chain.index(witness) + 1 :]
        except ValueError:
            return []
        return [middleware_name(mw) for mw in after if not self.owns(mw)]

    def changes(self, run_state: dict[str, Any], stage: Stage) -> StageChanges | None:
        """What the last run of `stage`'s chain changed (`None`: no witness saw it)."""
        found = run_state.get(self.key, {}).get(stage)
        return found if isinstance(found, StageChanges) else None

    def _witness(self, witness: _Witness, ctx: Any, next: Callable[[Any], Any]) -> Any:
        fields = WATCHED[witness.stage]
        try:
            frames = ctx.run.state.setdefault(self.key, {})
            if witness.position == 0 or not isinstance(frames.get(("open", witness.stage)), dict):
                frames[("open", witness.stage)] = {}
            frame = frames[("open", witness.stage)]
            before = tuple(getattr(ctx, f, None) for f in fields)
            frame[witness.position] = [before, None]
        except Exception:
            logger.exception("%s could not observe stage %s", self.label, witness.stage.value)
            return next(ctx)
        ctx = next(ctx)
        try:
            after = tuple(getattr(ctx, f, None) for f in fields)
            frame[witness.position][1] = after
            inner = frame.get(witness.position + 1)
            if inner is None or inner[1] is None:  # nothing inside reached the next witness (or there is none)
                changed = [f for f, a, b in zip(fields, before, after, strict=True) if not _same(a, b)]
            else:
                changed = [
                    f
                    for f, a, b, c, d in zip(fields, before, inner[0], inner[1], after, strict=True)
                    if not _same(a, b) or not _same(c, d)
                ]
            if changed:
                names = self._inside(witness) or ["(unknown middleware)"]
                frame.setdefault("by", []).insert(0, (", ".join(names), tuple(changed)))
            if witness.position == 0:
                frames.pop(("open", witness.stage), None)
                frames[witness.stage] = StageChanges(dict(zip(fields, before, strict=True)), list(frame.get("by", [])))
        except Exception:
            logger.exception("%s could not observe stage %s", self.label, witness.stage.value)
        return ctx


__all__ = ["WATCHED", "ChangeWitnesses", "StageChanges"]
