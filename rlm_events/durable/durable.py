"""[`Durable`][rlm_events.durable.Durable]: commits every iteration of an instrumented RLM's runs to a store, and
resumes, forks and decides them from any process."""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dspy import Prediction
from dspy.primitives.repl_types import REPLEntry

from .. import context
from ..builtin import Builtin
from ..lm_usage import meter_run
from ..replay._json import jsonable
from ..runtime import serving_recorded_actions
from ..stages import Stage
from .approval import apply_to_code, apply_to_tool
from .decisions import Decision, Suspended, SuspendRun, decision_from_json, decision_to_json
from .errors import (
    DivergenceError,
    DurableError,
    LeaseLostError,
    RunFinishedError,
    RunLeasedError,
    StoreUnavailableError,
)
from .record import RunRecord, check_matches, meta_of, raise_recorded, tool_step
from .state import STATE_KEY, RunState, recorded_action_of, restore_usage, state_of, usage_snapshot
from .store import Step, Store

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

logger = logging.getLogger("rlm_events.durable")


_LOOP_CONTEXTS = (
    context.PreIterationContext,
    context.PreExecutionContext,
    context.PostIterationContext,
    context.RunEndContext,
)


class AwaitingDecisionError(DurableError):
    """The run is suspended and waits for a decision nobody gave yet (and its deadline, if any, has not passed)."""


class _Claim:
    """A resume in progress: the run state its call takes over at `run_start`."""

    def __init__(self, module: Any, state: RunState) -> None:
        self.module, self.state, self.taken = module, state, False


_RESUMING: contextvars.ContextVar[_Claim | None] = contextvars.ContextVar("rlm_events_durable_resume", default=None)


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


class Durable(Builtin):
    """Makes the runs of an instrumented RLM durable: each iteration is committed to `store`.

    `Durable(store, lease_seconds=60, best_effort=False, allow_divergence=False)`; `store` is a
    [`Store`][rlm_events.durable.store.Store], a SQLite file path or a `postgresql://` URL. Install it first
    (`Durable(...).install(events)`, before any other middleware): it must be the outermost middleware of its stages,
    so that a replayed iteration reaches no other middleware.

    Guarantees:

    * Per run (its id is the first call's `Run.id`): its inputs and the RLM's signature, tools and DSPy version at
      start; per iteration its code before it runs (so a crash repeats at most the LM call whose answer was not
      committed yet), each tool result (`llm_query` included) as it returns, and after the iteration its history
      entry and the run's usage (a Budget's spend). A worker holds a lease on the run and renews it with each
      commit; a worker that lost it writes nothing more.
    * [`resume()`][rlm_events.durable.Durable.resume] (any process, any worker) re-executes the committed iterations
      in a fresh interpreter, each action and tool result answered from the record, then goes on: same history,
      answer and usage as an uninterrupted run. What a replayed iteration printed must match the record, else
      [`DivergenceError`][rlm_events.durable.DivergenceError] (unless `allow_divergence`).
    * A store that cannot be reached fails the run at `run_start` with
      [`StoreUnavailableError`][rlm_events.durable.StoreUnavailableError], before any LM call; with
      `best_effort=True` the run goes on without durability and that is logged once.
    """

    STAGES: ClassVar[tuple[Stage, ...]] = (
        Stage.RUN_START,
        Stage.PRE_ITERATION,
        Stage.PRE_EXECUTION,
        Stage.TOOL_CALL,
        Stage.POST_ITERATION,
        Stage.RUN_END,
    )

    def __init__(
        self,
        store: Store | str | Path,
        *,
        lease_seconds: float = 60.0,
        best_effort: bool = False,
        allow_divergence: bool = False,
        worker: str | None = None,
    ) -> None:
        if isinstance(lease_seconds, bool) or not isinstance(lease_seconds, (int, float)) or lease_seconds <= 0:
            raise ValueError(f"Durable(lease_seconds=...) must be a number > 0, got {lease_seconds!r}")
        self.store = open_store(store)
        self.lease_seconds = float(lease_seconds)
        self.best_effort, self.allow_divergence = bool(best_effort), bool(allow_divergence)
        self.worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._events: Instrumentation | None = None
        self._warned = False
        self.last_run_id: str | None = None
        """The durable id of the run this Durable started or resumed last (in any thread)."""

    # -- installation -----------------------------------------------------------------------------------------

    def check(self, events: Instrumentation) -> None:
        for stage in self.STAGES:
            taken = [mw for mw in events.plan.chains[stage] if mw is not self]
            if taken:
                raise ValueError(
                    f"Durable must be installed before any other middleware (it must be outermost to replay an "
                    f"iteration without them); stage {stage.value!r} already has {taken[0]!r}"
                )

    def install(self, events: Instrumentation) -> Durable:  # type: ignore[override]
        super().install(events)
        self._events = events
        return self

    # -- the middleware ---------------------------------------------------------------------------------------

    def __call__(self, ctx: Any, next: Any) -> Any:
        if isinstance(ctx, context.ToolCallContext):
            return self._tool_call(ctx, next)
        if isinstance(ctx, context.RunStartContext):
            return self._run_start(ctx, next)
        state = state_of(ctx.run)
        if state is None:
            if isinstance(ctx, _LOOP_CONTEXTS):
                return next(ctx)
            raise self._wrong_stage(ctx)
        if isinstance(ctx, context.PreIterationContext):
            return self._pre_iteration(ctx, next, state)
        if isinstance(ctx, context.PreExecutionContext):
            return self._pre_execution(ctx, next, state)
        if isinstance(ctx, context.PostIterationContext):
            return self._post_iteration(ctx, next, state)
        if isinstance(ctx, context.RunEndContext):
            return self._run_end(ctx, next, state)
        raise self._wrong_stage(ctx)

    def _run_start(self, ctx: context.RunStartContext, next: Any) -> Any:
        claim = _RESUMING.get()
        if claim is not None and claim.module is ctx.run.module and not claim.taken:
            claim.taken = True
            state = claim.state
        else:
            inputs, exact = jsonable(dict(ctx.input_args))
            if not exact:
                raise DurableError(
                    f"run_start: a durable run's inputs must be JSON (they are committed to resume it); got "
                    f"{ {k: type(v).__name__ for k, v in ctx.input_args.items()} }"
                )
            state = RunState(ctx.run.id, self.store, self.worker, self.lease_seconds)
            try:
                self.store.create(ctx.run.id, meta_of(ctx.run.module, inputs), self.worker, self.lease_seconds)
            except StoreUnavailableError as exc:
                if not self.best_effort:
                    raise
                if not self._warned:
                    self._warned = True
                    logger.warning(
                        "rlm-events Durable: the store is unavailable (%s); runs go on without durability", exc
                    )
                return next(ctx)
        ctx.run.state[STATE_KEY] = state
        self.last_run_id = state.run_id
        ctx = next(ctx)
        usage = meter_run(ctx.run)
        if state.record.state and isinstance(state.record.state.get("usage"), dict):
            restore_usage(usage, state.record.state["usage"])
        return ctx

    def _pre_iteration(self, ctx: context.PreIterationContext, next: Any, state: RunState) -> Any:
        state.iteration, state.tool_index, state.skip, state.pre = ctx.iteration or 0, 0, None, {}
        if state.replaying:
            record = state.recorded()
            pre = (record.data.get("pre") if record is not None else None) or {}
            if pre.get("extra_vars"):
                ctx.extra_vars = dict(pre["extra_vars"])
            if "prelude" in pre:
                ctx.persistent_python_code = str(pre["prelude"])
            return ctx
        ctx = next(ctx)
        extra, exact = jsonable(dict(ctx.extra_vars))
        if ctx.extra_vars and exact:
            state.pre["extra_vars"] = extra
        if ctx.persistent_python_code:
            state.pre["prelude"] = ctx.persistent_python_code
        return ctx

    def _pre_execution(self, ctx: context.PreExecutionContext, next: Any, state: RunState) -> Any:
        record = state.recorded()
        if state.replaying and record is not None:
            skip = record.data.get("skip")
            if isinstance(skip, str):
                ctx.skip(skip)
            return ctx
        if record is None or not record.code:  # not in flight from a previous worker: commit the LM's answer now
            state.commit(ctx.run, "action", {"reasoning": ctx.reasoning, "code": ctx.code})
        decided = state.take_decision("code", state.iteration, None)
        if decided is not None:  # a person decided while the run was suspended
            apply_to_code(ctx, decision_from_json(decided))
        ctx = next(ctx)
        if ctx.skipped and isinstance(ctx.result, str):
            state.skip = str(ctx.result)
        return ctx

    def _tool_call(self, ctx: context.ToolCallContext, next: Any) -> Any:
        state = state_of(ctx.run)
        if state is None:
            return next(ctx)
        index, state.tool_index = state.tool_index, state.tool_index + 1
        state.tool_indexes[id(ctx)] = index
        data = tool_step(ctx.name, ctx.args, ctx.kwargs)
        record = state.recorded()
        if record is not None:
            found = record.take_tool(ctx.name, data["args"], data["kwargs"])
            if found is not None:
                if found.get("error_type") is not None:
                    raise_recorded(found)
                ctx.result = found.get("result")
                return ctx
            if state.replaying:
                detail = f"the code called {ctx.name} with arguments the record does not hold ({data['args']!r:.200})"
                state.diverged(detail)
                if not state.allow_divergence:
                    raise RuntimeError(f"durable replay: {detail}")
        data["index"] = index
        decided = state.take_decision("tool", state.iteration, index)
        try:
            if decided is not None and apply_to_tool(ctx, decision_from_json(decided)):
                pass  # rejected: the denial is the result
            else:
                ctx = next(ctx)
        except Exception as exc:
            args, exact = jsonable(list(exc.args))
            data.update(error_type=type(exc).__name__, error_message=str(exc), error_args=args if exact else None)
            state.commit(ctx.run, "tool", data)
            raise
        finally:
            state.tool_indexes.pop(id(ctx), None)
        data["result"], data["exact"] = jsonable(ctx.result)
        state.commit(ctx.run, "tool", data)
        return ctx

    def _post_iteration(self, ctx: context.PostIterationContext, next: Any, state: RunState) -> Any:
        record = state.recorded()
        if state.replaying and record is not None and record.entry is not None:
            return self._replayed(ctx, state, record.entry, record.data)
        ctx = next(ctx)
        entries = list(ctx.history.entries)
        entry, _ = jsonable(entries[-1].model_dump() if entries else {})
        data = {
            "entry": entry,
            "submitted": ctx.prediction is not None,
            "stop": ctx.stop,
            "stop_reason": ctx.stop_reason,
            "skip": state.skip,
            "pre": state.pre,
        }
        state.commit(ctx.run, "iteration", data)
        return ctx

    def _replayed(
        self, ctx: context.PostIterationContext, state: RunState, entry: dict[str, Any], data: dict[str, Any]
    ) -> Any:
        entries = list(ctx.history.entries)
        actual = entries[-1].output if entries else None
        if actual != entry.get("output"):
            state.diverged(f"it printed {actual!r:.300}, the record says {entry.get('output')!r:.300}")
        if (ctx.prediction is not None) != bool(data.get("submitted")):
            state.diverged("it submitted" if ctx.prediction is not None else "it did not submit, as it did then")
        if state.divergence is not None and not state.allow_divergence:
            raise DivergenceError(state.run_id, state.iteration + 1, state.divergence)
        if state.divergence is not None:
            logger.warning(
                "rlm-events Durable: run %s, iteration %d diverged from the record (%s); going on as allowed",
                state.run_id,
                state.iteration + 1,
                state.divergence,
            )
        state.divergence = None
        kept = dict(entry)
        if not entry.get("pinned") and entries:
            kept["output"] = entries[-1].output  # what runs now is what the LM reads next
        kept.pop("pinned", None)
        replayed = REPLEntry.model_validate(kept)
        ctx.history = ctx.history.model_copy(update={"entries": [*entries[:-1], replayed]})
        if not data.get("submitted"):
            ctx.prediction = None
        ctx.stop, ctx.stop_reason = bool(data.get("stop")), data.get("stop_reason")
        return ctx

    def _run_end(self, ctx: context.RunEndContext, next: Any, state: RunState) -> Any:
        error = ctx.error
        if isinstance(error, SuspendRun):
            pending = {**error.pending, "run_id": state.run_id}
            ctx.error, ctx.prediction, ctx.stop_reason = None, Suspended(state.run_id, pending), "suspended"
            ctx = next(ctx)
            self._finish(state, "suspended", pending=pending)
            return ctx
        ctx = next(ctx)
        if isinstance(ctx.error, LeaseLostError) or state.lost:
            return ctx
        if ctx.error is None:
            outputs: dict[str, Any] = {}
            if ctx.prediction is not None:
                fields = {k: v for k, v in ctx.prediction.items() if k not in ("trajectory", "final_reasoning")}
                outputs = jsonable(fields)[0]
            outcome = {
                "outputs": outputs,
                "usage": usage_snapshot(ctx.run),
                "iterations": ctx.iterations,
                "stop_reason": ctx.stop_reason,
            }
            self._finish(state, "done", outcome=outcome)
        elif isinstance(ctx.error, Exception):
            self._finish(state, "failed", outcome={"error": f"{type(ctx.error).__name__}: {ctx.error}"})
        else:  # interrupted (KeyboardInterrupt, cancellation): left running, resumable at once
            self._release(state)
        return ctx

    def _finish(self, state: RunState, status: Any, **fields: Any) -> None:
        try:
            self.store.finish(state.run_id, state.owner, status, **fields)
        except Exception:
            logger.exception("rlm-events Durable: could not mark run %s %s in the store", state.run_id, status)

    def _release(self, state: RunState) -> None:
        try:
            self.store.release(state.run_id, state.owner)
        except Exception:
            logger.exception("rlm-events Durable: could not release run %s", state.run_id)

    # -- resume, fork, decide ---------------------------------------------------------------------------------

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
        try:
            if stored.status == "done":
                raise RunFinishedError(f"durable run {run_id!r} is done: nothing to resume (fork it to run it again)")
            check_matches(run_id, stored.meta, rlm)
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
        record = RunRecord.of(stored.steps)
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
        allow = self.allow_divergence or bool(stored.meta.get("allow_divergence"))
        state = RunState(
            run_id,
            self.store,
            self.worker,
            self.lease_seconds,
            record=record,
            decision=decision,
            allow_divergence=allow,
        )
        if stored.relation == "fork" and record.completed == stored.meta.get("forked_at"):
            state.parent, state.relation = stored.parent, "fork"  # the fork's first call
        else:
            state.parent, state.relation = run_id, "resume"  # the first call's trace run_id is the durable id
        return state, dict(stored.meta.get("inputs") or {})

    def resume(self, run_id: str, *, rlm: Any = None, wait: float = 0.0) -> Prediction:
        """Continue the durable run `run_id` from its last commit, in this process; return what its call returns
        (a [`Suspended`][rlm_events.durable.Suspended] if it suspends again). `wait`: seconds to wait for another
        worker's lease to expire. Raises [`RunLeasedError`][rlm_events.durable.RunLeasedError],
        [`RunFinishedError`][rlm_events.durable.RunFinishedError],
        [`RecordMismatchError`][rlm_events.durable.RecordMismatchError] or
        [`UnknownRunError`][rlm_events.durable.UnknownRunError] before anything runs."""
        module = self._module(rlm)
        state, inputs = self._claim(run_id, module, wait)
        token = _RESUMING.set(_Claim(module, state))
        try:
            with serving_recorded_actions(module, recorded_action_of):
                return module(**inputs)  # type: ignore[no-any-return]
        finally:
            _RESUMING.reset(token)

    async def aresume(self, run_id: str, *, rlm: Any = None, wait: float = 0.0) -> Prediction:
        """[`resume()`][rlm_events.durable.Durable.resume] for async code: the run continues with `acall`."""
        module = self._module(rlm)
        state, inputs = self._claim(run_id, module, wait)
        token = _RESUMING.set(_Claim(module, state))
        try:
            with serving_recorded_actions(module, recorded_action_of):
                return await module.acall(**inputs)  # type: ignore[no-any-return]
        finally:
            _RESUMING.reset(token)

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

    def __repr__(self) -> str:
        return f"Durable({self.store!r}, lease_seconds={self.lease_seconds})"


__all__ = ["AwaitingDecisionError", "Durable", "decide", "decision_from_json", "open_store"]
