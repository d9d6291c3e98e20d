"""pytest plugin (`-p instrument_every_rlm`, with this folder on `sys.path`): every `dspy.RLM` (and every subclass,
such as PredictRLM) built during the session is instrumented with rlm-events.

Each RLM gets its own `rlm_events.instrument()` handle with, on every stage, a pass-through `(ctx, next)`
middleware, a blinker receiver, an inline tap and a queued tap (delivered off the run, the default), so the patched
seams, the middleware chains, the signals and both tap deliveries all run inside the tests. The tests themselves
are not changed: `.ci/dspy_own_tests.py` runs DSPy's own RLM tests bare and with this plugin and fails on any test
whose outcome differs (instrumentation must be invisible).

The RLM is instrumented when its construction returns (DSPy's module metaclass `__call__`), so a subclass's own
`__init__` has finished first, as it has when a user calls `instrument()`. Copies (`deepcopy`, `reset_copy`) are not
constructed: they keep their original's instrumentation, as rlm-events guarantees.

How many RLMs were instrumented and how often each stage reached the middleware, the receiver and the taps is printed
in pytest's terminal summary and, when `RLM_EVENTS_FIRINGS_FILE` names a file, written there as JSON.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage, StageContext

FIRINGS_FILE_VARIABLE = "RLM_EVENTS_FIRINGS_FILE"
HOOKS = ("middleware", "receiver", "inline_tap", "queued_tap")


class Firings:
    """Thread-safe counts: RLMs instrumented, and per stage the calls of the middleware, the receiver and the taps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.instrumented = 0
        self.by_hook: dict[str, Counter[str]] = {hook: Counter() for hook in HOOKS}

    def rlm_instrumented(self) -> None:
        with self._lock:
            self.instrumented += 1

    def fired(self, hook: str, stage: Stage) -> None:
        with self._lock:
            self.by_hook[hook][stage.value] += 1

    def as_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "instrumented": self.instrumented,
                **{hook: dict(counts) for hook, counts in self.by_hook.items()},
            }


FIRINGS = Firings()


def pass_through(ctx: StageContext, next: Callable[[StageContext], Any]) -> Any:
    """A middleware that changes nothing: the chain, its context validation and its result handling still run."""
    FIRINGS.fired("middleware", ctx.stage)
    return next(ctx)


def receiver(sender: Any, ctx: StageContext) -> None:
    """A blinker receiver of every stage's signal."""
    FIRINGS.fired("receiver", ctx.stage)


def inline_tap(snapshot: StageContext) -> None:
    """An inline tap of every stage (it runs on the caller's thread, inside the run)."""
    FIRINGS.fired("inline_tap", snapshot.stage)


def queued_tap(snapshot: StageContext) -> None:
    """A tap of every stage delivered the default way: queued, on rlm-events' delivery thread."""
    FIRINGS.fired("queued_tap", snapshot.stage)


def instrument_fully(rlm: dspy.RLM) -> None:
    events = rlm_events.instrument(rlm)
    for stage in Stage:
        events.use(stage, pass_through)
        events.connect(stage, receiver, weak=False)
    events.tap(inline_tap, inline=True)
    events.tap(queued_tap)
    FIRINGS.rlm_instrumented()


# DSPy builds every module through its metaclass's __call__ (it runs the base initialisation, then __init__).
_MODULE_METACLASS: Any = type(dspy.Module)
_original_construct: Callable[..., Any] | None = None


def _construct_instrumented(cls: type, *args: Any, **kwargs: Any) -> Any:
    assert _original_construct is not None
    module = _original_construct(cls, *args, **kwargs)
    if isinstance(module, dspy.RLM) and rlm_events.instrumentation_of(module) is None:
        instrument_fully(module)
    return module


def pytest_configure(config: pytest.Config) -> None:
    global _original_construct
    if _original_construct is None:
        _original_construct = _MODULE_METACLASS.__call__
        _MODULE_METACLASS.__call__ = _construct_instrumented


def pytest_unconfigure(config: pytest.Config) -> None:
    global _original_construct
    if _original_construct is not None:
        _MODULE_METACLASS.__call__ = _original_construct
        _original_construct = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    rlm_events.flush()  # the queued tap's last snapshots
    path = os.environ.get(FIRINGS_FILE_VARIABLE)
    if path:
        with open(path, "w", encoding="utf-8") as file:
            json.dump(FIRINGS.as_json(), file)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    firings = FIRINGS.as_json()
    totals = ", ".join(f"{sum(firings[hook].values())} {hook}" for hook in HOOKS)
    terminalreporter.write_line(f"rlm_events: instrumented {firings['instrumented']} RLMs; stage firings: {totals}")
