"""Human approval: a handler approves, edits or rejects code and tool calls, or defers and the run suspends
durably until a decision from any process (here: another Durable on the same store, as another process has)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import dspy
import pytest
from conftest import REAL_INTERPRETER

import rlm_events
from rlm_events.durable import (
    AlreadyDecidedError,
    Approval,
    Approve,
    AwaitingDecisionError,
    Defer,
    Durable,
    Edit,
    Reject,
    Request,
    SQLiteStore,
    Suspended,
    UnknownRunError,
    decide,
)
from rlm_events.errors import StageError
from rlm_events.testing import ScriptedLM, build_rlm

STEPS = ["r = send(to='bob', text='hi')\nprint(r)", "print('after')", "SUBMIT(answer=r)"]


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    def send(self, to: str, text: str) -> str:
        """Send a message."""
        self.sent.append((to, text))
        return f"sent to {to}"


def make(outbox: Outbox, store: Any, handler: Any, **options: Any) -> tuple[dspy.RLM, Durable | None]:
    rlm = build_rlm("text -> answer", max_iters=5, tools=[outbox.send], interpreter_factory=REAL_INTERPRETER)
    events = rlm_events.instrument(rlm)
    durable = Durable(store).install(events) if store is not None else None
    Approval(handler, **options).install(events)
    return rlm, durable


def test_a_handler_approves_edits_or_rejects_the_code(tmp_path: Path) -> None:
    seen: list[Request] = []

    def handler(request: Request) -> Any:
        seen.append(request)
        if request.iteration == 0:
            return Edit(code="r = 'edited'\nprint(r)")
        if request.iteration == 1:
            return Reject("no printing")
        return Approve()

    outbox = Outbox()
    rlm, _ = make(outbox, tmp_path / "runs.db", handler)
    with dspy.context(lm=ScriptedLM(STEPS)):
        result = rlm(text="t")
    assert [r.kind for r in seen] == ["code", "code", "code"]
    assert seen[0].code == STEPS[0] and seen[2].history[1]["output"] == "[Rejected] no printing"
    assert result.answer == "edited" and outbox.sent == []
    assert result.trajectory[0]["code"] == "r = 'edited'\nprint(r)"


def test_a_handler_edits_or_rejects_named_tool_calls_without_durability() -> None:
    outbox = Outbox()

    def handler(request: Request) -> Any:
        assert request.kind == "tool" and request.name == "send" and request.kwargs == {"to": "bob", "text": "hi"}
        return Edit(kwargs={"to": "alice", "text": "hi"})

    rlm, _ = make(outbox, None, handler, code=False, tools=["send"])
    with dspy.context(lm=ScriptedLM(STEPS)):
        assert rlm(text="t").answer == "sent to alice"
    assert outbox.sent == [("alice", "hi")]
    rlm, _ = make(outbox, None, lambda request: Reject("not today"), code=False, tools=["send"])
    with dspy.context(lm=ScriptedLM(STEPS)):
        assert rlm(text="t").answer == "[Rejected] not today"
    assert len(outbox.sent) == 1
    with pytest.raises(ValueError, match="no tool named 'sned'; did you mean 'send'"):
        make(outbox, None, handler, tools=["sned"])
    # Deferring needs a Durable: a clear error (at a tool call, the code reads it).
    rlm, _ = make(outbox, None, lambda request: Defer())
    with dspy.context(lm=ScriptedLM(STEPS)), pytest.raises(StageError, match=r"pre_execution: .* not durable"):
        rlm(text="t")
    rlm, _ = make(outbox, None, lambda request: Defer(), code=False, tools=["send"])
    with dspy.context(lm=ScriptedLM(STEPS)):
        assert "not durable" in rlm(text="t").trajectory[0]["output"]


def test_an_async_handler_with_an_async_call(tmp_path: Path) -> None:
    async def handler(request: Request) -> Any:
        await asyncio.sleep(0)
        return Edit(kwargs={"to": "dave", "text": "hi"}) if request.kind == "tool" else Approve()

    outbox = Outbox()
    rlm, _ = make(outbox, tmp_path / "runs.db", handler, tools=["send"])
    with dspy.context(lm=ScriptedLM(STEPS)):
        assert asyncio.run(rlm.acall(text="t")).answer == "sent to dave"
    assert outbox.sent == [("dave", "hi")]


@pytest.mark.parametrize("kind", ["tool", "code"])
def test_a_deferred_step_suspends_the_run_until_a_decision_from_another_worker(tmp_path: Path, kind: str) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    outbox = Outbox()
    asked: list[Request] = []

    def defer_first(request: Request) -> Any:
        asked.append(request)
        return Defer("please look") if request.iteration == 0 else Approve()

    options: dict[str, Any] = {"code": False, "tools": ["send"]} if kind == "tool" else {}
    rlm, durable = make(outbox, store, defer_first, **options)
    lm = ScriptedLM(STEPS)
    with dspy.context(lm=lm):
        outcome = rlm(text="t")
    assert isinstance(outcome, Suspended)
    assert outcome.pending["kind"] == kind and outcome.pending["note"] == "please look"
    assert outbox.sent == [] and len(lm.history) == 1
    stored = store.load(outcome.run_id)
    assert stored.status == "suspended" and stored.pending is not None and stored.pending["iteration"] == 0
    assert durable is not None and durable.pending()[0]["run_id"] == outcome.run_id
    with pytest.raises(AwaitingDecisionError, match="waits for a decision"):
        durable.resume(outcome.run_id)

    # Another worker decides and resumes: the step is not asked again, the action LM call is not repeated.
    rlm, other = make(outbox, store, defer_first, **options)
    assert other is not None
    second_lm = ScriptedLM(STEPS)
    with dspy.context(lm=second_lm):
        if kind == "tool":
            result = other.decide(outcome.run_id, Edit(kwargs={"to": "carol", "text": "hi"}))
        else:
            result = other.decide(outcome.run_id, Approve())
    assert result is not None and not isinstance(result, Suspended)
    assert outbox.sent == ([("carol", "hi")] if kind == "tool" else [("bob", "hi")])
    assert len(second_lm.history) == 2  # iterations 2 and 3; iteration 1's action came from the record
    # iteration 1 was asked once (deferred), then its decision came from the store
    assert [r.iteration for r in asked] == ([0, 1, 2] if kind == "code" else [0])
    assert store.load(outcome.run_id).status == "done"
    with pytest.raises(AlreadyDecidedError, match="it is done, not suspended"):
        decide(store, outcome.run_id, Approve())
    with pytest.raises(UnknownRunError):
        decide(store, "no-such-run", Approve())


def test_a_decision_is_taken_once(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    rlm, _ = make(Outbox(), store, lambda request: Defer())
    with dspy.context(lm=ScriptedLM(STEPS)):
        outcome = rlm(text="t")
    decide(store, outcome.run_id, Reject("no"))
    with pytest.raises(AlreadyDecidedError, match="decided already"):
        decide(store, outcome.run_id, Approve())


def test_timeouts_apply_the_default_decision(tmp_path: Path) -> None:
    outbox = Outbox()

    def slow(request: Request) -> Any:
        time.sleep(1.0)
        return Approve()

    rlm, _ = make(outbox, tmp_path / "a.db", slow, code=False, tools=["send"], timeout=0.05)
    with dspy.context(lm=ScriptedLM(STEPS)):
        assert rlm(text="t").answer == "[Rejected] no decision in time"
    assert outbox.sent == []

    # A deferred step nobody decided before its deadline gets the default when the run is resumed.
    store = SQLiteStore(tmp_path / "b.db")
    rlm, durable = make(
        outbox, store, lambda request: Defer(), tools=["send"], code=False, timeout=0.05, default=Approve()
    )
    with dspy.context(lm=ScriptedLM(STEPS)):
        outcome = rlm(text="t")
    assert isinstance(outcome, Suspended) and durable is not None
    time.sleep(0.1)
    with dspy.context(lm=ScriptedLM(STEPS)):
        assert durable.resume(outcome.run_id).answer == "sent to bob"
    assert outbox.sent == [("bob", "hi")]
