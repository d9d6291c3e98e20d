"""Durable on `predict_rlm.PredictRLM` (extra `rlm-events[predict-rlm]`, DSPy 3.4+): its actions are in its own
format (`plan` for the reasoning, and with `model_execution_timeout=True` an `execution_timeout_seconds`), recorded
as its predictor returned them and served to its loop in that format on resume.

A real PredictRLM on `dspy.LocalInterpreter` (its default sandbox needs a network), with scripted LMs answering in
its JSON adapter's format as tests/test_predict_rlm.py does. The worker dies as in tests/test_durable.py (a tool
raising a `BaseException`) and another worker resumes the run: same answer and history, no LM or tool call repeated,
and each replayed action reaches PredictRLM's loop with the same fields. A fork, and a run suspended by `Approval`
and resumed by a decision, replay the same way."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import dspy
import pytest

predict_rlm = pytest.importorskip("predict_rlm", reason="needs the predict-rlm extra (DSPy 3.4+)")
if not hasattr(dspy, "LocalInterpreter"):
    pytest.skip("PredictRLM runs here on dspy.LocalInterpreter (DSPy 3.4+)", allow_module_level=True)

from dspy.utils import DummyLM  # noqa: E402
from test_durable import Tools, WorkerDied  # noqa: E402

import rlm_events  # noqa: E402
from rlm_events.durable import Approval, Approve, Defer, Durable, Edit, SQLiteStore, Suspended  # noqa: E402

MAX_ITERATIONS = 5
STEPS = [
    ("ask the sub-LM", "x = 20\nnote = ask(prompt='hi')\nprint(x, note)", None),
    ("look up", "y = lookup(key='b')\nprint(y)", 30.0),
    ("summarise", "r = predict('text: str -> summary: str', text=text)\nprint(r['summary'])", 12.5),
    ("submit", "SUBMIT(answer=str(x * 2) + y + r['summary'])", None),
]


class Asked:
    """The prompts that reached an LM (shared by PredictRLM's per-run copies of it)."""

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def __deepcopy__(self, memo: dict[int, Any]) -> Asked:
        return self


class ScriptLM(DummyLM):
    """Answers each action prompt with its iteration's step (by the prompt's `iteration` field), another prompt with
    the answer in `answers` whose output field it asks for; in the JSON format PredictRLM asks for, else DSPy's chat
    format."""

    def __init__(self, asked: Asked, answers: list[dict[str, Any]]) -> None:
        steps = {
            f"[[ ## iteration ## ]]\n{i}/{MAX_ITERATIONS}": {
                "plan": plan,
                "code": f"```repl\n{code}\n```",
                "execution_timeout_seconds": json.dumps(timeout),
            }
            for i, (plan, code, timeout) in enumerate(STEPS, 1)
        }
        super().__init__([], adapter=dspy.JSONAdapter())
        self.asked, self.steps, self.others = asked, steps, list(answers)

    def forward(self, prompt: Any = None, messages: Any = None, **kwargs: Any) -> Any:
        last = messages[-1]["content"]
        self.asked.prompts.append(last)
        self.adapter = dspy.JSONAdapter() if "Respond with a JSON object" in last else dspy.ChatAdapter()
        if "[[ ## iteration ## ]]" in last:
            (answer,) = [step for marker, step in self.steps.items() if marker in last]
        else:
            (answer,) = [a for a in self.others if any(f"`{name}`" in last for name in a)]
        return DummyLM([answer], adapter=self.adapter).forward(prompt, messages, **kwargs)


class TimedInterpreter(dspy.LocalInterpreter):  # type: ignore[misc]
    """`dspy.LocalInterpreter` taking the execution timeout PredictRLM passes from each action (LocalInterpreter has
    none): it notes it, and runs the code as LocalInterpreter does."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def execute(self, code: str, variables: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        self.timeouts.append(timeout)
        return super().execute(code, variables)


class InstructedPredictRLM(predict_rlm.PredictRLM):
    """Builds each run's action predictor afresh with instructions of its own, as PredictRLM does when a call's file
    inputs and outputs or input adapters add instructions (its loop then reads that predictor, not
    `generate_action`)."""

    def _configure_run_predictors(self, ctx: Any, file_plan: Any) -> None:
        super()._configure_run_predictors(ctx, file_plan)
        ctx.state["generate_action"], ctx.state["extract"] = self._build_signatures_with_files("Be brief.")


def build(
    tools: Tools, store: SQLiteStore, asked: Asked, sub_asked: Asked, cls: Any = predict_rlm.PredictRLM
) -> tuple[Any, Durable, TimedInterpreter]:
    sub = ScriptLM(sub_asked, [{"response": "hello"}, {"summary": "S"}])

    def ask(prompt: str) -> str:
        """Ask the sub-LM."""
        return str(dspy.Predict("prompt -> response")(prompt=prompt, lm=sub).response)

    rlm = cls(
        "text: str -> answer: str",
        lm=ScriptLM(asked, []),
        sub_lm=sub,
        max_iterations=MAX_ITERATIONS,
        tools=[ask, tools.lookup],
        interpreter=(interpreter := TimedInterpreter()),
        adapter=predict_rlm.ValidatingJSONAdapter(),
        model_execution_timeout=True,
        verbose=False,
    )
    return rlm, Durable(store).install(rlm_events.instrument(rlm)), interpreter


def call(rlm: Any, is_async: bool) -> Any:
    return asyncio.run(rlm.acall(text="a fox")) if is_async else rlm(text="a fox")


def steps_of(prediction: Any) -> list[tuple[str, str, str]]:
    return [(entry["reasoning"], entry["code"], entry["output"]) for entry in prediction.trajectory]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(
    "cls", [predict_rlm.PredictRLM, InstructedPredictRLM], ids=["generate_action", "per-run-predictor"]
)
def test_an_interrupted_predict_rlm_run_resumes_as_if_uninterrupted(tmp_path: Path, is_async: bool, cls: Any) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    tools, asked, sub_asked = Tools(), Asked(), Asked()
    rlm, _, interpreter = build(tools, store, asked, sub_asked, cls)
    whole = call(rlm, is_async)
    assert whole.answer == "40BBS" and tools.calls == ["b"]
    assert interpreter.timeouts == [
        None,
        30.0,
        12.5,
        None,
    ]  # the model's per-action timeouts, as the code ran with them
    assert len(asked.prompts) == 4 and len(sub_asked.prompts) == 2

    # The same run, dying in iteration 2 inside lookup('b'), after its action was committed.
    tools, asked, sub_asked = Tools(), Asked(), Asked()
    tools.die_on = "b"
    rlm, durable, _ = build(tools, store, asked, sub_asked, cls)
    with pytest.raises(WorkerDied):
        call(rlm, is_async)
    run_id = durable.last_run_id
    assert run_id is not None and store.load(run_id).status == "running"
    assert len(asked.prompts) == 2 and len(sub_asked.prompts) == 1
    action = next(s for s in store.load(run_id).steps if s.kind == "action" and s.iteration == 1)
    assert action.data["reasoning"] == "look up" and action.data["fields"] == {"execution_timeout_seconds": 30.0}

    # Another worker resumes it: iteration 1 replayed and iteration 2's action from the record (no LM call, `ask`
    # answered from the record), lookup('b') made again (it never returned), iterations 3 and 4 asked of the LM.
    tools.calls.clear()
    asked, sub_asked = Asked(), Asked()
    _, other, interpreter = build(tools, store, asked, sub_asked, cls)
    resumed = asyncio.run(other.aresume(run_id)) if is_async else other.resume(run_id)
    assert resumed.answer == whole.answer and steps_of(resumed) == steps_of(whole)
    assert tools.calls == ["b"]
    assert [p.split("[[ ## iteration ## ]]\n")[-1][:3] for p in asked.prompts] == ["3/5", "4/5"]
    assert len(sub_asked.prompts) == 1  # predict() of iteration 3; ask('hi') came from the record
    assert interpreter.timeouts == [None, 30.0, 12.5, None]  # the replayed actions reached the loop with their fields
    assert store.load(run_id).status == "done"


def test_a_fork_of_a_predict_rlm_run_replays_its_actions(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    tools, asked, sub_asked = Tools(), Asked(), Asked()
    rlm, durable, _ = build(tools, store, asked, sub_asked)
    whole = rlm(text="a fox")
    assert durable.last_run_id is not None
    fork = durable.fork(durable.last_run_id, at=3, code="SUBMIT(answer=r['summary'] + y)")
    asked, sub_asked = Asked(), Asked()
    _, other, interpreter = build(tools, store, asked, sub_asked)
    forked = other.resume(fork)
    assert forked.answer == "SBB" and steps_of(forked)[:3] == steps_of(whole)[:3]
    assert asked.prompts == [] and sub_asked.prompts == []  # everything came from the record or the fork's code
    assert interpreter.timeouts == [None, 30.0, 12.5, None]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_predict_rlm_run_suspends_for_a_decision_and_resumes_with_it(tmp_path: Path, is_async: bool) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    tools, asked = Tools(), Asked()

    def approving(rlm: Any) -> Any:
        handler = Approval(lambda request: Defer() if "lookup" in request.code else Approve(), code=True)
        handler.install(rlm_events.instrumentation_of(rlm))  # type: ignore[arg-type]
        return rlm

    rlm, _, _ = build(tools, store, asked, Asked())
    suspended = call(approving(rlm), is_async)
    assert isinstance(suspended, Suspended) and suspended.pending["iteration"] == 1
    assert tools.calls == [] and len(asked.prompts) == 2

    asked = Asked()
    resumer, other, _ = build(tools, store, asked, Asked())
    approving(resumer)
    resumed = other.decide(suspended.run_id, Edit(code="y = lookup(key='e')\nprint(y)"))
    assert resumed is not None and resumed.answer == "40EES" and tools.calls == ["e"]
    assert [p.split("[[ ## iteration ## ]]\n")[-1][:3] for p in asked.prompts] == ["3/5", "4/5"]
