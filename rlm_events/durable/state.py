"""What a durable run keeps while it runs ([`RunState`][rlm_events.durable.state.RunState], at
`run.state["durable"]`): where it commits, what it replays, and the per-run state it restores (the built-ins' usage,
DSPy's `max_llm_calls` counter)."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from ..context import Run
from ..lm_usage import Usage, metered
from ..replay._json import jsonable
from ..runtime import FacadeCall, LLMCallCounter
from .errors import LeaseLostError
from .record import IterationRecord, RunRecord, raise_recorded
from .store import Step, StepKind, Store

logger = logging.getLogger("rlm_events.durable")
STATE_KEY = "durable"


def usage_snapshot(run: Run) -> dict[str, Any] | None:
    """The run's [`Usage`][rlm_events.lm_usage.Usage] (a Budget's `Spend`, when a Budget meters it) as JSON."""
    usage = metered(run)
    if usage is None:
        return None
    fields = {f.name: getattr(usage, f.name) for f in dataclasses.fields(usage) if f.name != "started"}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}


def restore_usage(usage: Usage, snapshot: dict[str, Any]) -> None:
    """Put a [`usage_snapshot()`][rlm_events.durable.state.usage_snapshot] back into the run's `usage` (fields it
    lacks are skipped); a Budget's clock restarts where it stopped."""
    names = {f.name for f in dataclasses.fields(usage)}
    for name, value in snapshot.items():
        if name in names:
            current = getattr(usage, name)
            setattr(usage, name, tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value)
    if "started" in names and isinstance(snapshot.get("seconds"), (int, float)):
        usage.started = time.monotonic() - float(snapshot["seconds"])  # type: ignore[attr-defined]


class RunState:
    """One durable run in this process: its store, lease, the record it replays, and the step being committed.

    `replay_until` iterations are replayed (their actions, tool results and history entries come from the record);
    the iteration after them is `inflight` when its action was committed before the previous worker stopped: its
    action and recorded tool results are reused, the rest of it runs for real.
    """

    def __init__(
        self,
        run_id: str,
        store: Store,
        owner: str,
        lease_seconds: float,
        *,
        record: RunRecord | None = None,
        decision: tuple[dict[str, Any], dict[str, Any]] | None = None,
        allow_divergence: bool = False,
        parent: str | None = None,
        relation: str | None = None,
    ) -> None:
        self.run_id, self.store, self.owner, self.lease_seconds = run_id, store, owner, lease_seconds
        self.record = record or RunRecord({}, 0, None, 0)
        self.seq = self.record.seq
        self.replay_until = self.record.completed
        self.decision = decision  # (pending, decision) of a suspended run resumed after a decision
        self.allow_divergence = allow_divergence
        self.parent, self.relation = parent, relation
        self.iteration = -1
        self.tool_index = 0
        self.tool_indexes: dict[int, int] = {}  # id(tool_call context) -> its index in the iteration
        self.skip: Any = None
        self.pre: dict[str, Any] = {}
        self.divergence: str | None = None
        self.settled_step: tuple[str, int, int | None] | None = None
        self.lost = False  # the lease was lost: write nothing more
        self.llm_calls: LLMCallCounter | None = None
        """DSPy's `max_llm_calls` counter of this call (found in its first iteration; `None` where DSPy keeps it
        where rlm-events cannot read it): committed with each step, continued from the record on replay."""
        self.facade_calls: FacadeCall | None = None
        """What answers the predictor calls the code makes through DSPy's sandbox `dspy` facade (3.4.1+)."""

    # -- replay -----------------------------------------------------------------------------------------------

    @property
    def replaying(self) -> bool:
        """Whether the current iteration is replayed from the record (every stage of it is)."""
        return 0 <= self.iteration < self.replay_until

    def recorded(self) -> IterationRecord | None:
        """The record of the current iteration: complete (replayed) or in flight."""
        return self.record.iterations.get(self.iteration)

    def recorded_action(self) -> tuple[str, str, dict[str, Any]] | None:
        """The `(reasoning, code, other fields)` the loop gets instead of an LM call in the current iteration, if
        recorded."""
        record = self.recorded()
        if record is None:
            return None
        if record.entry is not None:  # replayed: the code as it ran (after the middleware that changed it)
            return str(record.entry.get("reasoning", "")), str(record.entry.get("code", "")), record.fields
        return (record.reasoning, record.code, record.fields) if record.code else None

    def tool_index_of(self, ctx: Any) -> int | None:
        """The 0-based index, among the current iteration's tool calls, of the call whose context is `ctx`."""
        return self.tool_indexes.get(id(ctx))

    def replayed_llm_calls(self, data: dict[str, Any]) -> None:
        """A replayed step (a tool result or an iteration) was served from the record: DSPy's counter continues from
        the count committed with it, so the calls answered from the record count as they did."""
        recorded = (data.get("state") or {}).get("llm_calls")
        if self.llm_calls is not None and isinstance(recorded, int):
            self.llm_calls.continue_from(recorded)

    def served(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """The recorded result of the call `data` (a [`tool_step()`][rlm_events.durable.record.tool_step]) in the
        current iteration, marked served (DSPy's counter continues from it); `None` when the record has none. A
        replayed iteration's call the record lacks diverged: `RuntimeError` unless divergence is allowed."""
        record = self.recorded()
        if record is None:
            return None
        found = record.take_tool(data["name"], data["args"], data["kwargs"])
        if found is not None:
            self.replayed_llm_calls(found)
            return found
        if self.replaying:
            detail = f"the code called {data['name']} with arguments the record does not hold ({data['args']!r:.200})"
            self.diverged(detail)
            if not self.allow_divergence:
                raise RuntimeError(f"durable replay: {detail}")
        return None

    @staticmethod
    def result_of(found: dict[str, Any]) -> Any:
        """A recorded call's result, or the error it raised, raised again as the code saw it."""
        if found.get("error_type") is not None:
            raise_recorded(found)
        return found.get("result")

    def made(self, run: Run, data: dict[str, Any], make: Callable[[], Any]) -> Any:
        """`make()`'s result (the call `data` made for real), committed as a `tool` step with it or with the error
        it raised."""
        try:
            result = make()
        except Exception as exc:
            args, exact = jsonable(list(exc.args))
            data.update(error_type=type(exc).__name__, error_message=str(exc), error_args=args if exact else None)
            self.commit(run, "tool", data)
            raise
        data["result"], data["exact"] = jsonable(result)
        self.commit(run, "tool", data)
        return result

    def diverged(self, detail: str) -> None:
        if self.divergence is None:
            self.divergence = detail

    def take_decision(self, kind: str, iteration: int, index: int | None) -> dict[str, Any] | None:
        """The decision a resumed run carries for this step (code of `iteration`, or its `index`-th tool call), once;
        the step is then settled (see [`settled()`][rlm_events.durable.state.RunState.settled])."""
        if self.decision is None:
            return None
        pending, decision = self.decision
        if pending.get("kind") == kind and pending.get("iteration") == iteration and pending.get("index") == index:
            self.decision = None
            self.settled_step = (kind, iteration, index)
            return decision
        return None

    def settled(self, kind: str, iteration: int, index: int | None) -> bool:
        """Whether this step's decision came from the store: an Approval does not ask about it again."""
        return self.settled_step == (kind, iteration, index)

    def link(self) -> dict[str, Any]:
        """What a trace's `run_start` records of this durable run: its id, and the run it resumes or forks."""
        found: dict[str, Any] = {"run_id": self.run_id}
        if self.relation is not None:
            found.update(relation=self.relation, parent=self.parent, replayed=self.replay_until)
        return found

    # -- commits ----------------------------------------------------------------------------------------------

    def commit(self, run: Run, kind: StepKind, data: dict[str, Any], *, with_state: bool = True) -> None:
        """Append a step of the current iteration (with the run's usage and DSPy's `max_llm_calls` count when
        `with_state`)."""
        if self.lost:  # every later commit fails too: the run stops rather than go on beside the new owner
            raise LeaseLostError.of(self.run_id, self.owner)
        if with_state:
            kept: dict[str, Any] = {}
            snapshot = usage_snapshot(run)
            if snapshot is not None:
                kept["usage"] = snapshot
            if self.llm_calls is not None:
                kept["llm_calls"] = self.llm_calls.count
            if kept:
                data = {**data, "state": kept}
        step = Step(self.seq, self.iteration, kind, data)
        try:
            self.store.append(self.run_id, self.owner, step, self.lease_seconds)
        except LeaseLostError:
            self.lost = True
            raise
        self.seq += 1


def state_of(run: Run) -> RunState | None:
    """The durable state of `run`, if a [`Durable`][rlm_events.durable.Durable] made it durable."""
    state = run.state.get(STATE_KEY)
    return state if isinstance(state, RunState) else None


def recorded_action_of(run: Any) -> tuple[str, str, dict[str, Any]] | None:
    """The recorded action for `run`'s current iteration (what `serving_recorded_actions` asks)."""
    state = state_of(run) if isinstance(run, Run) else None
    return state.recorded_action() if state is not None else None


__all__ = ["STATE_KEY", "RunState", "recorded_action_of", "restore_usage", "state_of", "usage_snapshot"]
