"""Shared fixtures: a scripted LM and the real interpreter (dspy.LocalInterpreter where DSPy ships it, 3.4+;
rlm_events.testing.InProcessInterpreter, which behaves like it, before)."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events.testing import InProcessInterpreter, ScriptedLM, build_rlm

REAL_INTERPRETER: Callable[[], Any] = getattr(dspy, "LocalInterpreter", InProcessInterpreter)


@pytest.fixture
def make_rlm() -> Iterator[Callable[..., tuple[dspy.RLM, ScriptedLM]]]:
    """Build ``(rlm, lm)``: a real dspy.RLM on the real interpreter, and a ScriptedLM playing ``steps``.

    Works on every supported DSPy (3.1.2+): the RLM is built with :func:`rlm_events.testing.build_rlm`, so each call
    gets a fresh interpreter from ``interpreter_factory`` that is shut down when the call ends, on every release.
    """
    made: list[dspy.RLM] = []

    def make(
        steps: Sequence[Any],
        *,
        signature: str | type[dspy.Signature] = "text -> answer",
        max_iters: int = 6,
        interpreter_factory: Callable[[], Any] | None = None,
        tools: list[Any] | None = None,
        sub_lm: Any = None,
        **lm_options: Any,
    ) -> tuple[dspy.RLM, ScriptedLM]:
        lm = ScriptedLM(steps, **lm_options)
        rlm = build_rlm(
            signature,
            max_iters=max_iters,
            tools=tools,
            sub_lm=sub_lm,
            interpreter_factory=interpreter_factory or REAL_INTERPRETER,
        )
        made.append(rlm)
        return rlm, lm

    yield make
    for rlm in made:
        rlm_events.uninstrument(rlm)
