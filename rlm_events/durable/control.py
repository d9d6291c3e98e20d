"""What a [`Durable`][rlm_events.durable.Durable] does with runs in the store, beside committing them: resume, fork
and decide them, from any process ([`RunControl`][rlm_events.durable.control.RunControl])."""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dspy import Prediction

from ..replay._json import jsonable
from ..runtime import counts_llm_calls, serving_recorded_actions
from .decisions import Decision, decision_to_json
from .errors import AwaitingDecisionError, DurableError, RecordMismatchError, RunFinishedError, RunLeasedError
from .record import RunRecord, check_matches, typed_inputs
from .state import RunState, recorded_action_of
from .store import Step, Store

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

logger = logging.getLogger("rlm_events.durable")


class Claim:
    """A resume in progress: the run state its call takes over at `run_start`."""

    def __init__(self, module: Any, state: RunState) -> None:
        self.module, self.state, self.taken = module, state, False


RESUMING: contextvars.ContextVar[Claim | None] = contextvars.ContextVar("rlm_events_durable_resume", default=None)


def open_store(store: Store | str | Path) -> Store:
    """`store` itself, or the store a string names: a `postgresql://` / `postgres://` URL, else a SQLite file path."""
    if isinstance(store, (str, Path)):
        text = str(store)
        if text.startswith(("postgresql://", "postgres://")):
            from .postgres import PostgresStore

            return PostgresStore(text)
        from .sqlite import SQLiteStore

        return SQLiteStore(text)
    if not isinstance(store, Store):
        raise TypeError(f"Durable(store=...) must be a Store, a SQLite path or a postgresql:// URL, got {store!r}")
    return store


def decide(store: Store | str | Path, run_id: str, decision: Decision) -> None:
    """Record `decision` for the suspended run `run_id` (any process; a worker resumes it). Raises
    [`UnknownRunError`][rlm_events.durable.UnknownRunError] or
    [`AlreadyDecidedError`][rlm_events.durable.AlreadyDecidedError]."""
    open_store(store).decide(run_id, decision_to_json(decision))


class RunControl:
    """Resume, fork and decide durable runs (the part of [`Durable`][rlm_events.durable.Durable] that is not
    middleware)."""

    store: Store
    worker: str
    lease_seconds: float
    allow_divergence: bool
    _events: Instrumentation | None

    def _module(self, rlm: Any) -> Any:
        if rlm is not None:
            return rlm
        modules = self._events.modules if self._events is not None else ()
        if len(modules) != 1:
            raise ValueError(
                f"Durable.resume(): pass rlm=...; this Durable's instrumentation is attached to {len(modules)} RLMs"
            )
        return modules[0]

    def _claim(self, run_id: str, rlm: Any, wait: float) -> tuple[RunState, dict[str, Any]]:
        deadline = time.monotonic() + wait
        while True:
            try:
                stored = self.store.acquire(run_id, self.worker, self.lease_seconds)
                break
            except RunLeasedError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        allow = self.allow_divergence or bool(stored.meta.get("allow_divergence"))
        try:
            if stored.status == "done":
                raise RunFinishedError(f"durable run {run_id!r} is done: nothing to resume (fork it to run it again)")
            check_matches(run_id, stored.meta, rlm)
            record = RunRecord.of(stored.steps)
            if record.charged_llm_calls() and not counts_llm_calls(rlm):
                self._uncounted(run_id, type(rlm).__name__, allow)
            decision = None
            if stored.status == "suspended":
                pending = stored.pending or {}
                decided = stored.decision
                if decided is None and pending.get("deadline") is not None and time.time() >= pending["deadline"]:
                    decided = pending.get("default")
                    logger.warning("rlm-events Durable: run %s: no decision in time; the default applies", run_id)
                if decided is None:
                    raise AwaitingDecisionError(
                        f"durable run {run_id!r} is suspended and waits for a decision on its {pending.get('kind')} "
                        f"in iteration {int(pending.get('iteration', 0)) + 1}: decide(...) first"
                    )
                decision = (pending, decided)
                self.store.take_decision(run_id, self.worker)
        except BaseException:
            self.store.release(run_id, self.worker)
            raise
        inflight = record.inflight()
        if inflight is not None:
            logger.warning(
                "rlm-events Durable: resuming run %s in iteration %d: its code comes from the record (no LM call); "
                "tool calls it made after the last committed one are made again",
                run_id,
                record.completed + 1,
            )
        elif stored.status == "running" and stored.updated:
            logger.warning(
                "rlm-events Durable: resuming run %s after iteration %d: if the previous worker stopped during the LM "
                "call of iteration %d, that one call is made again",
                run_id,
                record.completed,
                record.completed + 1,
            )
        state = RunState(run_id, self.store, self.worker, self.lease_seconds, record=record, decision=decision)
        state.allow_divergence = allow
        if stored.relation == "fork" and record.completed == stored.meta.get("forked_at"):
            state.parent, state.relation = stored.parent, "fork"  # the fork's first call
        else:
            state.parent, state.relation = run_id, "resume"  # the first call's trace run_id is the durable id
        return state, typed_inputs(rlm, dict(stored.meta.get("inputs") or {}))

    @staticmethod
    def _uncounted(run_id: str, cls: str, allow: bool) -> None:
        """The record charged sub-LLM calls, and this RLM keeps DSPy's `max_llm_calls` counter where it cannot be
        continued: refuse (a resumed run could make more sub-LLM calls than an uninterrupted one), or, where the
        user allows divergence, say so and go on."""
        detail = (
            f"its record charged sub-LLM calls against max_llm_calls, and {cls} keeps that counter where rlm-events "
            "cannot continue it (checked on DSPy 3.1.2 to 3.4.1): resumed, it would count them again from 0"
        )
        if not allow:
            raise RecordMismatchError(run_id, f"{detail}; pass Durable(allow_divergence=True) to resume anyway")
        logger.warning("rlm-events Durable: resuming run %s although %s (divergence allowed)", run_id, detail)

    def resume(self, run_id: str, *, rlm: Any = None, wait: float = 0.0) -> Prediction:
        """Continue the durable run `run_id` from its last commit, in this process; return what its call returns
        (a [`Suspended`][rlm_events.durable.Suspended] if it suspends again). `wait`: seconds to wait for another
        worker's lease to expire. Raises [`RunLeasedError`][rlm_events.durable.RunLeasedError],
        [`RunFinishedError`][rlm_events.durable.RunFinishedError],
        [`RecordMismatchError`][rlm_events.durable.RecordMismatchError] or
        [`UnknownRunError`][rlm_events.durable.UnknownRunError] before anything runs."""
        with self._resuming(run_id, rlm, wait) as (module, inputs):
            return module(**inputs)  # type: ignore[no-any-return]

    async def aresume(self, run_id: str, *, rlm: Any = None, wait: float = 0.0) -> Prediction:
        """[`resume()`][rlm_events.durable.Durable.resume] for async code: the run continues with `acall`."""
        with self._resuming(run_id, rlm, wait) as (module, inputs):
            return await module.acall(**inputs)  # type: ignore[no-any-return]

    @contextmanager
    def _resuming(self, run_id: str, rlm: Any, wait: float) -> Iterator[tuple[Any, dict[str, Any]]]:
        """The RLM and inputs to call for resuming `run_id`: the call made in the block takes the run over."""
        module = self._module(rlm)
        state, inputs = self._claim(run_id, module, wait)
        token = RESUMING.set(Claim(module, state))
        try:
            with serving_recorded_actions(module, recorded_action_of):
                yield module, inputs
        finally:
            RESUMING.reset(token)

    def decide(self, run_id: str, decision: Decision, *, resume: bool = True, rlm: Any = None) -> Prediction | None:
        """Record `decision` for the suspended run `run_id`; with `resume`, continue it here and return what its
        call returns."""
        decide(self.store, run_id, decision)
        return self.resume(run_id, rlm=rlm) if resume else None

    def fork(
        self,
        run_id: str,
        *,
        at: int,
        code: str | None = None,
        inputs: dict[str, Any] | None = None,
        history: dict[int, dict[str, Any]] | None = None,
    ) -> str:
        """A new durable run (returned: its id) that replays `run_id`'s first `at` iterations and goes on from there:
        with `code` as iteration `at + 1`'s code instead of asking the LM, other `inputs`, and `history` edits
        (`{iteration (0-based): {"reasoning"/"code"/"output": ...}}`; an edited output is what the LM reads).
        Run it with [`resume()`][rlm_events.durable.Durable.resume]. Changed inputs or history allow divergence."""
        stored = self.store.load(run_id)
        record = RunRecord.of(stored.steps)
        if isinstance(at, bool) or not isinstance(at, int) or not 0 <= at <= record.completed:
            raise ValueError(
                f"fork(at=...) must be an int from 0 to {record.completed} (the iterations run {run_id!r} "
                f"committed), got {at!r}"
            )
        meta = dict(stored.meta)
        if inputs is not None:
            json_inputs, exact = jsonable(dict(inputs))
            if not exact:
                raise DurableError("fork(inputs=...) must be JSON")
            meta["inputs"] = json_inputs
        meta["forked_at"] = at
        meta["allow_divergence"] = bool(meta.get("allow_divergence") or inputs is not None or history)
        new_id = uuid.uuid4().hex
        self.store.create(new_id, meta, self.worker, self.lease_seconds, (run_id, "fork"))
        seq = 0
        for step in stored.steps:
            if step.iteration >= at:
                continue
            data = step.data
            if step.kind == "iteration" and history and step.iteration in history:
                edits = dict(history[step.iteration])
                entry = {**(data.get("entry") or {}), **edits}
                if "output" in edits:
                    entry["pinned"] = True
                data = {**data, "entry": entry}
            self.store.append(new_id, self.worker, Step(seq, step.iteration, step.kind, data), self.lease_seconds)
            seq += 1
        if code is not None:
            action = {"reasoning": f"(forked from run {run_id} at iteration {at})", "code": code}
            self.store.append(new_id, self.worker, Step(seq, at, "action", action), self.lease_seconds)
        self.store.release(new_id, self.worker)
        return new_id

    def pending(self) -> list[dict[str, Any]]:
        """The steps suspended runs wait a decision on (each with its `run_id`), oldest first."""
        return [dict(run.pending or {}, run_id=run.run_id) for run in reversed(self.store.runs("suspended"))]


__all__ = ["RESUMING", "Claim", "RunControl", "decide", "open_store"]
