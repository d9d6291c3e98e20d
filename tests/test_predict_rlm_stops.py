"""How a PredictRLM run ends under rlm-events, against bare PredictRLM (predict-rlm's ``DirectPythonBackend`` and
``dspy.LocalInterpreter``, sync and async, with and without ``submit_confirmation``).

- A stop (a post_iteration middleware's, a ``Budget``'s) ends exactly as PredictRLM's own extract fallback ends when
  it reaches ``max_iterations``: the same answer, trace status, steps, trajectory and LM calls, and the
  ``submit_confirmation`` hook is never asked.
- Every other thing our loop hands PredictRLM is what bare PredictRLM would make of the same thing: a
  ``FinalOutput`` from pre_execution (a skip) or post_execution is a SUBMIT (the hook is asked), a post_iteration
  rewrite of the LM's SUBMIT is still that SUBMIT, and a post_iteration middleware's own prediction finishes the
  run at once, as documented, without asking the hook.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from pathlib import Path
from typing import Any

import dspy
import pytest

predict_rlm = pytest.importorskip("predict_rlm", reason="needs the predict-rlm extra (DSPy 3.4+)")
if not hasattr(dspy, "LocalInterpreter"):
    pytest.skip("PredictRLM runs here on dspy.LocalInterpreter (DSPy 3.4+)", allow_module_level=True)

from dspy.primitives.code_interpreter import FinalOutput  # noqa: E402
from dspy.utils import DummyLM  # noqa: E402

import rlm_events  # noqa: E402
from rlm_events import Stage  # noqa: E402
from rlm_events.builtins import Budget  # noqa: E402

INTERPRETERS = ("local", "direct")


def interpreter_of(name: str, tmp_path: Path) -> Any:
    if name == "local":
        return dspy.LocalInterpreter()
    # Its runner script goes to one fixed /tmp path by default, which concurrent test processes would share.
    return predict_rlm.DirectPythonBackend(runner_path=str(tmp_path / f"runner-{next(_RUNNERS)}.py"))


_RUNNERS = itertools.count()


class JsonLM(DummyLM):
    """Plays ``answers`` in PredictRLM's JSON adapter format; ``calls`` counts every call, on every copy of it."""

    def __init__(self, answers: list[dict[str, Any]], calls: list[int]) -> None:
        super().__init__(answers, adapter=dspy.JSONAdapter())
        self.count = lambda: calls.append(1)  # a function: PredictRLM's copies of this LM share it

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        self.count()
        return super().forward(prompt=prompt, messages=messages, **kwargs)


def step(code: str, plan: str = "next") -> dict[str, str]:
    return {"plan": plan, "code": f"```repl\n{code}\n```"}


class Run:
    """One PredictRLM, its LM's calls and its submit_confirmation hook's, and what the run returned."""

    def __init__(
        self, answers: list[dict[str, Any]], *, interpreter: str, hook: bool, max_iterations: int, tmp_path: Path
    ) -> None:
        self.lm_calls: list[int] = []
        self.asked: list[int] = []  # the iterations the hook was asked about
        self.rlm = predict_rlm.PredictRLM(
            "text: str -> answer: str",
            lm=JsonLM(answers, self.lm_calls),
            max_iterations=max_iterations,
            interpreter=interpreter_of(interpreter, tmp_path),
            adapter=predict_rlm.ValidatingJSONAdapter(),
            verbose=False,
            submit_confirmation=self.confirm if hook else None,
        )
        self.ends: list[Any] = []

    def confirm(self, ctx: Any) -> str:
        self.asked.append(ctx.iteration)
        return "Check the answer once more, then SUBMIT again."

    def instrument(self) -> Any:
        events = rlm_events.instrument(self.rlm)
        events.tap([Stage.RUN_END], self.ends.append, inline=True)
        return events

    def __call__(self, use_async: bool) -> Any:
        rlm = self.rlm
        self.result = asyncio.run(rlm.acall(text="t")) if use_async else rlm(text="t")
        return self.result

    def shape(self) -> dict[str, Any]:
        """What must match bare PredictRLM: answer, status, steps, trajectory, LM calls, the hook's calls."""
        result = self.result
        return {
            "answer": result.answer,
            "final_reasoning": result.get("final_reasoning"),
            "status": result.trace.status,
            "iterations": result.trace.iterations,
            "steps": [(s.iteration, s.reasoning, s.code, s.output, s.error) for s in result.trace.steps],
            "trajectory": result.get("trajectory"),
            "lm_calls": len(self.lm_calls),
            "asked": self.asked,
        }


def stop_after(events: Any, iterations: int, how: str) -> None:
    if how == "budget":
        Budget(max_iterations=iterations).install(events)
        return

    @events.middleware(Stage.POST_ITERATION)
    def enough(ctx, next):
        ctx = next(ctx)
        ctx.stop = ctx.iteration + 1 == iterations
        return ctx


SCRIPT = [
    step("x = 20\nprint(x)", "look"),
    step("print(x + 1)", "again"),
    {"answer": "extracted"},  # the extract
    step("SUBMIT(answer='late')", "submit"),  # what a run that went on would play next
    {"answer": "extracted again"},
]


@pytest.mark.parametrize("hook", [False, True], ids=["no-hook", "submit_confirmation"])
@pytest.mark.parametrize("how", ["post_iteration", "budget"])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_a_stop_ends_as_predict_rlms_own_extract_fallback(interpreter, use_async, how, hook, caplog, tmp_path):
    bare = Run(
        SCRIPT, interpreter=interpreter, tmp_path=tmp_path, hook=hook, max_iterations=2
    )  # reaches its limit after 2
    bare(use_async)
    assert bare.result.trace.status == "max_iterations" and bare.result.answer == "extracted"

    ours = Run(SCRIPT, interpreter=interpreter, tmp_path=tmp_path, hook=hook, max_iterations=5)
    stop_after(ours.instrument(), 2, how)
    caplog.clear()  # the bare run's lines
    with caplog.at_level(logging.WARNING):
        ours(use_async)
    assert ours.shape() == bare.shape()
    assert ours.asked == [] and len(ours.lm_calls) == 3  # two actions, one extract
    (end,) = ours.ends
    assert (end.stop_reason, end.iterations, end.forced_extract) == (
        "budget" if how == "budget" else "middleware",
        2,
        True,
    )
    assert end.prediction is ours.result
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in lines if "stopped the run after iteration 2 of 5" in m]) == 1
    assert not [m for m in lines if "reached max iterations" in m]  # one line per stop, ours


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_a_stop_at_the_first_iteration_with_the_hook(interpreter, use_async, tmp_path):
    script = [step("print('a')"), {"answer": "extracted"}, step("SUBMIT(answer='b')"), {"answer": "second"}]
    bare = Run(script, interpreter=interpreter, tmp_path=tmp_path, hook=True, max_iterations=1)
    bare(use_async)
    ours = Run(script, interpreter=interpreter, tmp_path=tmp_path, hook=True, max_iterations=3)
    Budget(max_iterations=1).install(ours.instrument())
    ours(use_async)
    assert ours.shape() == bare.shape()
    assert ours.result.answer == "extracted" and len(ours.lm_calls) == 2 and ours.ends[0].iterations == 1


def final_output(how: str, answers: dict[int, str]) -> Any:
    """A middleware that turns iteration ``i``'s execution into ``SUBMIT(answer=answers[i])``."""

    def pre_execution(ctx, next):
        if ctx.iteration in answers:
            ctx.skip(FinalOutput({"answer": answers[ctx.iteration]}))
        return next(ctx)

    def post_execution(ctx, next):
        ctx = next(ctx)
        if ctx.iteration in answers:
            ctx.result = FinalOutput({"answer": answers[ctx.iteration]})
        return ctx

    return {"pre_execution": pre_execution, "post_execution": post_execution}[how]


@pytest.mark.parametrize("hook", [False, True], ids=["no-hook", "submit_confirmation"])
@pytest.mark.parametrize("how", ["pre_execution", "post_execution"])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_a_final_output_from_a_middleware_is_a_submit(interpreter, use_async, how, hook, tmp_path):
    bare = Run(
        [step("SUBMIT(answer='one')"), step("SUBMIT(answer='two')")],
        interpreter=interpreter,
        tmp_path=tmp_path,
        hook=hook,
        max_iterations=3,
    )
    bare(use_async)
    ours = Run(
        [step("print('a')"), step("print('b')")],
        interpreter=interpreter,
        tmp_path=tmp_path,
        hook=hook,
        max_iterations=3,
    )
    events = ours.instrument()
    events.middleware(Stage(how))(final_output(how, {0: "one", 1: "two"}))
    ours(use_async)

    expected = {"answer": "two", "asked": [1], "lm_calls": 2} if hook else {"answer": "one", "asked": [], "lm_calls": 1}
    for run in (bare, ours):
        shape = run.shape()
        assert {k: shape[k] for k in expected} == expected
        assert (
            shape["status"] == "completed" and len(shape["steps"]) == len(shape["trajectory"]) == expected["lm_calls"]
        )
    assert [s[3] for s in ours.shape()["steps"]] == [s[3] for s in bare.shape()["steps"]]  # the hook's message
    assert ours.ends[0].stop_reason == "submit" and not ours.ends[0].forced_extract


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_a_rewritten_submit_is_still_the_lms_submit(interpreter, use_async, tmp_path):
    script = [step("SUBMIT(answer='one')"), step("SUBMIT(answer='two')")]
    bare = Run(script, interpreter=interpreter, tmp_path=tmp_path, hook=True, max_iterations=3)
    bare(use_async)
    ours = Run(script, interpreter=interpreter, tmp_path=tmp_path, hook=True, max_iterations=3)

    @ours.instrument().middleware(Stage.POST_ITERATION)
    def shout(ctx, next):
        ctx = next(ctx)
        if ctx.prediction is not None:
            ctx.prediction = dspy.Prediction(**{**dict(ctx.prediction), "answer": ctx.prediction.answer.upper()})
        return ctx

    ours(use_async)
    assert ours.asked == bare.asked == [1]  # PredictRLM asks about the LM's submission, rewritten or not
    assert ours.result.answer == "TWO" and len(ours.lm_calls) == len(bare.lm_calls) == 2
    assert ours.result.trace.status == bare.result.trace.status == "completed"


@pytest.mark.parametrize("hook", [False, True], ids=["no-hook", "submit_confirmation"])
@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("interpreter", INTERPRETERS)
def test_a_middlewares_own_prediction_finishes_the_run_at_once(interpreter, use_async, hook, tmp_path):
    ours = Run(
        [step("print('a')", "look"), step("SUBMIT(answer='late')")],
        interpreter=interpreter,
        tmp_path=tmp_path,
        hook=hook,
        max_iterations=3,
    )

    @ours.instrument().middleware(Stage.POST_ITERATION)
    def answer_now(ctx, next):
        ctx = next(ctx)
        ctx.prediction = dspy.Prediction(answer="from the middleware")
        return ctx

    ours(use_async)
    shape = ours.shape()
    assert shape["answer"] == "from the middleware" and shape["asked"] == [] and shape["lm_calls"] == 1
    assert shape["status"] == "completed"
    ((index, plan, code, output, error),) = shape["steps"]  # the iteration as it ran
    assert (index, plan, code, output.strip(), error) == (1, "look", "print('a')", "a", False)
    assert ours.ends[0].iterations == 1 and not ours.ends[0].forced_extract
