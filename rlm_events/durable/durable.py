"""[`Durable`][rlm_events.durable.Durable]: commits every iteration of an instrumented RLM's runs to a store, and
resumes, forks and decides them from any process."""

from __future__ import annotations

import functools
import logging
import os
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from dspy.primitives.repl_types import REPLEntry

from .. import context
from ..builtin import Builtin
from ..lm_usage import meter_run
from ..replay._json import jsonable
from ..runtime import action_fields, around_facade_calls, llm_call_counter
from ..stages import Stage
from .approval import apply_to_code, apply_to_tool
from .control import RESUMING, RunControl, open_store
from .decisions import Suspended, SuspendRun, decision_from_json
from .errors import DivergenceError, DurableError, LeaseLostError, StoreUnavailableError
from .record import meta_of, tool_step
from .state import STATE_KEY, RunState, restore_usage, state_of, usage_snapshot
from .store import Store

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

logger = logging.getLogger("rlm_events.durable")
FACADE_CALL = "dspy facade call"
"""The name a predictor call made through DSPy's sandbox `dspy` facade is recorded under (never a tool's name)."""


_HANDLERS = {  # the method of each loop stage, called with the run's durable state
    Stage.PRE_ITERATION: "_pre_iteration",
    Stage.PRE_EXECUTION: "_pre_execution",
    Stage.POST_ITERATION: "_post_iteration",
    Stage.RUN_END: "_run_end",
}


class Durable(RunControl, Builtin):
    """Makes the runs of an instrumented RLM durable: each iteration is committed to `store`.

    `Durable(store, lease_seconds=60, best_effort=False, allow_divergence=False)`; `store` is a
    [`Store`][rlm_events.durable.store.Store], a SQLite file path or a `postgresql://` URL. Install it first
    (`Durable(...).install(events)`, before any other middleware): it must be the outermost middleware of its stages,
    so that a replayed iteration reaches no other middleware.

    Guarantees:

    * Per run (its id is the first call's `Run.id`): its inputs and the RLM's signature, tools and DSPy version at
      start; per iteration its code before it runs (so a crash repeats at most the LM call whose answer was not
      committed yet), each tool result (`llm_query` included, and each call of a sub-agent the code built with DSPy
      3.4.1's sandbox `dspy` facade, which only Durable sees) as it returns, and after the iteration its history
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

    @staticmethod
    def link(run: context.Run) -> dict[str, Any] | None:
        """What a trace's `run_start` records of `run` if it is durable: its durable id, and the run it resumes or
        forks (`relation`, `parent`, `replayed`); `None` for a run no `Durable` made durable."""
        state = state_of(run)
        return None if state is None else state.link()

    @staticmethod
    def recorded_results(run: context.Run, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        """How many calls of tool `name` with these arguments the record answers in `run`'s current iteration (a
        resumed run's committed results, not served yet): a call made ahead of one would be paid for nothing.
        0 for a run no `Durable` made durable."""
        state = state_of(run)
        record = state.recorded() if state is not None else None
        if record is None:
            return 0
        data = tool_step(name, args, kwargs)
        return record.unserved(name, data["args"], data["kwargs"])

    # -- the middleware ---------------------------------------------------------------------------------------

    def __call__(self, ctx: Any, next: Any) -> Any:
        stage = getattr(ctx, "stage", None)
        if stage not in self.STAGES:
            raise self._wrong_stage(ctx)
        if stage is Stage.TOOL_CALL:
            return self._tool_call(ctx, next)
        if stage is Stage.RUN_START:
            return self._run_start(ctx, next)
        state = state_of(ctx.run)  # the loop's stages of a run this Durable made durable (not best-effort)
        return next(ctx) if state is None else getattr(self, _HANDLERS[stage])(ctx, next, state)

    def _run_start(self, ctx: context.RunStartContext, next: Any) -> Any:
        claim = RESUMING.get()
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
        if state.facade_calls is None:
            state.facade_calls = functools.partial(self._facade_call, ctx.run, state)
        around_facade_calls(ctx.run, state.facade_calls)  # the code's sub-agents: recorded by Durable alone
        if state.llm_calls is None:
            state.llm_calls = llm_call_counter(ctx.run)
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
            action = {"reasoning": ctx.reasoning, "code": ctx.code}
            fields = {name: value for name, (value, exact) in _json(action_fields(ctx.run)).items() if exact}
            state.commit(ctx.run, "action", {**action, "fields": fields} if fields else action)
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
        found = state.served(data)
        if found is not None:
            ctx.result = state.result_of(found)
            return ctx
        data["index"] = index
        decided = state.take_decision("tool", state.iteration, index)
        done = [ctx]

        def make() -> Any:
            if decided is None or not apply_to_tool(ctx, decision_from_json(decided)):  # rejected: the denial
                done[0] = next(ctx)
            return done[0].result

        try:
            state.made(ctx.run, data, make)
        finally:
            state.tool_indexes.pop(id(ctx), None)
        return done[0]

    @staticmethod
    def _facade_call(
        run: context.Run, state: RunState, call: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A predictor call the code made through DSPy's sandbox `dspy` facade: answered from the record, else made
        and committed. Only calls are: building the predictor is free and runs again on replay."""
        data = tool_step(FACADE_CALL, args, kwargs)
        found = state.served(data)
        if found is not None:
            return state.result_of(found)
        return state.made(run, data, lambda: call(*args, **kwargs))

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
        state.replayed_llm_calls(data)
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

    def __repr__(self) -> str:
        return f"Durable({self.store!r}, lease_seconds={self.lease_seconds})"


def _json(fields: dict[str, Any]) -> dict[str, tuple[Any, bool]]:
    """Each field's JSON form and whether it is exact (an action's other fields are recorded when they are)."""
    return {name: jsonable(value) for name, value in fields.items()}


__all__ = ["Durable"]
