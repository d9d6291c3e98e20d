"""Code that keeps a reference to an instrumented RLM's methods, and wraps them on the instance (a timing wrapper,
as the dspy-rlm-hooks 0.1.15 benchmark's runner does), still goes through every stage. On DSPy before 3.4 the
instrumented class hands DSPy's own methods to DSPy's own loop when nothing sees the call (each frame on the stack
costs DSPy's stack walk); handed to anyone else, they bypassed every iteration stage: CodeGuard, Budget and
Speculate silently did nothing there."""

from __future__ import annotations

import sys
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage
from rlm_events.builtins import CodeGuard
from rlm_events.testing import InProcessInterpreter, ScriptedLM

STEPS = ["import subprocess", "x = 21 * 2\nprint(x)", "SUBMIT(answer=str(x))"]


def wrap_on_instance(rlm: Any, name: str, calls: list[str]) -> None:
    original = getattr(rlm, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return original(*args, **kwargs)

    setattr(rlm, name, timed)


@pytest.mark.parametrize("wrapped_when", ["before middleware", "after middleware"])
def test_methods_wrapped_on_the_instance_still_pass_every_stage(make_rlm: Any, wrapped_when: str) -> None:
    rlm, lm = make_rlm(STEPS, interpreter_factory=InProcessInterpreter)
    events = rlm_events.instrument(rlm)
    wrapped: list[str] = []
    if wrapped_when == "before middleware":
        wrap_on_instance(rlm, "_execute_iteration", wrapped)
    CodeGuard("default").install(events)
    seen: list[str] = []
    events.tap(lambda ctx: seen.append(ctx.stage.value), inline=True)
    if wrapped_when == "after middleware":
        wrap_on_instance(rlm, "_execute_iteration", wrapped)
    with dspy.context(lm=lm):
        prediction = rlm(text="t")
    assert prediction.answer == "42"
    assert wrapped == ["_execute_iteration"] * 3
    assert seen.count("pre_execution") == seen.count("post_iteration") == 3
    assert "CodeGuard refused" in prediction.trajectory[0]["output"]  # the guard refused the import: its stage ran


def test_the_loop_of_an_idle_instrumented_rlm_runs_dspys_own_iteration(make_rlm: Any) -> None:
    """Pins the fast path where DSPy walks the stack: nothing subscribed, no frame of ours between DSPy's loop and
    its predictor call. Elsewhere (DSPy 3.4+) the seam is on the stack and returns at once."""
    stacks: list[set[str]] = []

    class StackWatchingLM(ScriptedLM):
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            frame, names = sys._getframe(), set()
            while frame is not None:
                if "rlm_events" in frame.f_code.co_filename:
                    names.add(frame.f_code.co_name)
                frame = frame.f_back
            stacks.append(names)
            return super().forward(*args, **kwargs)

    rlm, _ = make_rlm(STEPS, interpreter_factory=InProcessInterpreter)
    rlm_events.instrument(rlm)
    with dspy.context(lm=StackWatchingLM(STEPS)):
        assert rlm(text="t").answer == "42"
    walks = hasattr(type(rlm), "__getattribute__") and "inspect.stack(" in _source(dspy.RLM.__getattribute__)
    assert stacks and all(("_execute_iteration" in names) is not walks for names in stacks), stacks
    events = rlm_events.instrument(rlm)
    events.tap([Stage.PRE_EXECUTION], lambda ctx: None, inline=True)
    stacks.clear()
    with dspy.context(lm=StackWatchingLM(STEPS)):
        assert rlm(text="t").answer == "42"
    assert stacks and all("_execute_iteration" in names for names in stacks)  # not idle: the seam runs


def _source(fn: Any) -> str:
    import inspect

    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return ""
