"""Building a `dspy.RLM` the same way on every supported DSPy release: [`build_rlm()`][rlm_events.build.build_rlm]."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import dspy

from .runtime import constructor_of


def build_rlm(
    signature: str | type[dspy.Signature],
    *,
    max_iters: int | None = None,
    interpreter_factory: Callable[[], Any] | None = None,
    tools: Sequence[Any] | None = None,
    **options: Any,
) -> dspy.RLM:
    """A `dspy.RLM` built with the DSPy 3.3+ constructor arguments on every supported DSPy release (3.1.2+).

    `max_iters` is passed as `max_iterations` before 3.3; `tools` (functions or `dspy.Tool`) as a dict on
    3.1.2. `interpreter_factory` is called once per call and what it returns is shut down when the call ends, as
    on 3.3+ (before 3.3, where the constructor takes one interpreter shared by every call, the instance is given
    that behaviour). Other `options` (`sub_lm`, `max_llm_calls`, `verbose`, ...) are passed as they are.
    The result is a plain `dspy.RLM`.
    """
    constructor = constructor_of(dspy.RLM)
    kwargs, factory = constructor.arguments(
        max_iters=max_iters, interpreter_factory=interpreter_factory, tools=tools, **options
    )
    rlm = dspy.RLM(signature, **kwargs)
    constructor.finish(rlm, factory)
    return rlm


__all__ = ["build_rlm"]
