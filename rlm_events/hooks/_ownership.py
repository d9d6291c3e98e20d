"""Which instrumentations the 0.1.15 API created, and when to undo them: after the last of its hooks and
speculation is disabled, an RLM the API instrumented is uninstrumented — its class and `__dict__` exactly as
before — whatever the order of enabling and disabling."""

from __future__ import annotations

import weakref
from typing import Any

import dspy

from ..instrumentation import Instrumentation, instrumentation_of, uninstrument
from ..signals import BY_STAGE
from ..stages import Stage
from ._adapters import HookMiddleware, hooks_on

# Instrumentations enable_rlm_hooks or enable_rlm_speculation created, remembered even while they hold nothing of
# ours (a disable kept one for a receiver), so a later disable still knows it may uninstrument. Weak: it never keeps
# an instrumentation alive.
_CREATED_BY_HOOKS: weakref.WeakSet[Instrumentation] = weakref.WeakSet()


def instrument_for_api(rlm: dspy.RLM) -> tuple[Instrumentation, bool]:
    """`rlm_events.instrument(rlm)`, and whether the 0.1.15 API owns it (created it now or before)."""
    from ..instrumentation import instrument

    previous = instrumentation_of(rlm)
    events = instrument(rlm)
    owns = previous is None or owned(previous, list(hooks_on(previous)))
    if owns:
        _CREATED_BY_HOOKS.add(events)
    return events, owns


def owned(events: Instrumentation, hooks: list[HookMiddleware]) -> bool:
    # The middleware flag covers deep copies, whose cloned instrumentation shares the hooks' middleware.
    return events in _CREATED_BY_HOOKS or any(mw.owns_instrumentation for mw in hooks)


def release(rlm: dspy.RLM, events: Instrumentation, owned: bool) -> None:
    """Uninstrument `rlm` when the API owns `events` (`owned`) and nothing else uses it."""
    if not owned:
        return
    _CREATED_BY_HOOKS.add(events)
    if not _in_use(events, rlm):
        uninstrument(rlm)
        _CREATED_BY_HOOKS.discard(events)


def _in_use(events: Instrumentation, rlm: Any) -> bool:
    plan = events.plan
    if any(plan.chains[stage] for stage in Stage) or plan.all_taps:
        return True
    # Receivers connected for this RLM only would go silent if it were uninstrumented. Receivers connected for
    # any sender are not counted: they heard nothing from this RLM before the hooks either.
    anonymous = object()
    for signal in BY_STAGE.values():
        for_any = {id(r) for r in signal.receivers_for(anonymous)}
        if any(id(r) not in for_any for r in signal.receivers_for(rlm)):
            return True
    return False
