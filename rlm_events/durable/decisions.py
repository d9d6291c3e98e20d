"""What a person (or a handler) decides about a step, and what a run that waits for a decision returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dspy import Prediction


@dataclass(frozen=True)
class Approve:
    """Run the step as it is."""


@dataclass(frozen=True)
class Edit:
    """Run the step changed: new `code` (at `pre_execution`), or new `args`/`kwargs` for the tool call (`None`:
    unchanged)."""

    code: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None


@dataclass(frozen=True)
class Reject:
    """Do not run the step: the code (or the tool call) gets `reason`, which the LM reads in its history."""

    reason: str = "rejected by a reviewer"


@dataclass(frozen=True)
class Defer:
    """Decide later: the run suspends durably, the call returns [`Suspended`][rlm_events.durable.Suspended], and
    [`decide()`][rlm_events.durable.Durable.decide] from any process settles it. `note` is shown to the person."""

    note: str = ""


Decision = Approve | Edit | Reject
Answer = Approve | Edit | Reject | Defer


def decision_to_json(decision: Decision) -> dict[str, Any]:
    """A decision as JSON: `{"action": "approve" | "edit" | "reject", ...}`."""
    if isinstance(decision, Approve):
        return {"action": "approve"}
    if isinstance(decision, Edit):
        return {"action": "edit", "code": decision.code, "args": decision.args, "kwargs": decision.kwargs}
    if isinstance(decision, Reject):
        return {"action": "reject", "reason": decision.reason}
    raise TypeError(f"a decision is Approve(), Edit(...) or Reject(...), got {decision!r}")


def decision_from_json(data: dict[str, Any]) -> Decision:
    """The decision [`decision_to_json()`][rlm_events.durable.decisions.decision_to_json] wrote; `ValueError` naming
    the action for anything else."""
    action = data.get("action")
    if action == "approve":
        return Approve()
    if action == "edit":
        return Edit(code=data.get("code"), args=data.get("args"), kwargs=data.get("kwargs"))
    if action == "reject":
        return Reject(str(data.get("reason") or "rejected by a reviewer"))
    raise ValueError(f"a decision's action is 'approve', 'edit' or 'reject', got {action!r}")


class Suspended(Prediction):
    """What the call of a durable run returns when it suspended to wait for a decision: no outputs, but
    `run_id` (to [`decide()`][rlm_events.durable.Durable.decide] and resume it) and `pending` (what waits: `kind`
    `"code"` or `"tool"`, the iteration, the code or the tool's name and arguments)."""

    run_id: str
    pending: dict[str, Any]

    def __init__(self, run_id: str, pending: dict[str, Any]) -> None:
        super().__init__(run_id=run_id, pending=pending)


class SuspendRun(BaseException):
    """Raised by [`Approval`][rlm_events.durable.Approval] to suspend the run (a `BaseException`, so the interpreter
    running the code passes it through instead of turning it into text the LM reads). `pending` is what waits."""

    def __init__(self, pending: dict[str, Any]) -> None:
        super().__init__(f"the run suspends to wait for a decision on {pending.get('kind', 'a step')}")
        self.pending = pending


__all__ = [
    "Answer",
    "Approve",
    "Decision",
    "Defer",
    "Edit",
    "Reject",
    "SuspendRun",
    "Suspended",
    "decision_from_json",
    "decision_to_json",
]
