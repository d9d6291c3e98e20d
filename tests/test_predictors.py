"""Any callable may be ``generate_action``: a ``dspy.Predict``, another module, an object with only ``__call__`` or
only ``acall``, or a function; set before ``instrument()``, after it, or between calls. pre_execution fires for each,
in sync and async calls: the changed code is what runs and what the history records, and ``skip()`` works."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import dspy
import pytest

import rlm_events
from rlm_events import Stage


class Script:
    """The LM's part, played without an LM: iteration ``i`` returns ``steps[i]`` as a Prediction."""

    def __init__(self, steps: list[str]) -> None:
        self.steps, self.calls = steps, 0

    def next_action(self) -> dspy.Prediction:
        code = self.steps[min(self.calls, len(self.steps) - 1)]
        self.calls += 1
        return dspy.Prediction(reasoning=f"step {self.calls}", code=code)


class CallOnly(Script):
    """A predictor with ``__call__`` and nothing else (no forward, no acall): sync loops only."""

    def __call__(self, **kwargs: Any) -> dspy.Prediction:
        return self.next_action()


class AsyncOnly(Script):
    """A predictor with ``acall`` and nothing else: async loops only."""

    async def acall(self, **kwargs: Any) -> dspy.Prediction:
        await asyncio.sleep(0)
        return self.next_action()


class Both(CallOnly, AsyncOnly):
    """``__call__`` and ``acall``, still no forward/aforward."""


class Wrapper(dspy.Module):
    """Another dspy.Module around the stock predictor, as an optimized or logged predictor would be."""

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, **kwargs: Any) -> Any:
        self.seen += 1
        return self.inner(**kwargs)

    async def aforward(self, **kwargs: Any) -> Any:
        self.seen += 1
        return await self.inner.acall(**kwargs)


def function_predictor(steps: list[str]) -> Callable[..., dspy.Prediction]:
    script = Script(steps)

    def act(**kwargs: Any) -> dspy.Prediction:
        return script.next_action()

    return act


STEPS = ["x = 20", "print(x + 1)", "SUBMIT(answer=str(x * 2))"]


def kinds(rlm: dspy.RLM) -> dict[str, Callable[[], Any]]:
    return {
        "call_only": lambda: CallOnly(STEPS),
        "both": lambda: Both(STEPS),
        "function": lambda: function_predictor(STEPS),
        "module": lambda: Wrapper(rlm.generate_action),
    }


def run(rlm: dspy.RLM, lm: Any, *, use_async: bool) -> dspy.Prediction:
    with dspy.context(lm=lm):
        if use_async:
            return asyncio.run(rlm.acall(text="t"))
        return rlm(text="t")


def rewriting(events: rlm_events.Instrumentation) -> list[tuple[str, str]]:
    """pre_execution doubles 20 in the first step; post_execution records what ran and what it printed."""
    seen: list[tuple[str, str]] = []

    @events.middleware(Stage.PRE_EXECUTION)
    def rewrite(ctx, next):
        ctx.code = ctx.code.replace("x = 20", "x = 40")
        return next(ctx)

    @events.middleware(Stage.POST_EXECUTION)
    def record(ctx, next):
        seen.append((ctx.code, str(ctx.result)))
        return next(ctx)

    return seen


# Each predictor in every loop it can serve bare: __call__-only ones and functions cannot serve an async loop, nor an
# acall-only one a sync loop.
SERVES = [("call_only", False), ("function", False), ("async_only", True)] + [
    (kind, use_async) for kind in ("both", "module") for use_async in (False, True)
]


@pytest.mark.parametrize(("kind", "use_async"), SERVES, ids=[f"{k}-{'async' if a else 'sync'}" for k, a in SERVES])
def test_pre_execution_rewrites_the_code_of_any_predictor(make_rlm, kind, use_async):
    rlm, lm = make_rlm(STEPS)
    predictor = AsyncOnly(STEPS) if kind == "async_only" else kinds(rlm)[kind]()
    rlm.generate_action = predictor  # before instrument()
    seen = rewriting(rlm_events.instrument(rlm))
    result = run(rlm, lm, use_async=use_async)
    assert result.answer == "80"  # the rewritten code ran
    assert seen[0][0] == "x = 40" and seen[1][0] == "print(x + 1)" and seen[1][1].strip() == "41"
    assert [step["code"] for step in result.trajectory][:2] == ["x = 40", "print(x + 1)"]  # and is recorded
    assert rlm.generate_action is predictor


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_skip_works_on_a_plain_callable_predictor(make_rlm, use_async):
    rlm, lm = make_rlm(["import os", "SUBMIT(answer='done')"])
    events = rlm_events.instrument(rlm)
    rlm.generate_action = Both(["import os", "SUBMIT(answer='done')"])  # after instrument()

    @events.middleware(Stage.PRE_EXECUTION)
    def refuse(ctx, next):
        if "import os" in ctx.code:
            ctx.skip("[Error] os is not allowed")
        return next(ctx)

    result = run(rlm, lm, use_async=use_async)
    assert result.answer == "done"
    assert result.trajectory[0]["output"] == "[Error] os is not allowed"


def test_a_predictor_replaced_between_calls_is_the_one_used(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='from the LM')"])
    events = rlm_events.instrument(rlm)
    codes: list[str] = []
    events.tap([Stage.PRE_EXECUTION], lambda ctx: codes.append(ctx.code), inline=True)
    assert run(rlm, lm, use_async=False).answer == "from the LM"
    stock = rlm.generate_action
    rlm.generate_action = function_predictor(["SUBMIT(answer='from a function')"])
    assert run(rlm, lm, use_async=False).answer == "from a function"
    rlm.generate_action = Wrapper(stock)
    assert run(rlm, lm, use_async=True).answer == "from the LM"
    assert rlm.generate_action.seen == 1
    assert codes == ["SUBMIT(answer='from the LM')", "SUBMIT(answer='from a function')", "SUBMIT(answer='from the LM')"]


def test_a_predictor_that_is_not_callable_gets_dspys_own_error(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='x')"])
    bare, _ = make_rlm(["SUBMIT(answer='x')"])
    rlm.generate_action = bare.generate_action = object()
    with pytest.raises(TypeError) as bare_error:
        run(bare, lm, use_async=False)
    rlm_events.instrument(rlm).use(Stage.PRE_EXECUTION, lambda ctx, next: next(ctx))
    with pytest.raises(TypeError) as instrumented_error:
        run(rlm, lm, use_async=False)
    assert str(instrumented_error.value) == str(bare_error.value) == "'object' object is not callable"


def test_a_sync_only_predictor_in_an_async_call_fails_as_it_does_bare(make_rlm):
    rlm, lm = make_rlm(["SUBMIT(answer='x')"])
    bare, _ = make_rlm(["SUBMIT(answer='x')"])
    rlm.generate_action, bare.generate_action = CallOnly(STEPS), CallOnly(STEPS)
    with pytest.raises(AttributeError) as bare_error:
        run(bare, lm, use_async=True)
    rlm_events.instrument(rlm).use(Stage.PRE_EXECUTION, lambda ctx, next: next(ctx))
    with pytest.raises(AttributeError) as instrumented_error:
        run(rlm, lm, use_async=True)
    assert str(instrumented_error.value) == str(bare_error.value)


def test_an_action_without_code_is_left_to_dspy(make_rlm):
    """A predictor whose action DSPy cannot run: pre_execution stands aside and the call fails (or not) as bare."""
    rlm, lm = make_rlm(["SUBMIT(answer='x')"])
    bare, _ = make_rlm(["SUBMIT(answer='x')"])
    rlm.generate_action = bare.generate_action = lambda **kwargs: dspy.Prediction(reasoning="none")
    with pytest.raises(Exception) as bare_error:
        run(bare, lm, use_async=False)
    events = rlm_events.instrument(rlm)
    fired: list[str] = []
    events.tap(lambda ctx: fired.append(ctx.stage.value), inline=True)
    with pytest.raises(type(bare_error.value)) as instrumented_error:
        run(rlm, lm, use_async=False)
    assert str(instrumented_error.value) == str(bare_error.value)
    assert "pre_execution" not in fired and fired[-1] == "run_end"
