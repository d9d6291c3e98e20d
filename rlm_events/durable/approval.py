"""[`Approval`][rlm_events.durable.Approval]: a person (or a handler) approves, edits or rejects the code before it
runs and calls of the tools named, or defers the decision and the run suspends durably."""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from middleware import is_async_callable, run_sync

from .. import context
from ..builtin import Builtin, check_tool_names, denial_for
from ..errors import StageError
from ..replay._json import jsonable
from ..stages import Stage
from .decisions import Answer, Approve, Decision, Defer, Edit, Reject, SuspendRun, decision_to_json
from .state import state_of

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

logger = logging.getLogger("rlm_events.durable")
TIMED_OUT = Reject("no decision in time")
"""The default decision of a step nobody decided within [`Approval`][rlm_events.durable.Approval]'s `timeout`."""
REJECTED = "[Rejected]"
"""How a rejection starts, in what the code (and so the LM) reads."""


@dataclass(frozen=True)
class Request:
    """What a handler is asked to decide. `kind` is `"code"` (the iteration's code, before it runs) or `"tool"`
    (a call of tool `name` with `args`/`kwargs`); `iteration` is 0-based; `history` holds the run's entries so
    far (`reasoning`, `code`, `output`); `index` is the tool call's index in its iteration."""

    kind: str
    run_id: str
    iteration: int
    code: str = ""
    reasoning: str = ""
    name: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    index: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


Handler = Callable[[Request], Any]


def apply_to_code(ctx: context.PreExecutionContext, decision: Decision) -> None:
    """Carry out a decision on the code in `ctx`: edited code, or a rejection the LM reads."""
    if isinstance(decision, Edit) and decision.code is not None:
        ctx.code = decision.code
    elif isinstance(decision, Reject):
        ctx.skip(f"{REJECTED} {decision.reason}")


def apply_to_tool(ctx: context.ToolCallContext, decision: Decision) -> bool:
    """Carry out a decision on the tool call in `ctx`; whether it is settled without calling the tool (rejected)."""
    if isinstance(decision, Reject):
        ctx.result = denial_for(ctx.name, ctx.args, ctx.kwargs, f"{REJECTED} {decision.reason}")
        return True
    if isinstance(decision, Edit):
        if decision.args is not None:
            ctx.args = tuple(decision.args)
        if decision.kwargs is not None:
            ctx.kwargs = dict(decision.kwargs)
    return False


class Approval(Builtin):
    """Asks `handler(request)` before the code of each iteration runs (`code=True`) and before each call of the
    tools named in `tools`. The handler, sync or `async def`, returns
    [`Approve()`][rlm_events.durable.Approve], [`Edit(...)`][rlm_events.durable.Edit],
    [`Reject(reason)`][rlm_events.durable.Reject] or [`Defer()`][rlm_events.durable.Defer].

    * Approve: the step runs. Edit: the edited code (or arguments) runs, and the history records it. Reject: the
      step does not run; the code gets `"[Rejected] reason"`, which the LM reads.
    * Defer (needs a [`Durable`][rlm_events.durable.Durable], installed before): the run suspends durably with
      the pending step in the store and the call returns a [`Suspended`][rlm_events.durable.Suspended];
      `decide(run_id, ...)` from any process settles it and the run resumes at that step.
    * `timeout` (seconds): a handler that has not answered by then, or a deferred step nobody decided by then
      (checked when the run is resumed), gets `default` (rejected unless told otherwise).
    * A replayed iteration of a resumed run is never asked again: its decisions are in the record.
    """

    STAGES: ClassVar[tuple[Stage, ...]] = (Stage.PRE_EXECUTION, Stage.TOOL_CALL)

    def __init__(
        self,
        handler: Handler,
        *,
        code: bool = True,
        tools: Sequence[str] = (),
        timeout: float | None = None,
        default: Decision = TIMED_OUT,
    ) -> None:
        if not callable(handler):
            raise TypeError(f"Approval(handler) must be callable (sync or async), got {handler!r}")
        if isinstance(tools, str):
            raise TypeError(f"Approval(tools=...) is a list of tool names, got the string {tools!r}")
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
            raise ValueError(f"Approval(timeout=...) must be a number of seconds > 0, got {timeout!r}")
        decision_to_json(default)  # a TypeError now for anything but a decision
        self.handler, self.code, self.tools = handler, bool(code), frozenset(tools)
        self.timeout, self.default = timeout, default

    def check(self, events: Instrumentation) -> None:
        check_tool_names("Approval(tools=...)", self.tools, events)

    def __call__(self, ctx: Any, next: Any) -> Any:
        stage = getattr(ctx, "stage", None)
        if stage is Stage.TOOL_CALL:
            return self._tool(ctx, next)
        if stage is not Stage.PRE_EXECUTION:
            raise self._wrong_stage(ctx)
        return self._code(ctx, next)

    # -- asking -----------------------------------------------------------------------------------------------

    def _ask(self, request: Request) -> Answer:
        try:
            if is_async_callable(self.handler):
                answer = run_sync(asyncio.wait_for(self.handler(request), self.timeout))
            elif self.timeout is None:
                answer = self.handler(request)
                if inspect.isawaitable(answer):
                    answer = run_sync(answer)
            else:
                pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rlm-approval")
                try:
                    answer = pool.submit(self.handler, request).result(timeout=self.timeout)
                finally:
                    pool.shutdown(wait=False)  # a handler past its deadline finishes on its own; its answer is dropped
        except (asyncio.TimeoutError, concurrent.futures.TimeoutError):
            logger.warning(
                "rlm-events Approval: no answer within %s s on %s; the default applies", self.timeout, request.kind
            )
            return self.default
        if not isinstance(answer, (Approve, Edit, Reject, Defer)):
            raise StageError(
                f"{(request.kind == 'code' and 'pre_execution') or 'tool_call'}: the Approval handler must return "
                f"Approve(), Edit(...), Reject(reason) or Defer(), got {answer!r}"
            )
        return answer

    def _decision(self, ctx: Any, request: Request) -> Decision:
        """The handler's decision on the step (none asked when the store settled it); a deferral suspends."""
        state = state_of(ctx.run)
        if state is not None and state.settled(request.kind, request.iteration, request.index):
            return Approve()  # decided by a person; the Durable applied it
        answer = self._ask(request)
        if not isinstance(answer, Defer):
            return answer
        if state is None:
            raise StageError(
                f"{ctx.stage.value}: the Approval handler deferred the decision, but the run is not durable: install "
                "a Durable(store) on this RLM (before the Approval) to suspend runs"
            )
        pending = asdict(request)
        pending["note"] = answer.note
        pending["deadline"] = time.time() + self.timeout if self.timeout is not None else None
        pending["default"] = decision_to_json(self.default)
        raise SuspendRun(jsonable(pending)[0])

    # -- the stages -------------------------------------------------------------------------------------------

    @staticmethod
    def _request(ctx: Any, kind: str, **fields: Any) -> Request:
        state = state_of(ctx.run)
        run_id = ctx.run.id if state is None else state.run_id
        return Request(kind, run_id, ctx.iteration or 0, **fields)

    def _code(self, ctx: context.PreExecutionContext, next: Any) -> Any:
        if not self.code or ctx.skipped:
            return next(ctx)
        history = jsonable([entry.model_dump() for entry in ctx.history])[0]
        request = self._request(ctx, "code", code=ctx.code, reasoning=ctx.reasoning, history=history)
        apply_to_code(ctx, self._decision(ctx, request))
        return next(ctx)

    def _tool(self, ctx: context.ToolCallContext, next: Any) -> Any:
        if ctx.name not in self.tools:
            return next(ctx)
        state = state_of(ctx.run)
        args, kwargs = jsonable(list(ctx.args))[0], jsonable(dict(ctx.kwargs))[0]
        index = None if state is None else state.tool_index_of(ctx)
        request = self._request(ctx, "tool", name=ctx.name, args=args, kwargs=kwargs, index=index)
        if apply_to_tool(ctx, self._decision(ctx, request)):
            return ctx
        return next(ctx)

    def __repr__(self) -> str:
        return f"Approval(code={self.code}, tools={sorted(self.tools)}, timeout={self.timeout})"


__all__ = ["REJECTED", "Approval", "Handler", "Request", "apply_to_code", "apply_to_tool"]
