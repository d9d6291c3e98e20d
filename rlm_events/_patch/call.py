"""Per-call state: one instrumented call (`Call`), the context variable that holds it (`CURRENT`), and
the stage helpers the seams share. Its current iteration is a `Frame`.
"""

from __future__ import annotations

import contextvars
import logging
import time
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import dspy
from dspy import Prediction
from dspy.primitives.repl_types import REPLEntry, REPLHistory, REPLVariable

from middleware import is_async_callable

from ..context import (
    PostExecutionContext,
    PostIterationContext,
    PreExecutionContext,
    PreIterationContext,
    Run,
    RunEndContext,
    RunStartContext,
    StageContext,
    construct,
)
from ..errors import StageError
from ..stages import Stage
from .construct import iteration_limit
from .detect import ATTR, Params, Seams
from .frame import Frame
from .prediction import field_of
from .warnings import warn_once

if TYPE_CHECKING:
    from ..plan import Plan
    from .handle import Handle

# -- per-call state -------------------------------------------------------------------------------------------

CURRENT: contextvars.ContextVar[Call | None] = contextvars.ContextVar("rlm_events_call", default=None)
DEFERRED: Any = object()  # what the patched _process_execution_result returns when post_execution must fold first

# Hot paths read these once per iteration: a module global is cheaper than the enum's class attribute.
PRE_ITERATION, PRE_EXECUTION = Stage.PRE_ITERATION, Stage.PRE_EXECUTION
POST_EXECUTION, POST_ITERATION = Stage.POST_EXECUTION, Stage.POST_ITERATION


class Call:
    """One call of an instrumented RLM: its plan (fixed at start), run, counters and current iteration.

    The stage helpers come in pairs around `plan.fire`/`plan.afire`, so that the sync and async seams share
    everything but the firing: `*_ctx` builds a stage's context from the loop's state, `apply_*` (or
    `finish_*`) hands what the middleware left in it back to the loop.
    """

    __slots__ = (
        "busy",
        "defers",
        "forced_extract",
        "frame",
        "input_args",
        "is_async",
        "iterations",
        "module",
        "ours",
        "plan",
        "prelude",
        "run",
        "seams",
        "stopped_by",
        "t0",
    )

    def __init__(
        self, module: dspy.RLM, seams: Seams, plan: Plan, input_args: dict[str, Any], *, is_async: bool
    ) -> None:
        self.module, self.seams, self.plan, self.input_args = module, seams, plan, input_args
        self.busy = plan.busy
        # An async call awaits post_execution after the loop body returned; a sync one fires it in place.
        self.is_async, self.defers = is_async, is_async and seams.defers
        self.run = Run.model_construct(
            id=uuid.uuid4().hex, module=module, started_at=datetime.now(timezone.utc), state={}
        )
        self.iterations = 0
        self.forced_extract = False
        self.stopped_by: str | None = None  # the stop_reason of the post_iteration that set stop
        # A final prediction the loop gets from rlm-events, no SUBMIT: a stop's extract or a post_iteration
        # middleware's; and the history the iteration ended with. PredictRLM's seams end such a run as their own.
        self.ours: tuple[Prediction, REPLHistory] | None = None
        self.frame: Frame | None = None
        self.prelude = ""  # pre_iteration's persistent_python_code: per call, until replaced
        self.t0 = time.perf_counter()

    @staticmethod
    def begin(module: dspy.RLM, seams: Seams, kwargs: dict[str, Any], *, is_async: bool) -> Call | None:
        events: Handle | None = module.__dict__.get(ATTR)
        if events is None:
            return None
        plan = events.plan
        if plan.idle_for(module):  # receivers connected only to other RLMs do not count
            return None
        inputs = {k: v for k, v in kwargs.items() if k not in seams.call_options}
        return Call(module, seams, plan, inputs, is_async=is_async)

    def wants(self, stage: Stage) -> bool:
        """Whether anything would see `stage` in this call: receivers connected only to other RLMs do not count.

        The per-iteration seams test `busy[stage] or plan.wants(stage, module)` in place, so that a stage with
        middleware costs them no call."""
        return self.plan.wants(stage, self.module)

    def wants_now(self, stage: Stage) -> bool:
        """As `wants()`, with the plan's registrations looked up first (the per-iteration seams' check)."""
        return self.busy[stage] or self.plan.wants(stage, self.module)

    def framed(self, params: Params, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Frame | None:
        """The frame of the iteration the loop body is called for with `args`/`kwargs` (bound by `params`), or
        `None` when nothing would see it (no iteration-stage registration, receiver or prelude): then it runs as
        DSPy's own, counted here."""
        if not self.prelude and self.plan.iterations_idle_for(self.module):
            self.iterations += 1
            return None
        return Frame(self, params.bind(args, kwargs))

    def ended(self, frame: Frame) -> None:
        """The loop body of `frame`'s iteration returned (or raised): it is no longer the current one, and drops
        what refers back to it (see `Frame.close`)."""
        self.frame = None
        frame.close()

    def iteration_ran(self, frame: Frame) -> None:
        """The loop body returned: say (once) what this iteration's registrations could not do."""
        if frame.action is None:
            self.unacted(frame)
        if frame.prompt:
            self.unshown(frame)

    def ctx(self, cls: type[StageContext], iteration: int | None = None, **fields: Any) -> Any:
        """A `cls` context of this call; `fields` are the rest of its fields, all of them, in declaration order."""
        return construct(
            cls, {"stage": cls.STAGE, "iteration": iteration, "input_args": self.input_args, "run": self.run, **fields}
        )

    # run_start / run_end

    def start_ctx(self) -> RunStartContext | None:
        return self.ctx(RunStartContext) if self.wants(Stage.RUN_START) else None

    def apply_start(self, ctx: RunStartContext | None, kwargs: dict[str, Any]) -> dict[str, Any]:
        if ctx is None:
            return kwargs
        self.input_args = ctx.input_args
        return {**{k: v for k, v in kwargs.items() if k in self.seams.call_options}, **ctx.input_args}

    @staticmethod
    def outcome(end: RunEndContext) -> Prediction:
        """What the call returns after its run_end: the prediction, or raise the error."""
        if end.error is not None:
            raise end.error
        return end.prediction  # type: ignore[return-value]

    def end_ctx(self, prediction: Prediction | None, error: BaseException | None) -> RunEndContext:
        return self.ctx(
            RunEndContext,
            prediction=prediction,
            error=error,
            iterations=self.iterations,
            forced_extract=self.forced_extract,
            duration_s=time.perf_counter() - self.t0,
            stop_reason=self.stop_reason(error),
        )

    def announce_stop(self) -> None:
        """Log the one line a stop gets: who stopped the run, after which iteration. The extract that follows runs
        without DSPy's "RLM reached max iterations" line (see `extract`)."""
        reason = self.stopped_by
        if reason == "budget":
            from ..builtins.budget import Budget  # here: the built-ins import the patch layer

            spent = getattr(Budget.spent(self.run), "reason", None)
            who = f"a Budget ({spent})" if spent else "a Budget"
        elif reason == "middleware":
            who = "a post_iteration middleware"
        else:
            who = f"a post_iteration middleware (stop_reason {reason!r})"
        limit = iteration_limit(self.module)
        logging.getLogger("rlm_events").warning(
            "rlm-events: %s stopped the run after iteration %d%s; the extract fallback gives the answer",
            who,
            self.iterations,
            f" of {limit}" if limit else "",
        )

    def stop_reason(self, error: BaseException | None) -> str:
        """Why the loop ended (see [`RunEndContext.stop_reason`][rlm_events.context.RunEndContext.stop_reason])."""
        if error is not None:
            return "error"
        return self.stopped_by or ("max_iters" if self.forced_extract else "submit")

    # pre_iteration

    # The four iteration contexts are built on every observed iteration: each as one dict literal, every field in
    # declaration order (what `construct` takes), not through `ctx()`'s keyword merge.

    def pre_iteration_ctx(self, frame: Frame) -> PreIterationContext:
        args = frame.args
        return construct(
            PreIterationContext,
            {
                "stage": PRE_ITERATION,
                "iteration": frame.index,
                "input_args": self.input_args,
                "run": self.run,
                "history": args["history"],
                "variables": list(args["variables"]),
                "extra_vars": {},
                "python_code": None,
                "persistent_python_code": self.prelude,
                "prompt_context": "",
            },
        )

    def apply_pre_iteration(self, ctx: PreIterationContext, frame: Frame) -> None:
        args = frame.args
        frame.prefix = ctx.python_code or ""
        self.prelude = frame.prelude = ctx.persistent_python_code
        frame.prompt = ctx.prompt_context
        variables = list(ctx.variables)
        if ctx.extra_vars:
            shown = {v.name for v in variables}
            variables += [REPLVariable.from_value(k, v) for k, v in ctx.extra_vars.items() if k not in shown]
            args["input_args"] = {**args["input_args"], **ctx.extra_vars}
        args["history"], args["variables"] = ctx.history, variables

    # pre_execution (called from the generate_action seam)

    def acted(self, frame: Frame, action: Any) -> bool:
        """Record `action` as the iteration's LM output (the first one only): whether pre_execution fires on it or
        its code gets this iteration's prelude (then `executing()` says which)."""
        if frame.action is not None or self.frame is not frame:
            return False
        frame.action = action
        if not isinstance(field_of(action, "code"), str):  # DSPy reports what it cannot run; we stand aside
            return False
        return bool(frame.prefix) or self.busy[PRE_EXECUTION] or self.plan.wants(PRE_EXECUTION, self.module)

    def executing(self) -> bool:
        """Whether pre_execution fires in this call now."""
        return self.busy[PRE_EXECUTION] or self.plan.wants(PRE_EXECUTION, self.module)

    @staticmethod
    def shown(frame: Frame, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The action predictor's keyword arguments with this iteration's `prompt_context` after the variables'
        descriptions (`variables_info`), once; unchanged when the loop passes no `variables_info`."""
        info = kwargs.get("variables_info")
        if isinstance(info, list):
            kwargs = {**kwargs, "variables_info": [*info, frame.prompt]}
        elif isinstance(info, str):
            kwargs = {**kwargs, "variables_info": f"{info}\n\n{frame.prompt}" if info else frame.prompt}
        else:
            return kwargs
        frame.prompt = ""
        return kwargs

    def unshown(self, frame: Frame) -> None:
        """The iteration ended with its `prompt_context` not shown: say so once, never drop it silently."""
        warn_once(
            self.module,
            ("prompt_context", type(self.module)),
            f"rlm-events: pre_iteration's prompt_context was not shown in iteration {frame.index + 1} of "
            f"{type(self.module).__qualname__}: its loop did not pass variables_info to the action predictor; "
            "not reported again for this RLM",
        )

    def unacted(self, frame: Frame) -> None:
        """The iteration ended without an action from `self.generate_action`: say once that pre_execution could
        not fire (the loop called the predictor another way), if anything wanted it."""
        if not (self.busy[PRE_EXECUTION] or self.plan.wants(PRE_EXECUTION, self.module)):
            return
        predictor = type(self.module.__dict__.get("generate_action"))
        warn_once(
            self.module,
            ("pre_execution", predictor),
            f"rlm-events: pre_execution did not fire in iteration {frame.index + 1} of "
            f"{type(self.module).__qualname__}: its loop did not get the action from self.generate_action(...) "
            f"(a {predictor.__qualname__}); not reported again for this RLM and predictor class",
        )

    def pre_execution_ctx(self, frame: Frame, action: Any) -> PreExecutionContext:
        return self.pre_execution_of(frame, action, self.seams.stripped(field_of(action, "code")))

    def pre_execution_of(self, frame: Frame, action: Any, code: str) -> PreExecutionContext:
        """pre_execution's context for `action`, whose code is `code` as DSPy runs it (raw if its fence is bad)."""
        frame.code = code
        return construct(
            PreExecutionContext,
            {
                "stage": PRE_EXECUTION,
                "iteration": frame.index,
                "input_args": self.input_args,
                "run": self.run,
                "code": code,
                "reasoning": str(field_of(action, "reasoning", "")),
                "history": frame.args["history"],
                "result": None,
            },
        )

    @staticmethod
    def apply_pre_execution(ctx: PreExecutionContext, frame: Frame, action: Any) -> bool:
        """Hand what pre_execution left to the loop: the code (with this iteration's prelude) into `action`, or the
        result to use instead of running it. Whether `action.code` was changed."""
        code = ctx.code
        if ctx.result is None and frame.prefix:  # this iteration's prelude, before the code as the chain left it
            code = f"{frame.prefix}\n{code}"
        if code != frame.code:
            try:
                action.code = code  # DSPy strips and runs action.code next
            except (AttributeError, TypeError) as exc:
                raise StageError(
                    f"pre_execution: a middleware changed the code, but generate_action returned a "
                    f"{type(action).__name__} whose code cannot be set ({exc}); return a dspy.Prediction"
                ) from None
            changed = True
        else:
            changed = False
        if ctx.result is not None:
            frame.skip = ctx.result
        return changed

    # post_execution (deferred by the _process_execution_result seam)

    def folds(self, frame: Frame, processing: dict[str, Any]) -> bool:
        """Called with `_process_execution_result`'s arguments: whether post_execution must fold code and result
        first. Either way, what the post_iteration context shows is recorded when it is wanted."""
        if self.busy[POST_EXECUTION] or self.plan.wants(POST_EXECUTION, self.module):
            frame.processing = processing
            return True
        if self.busy[POST_ITERATION] or self.plan.wants(POST_ITERATION, self.module):
            frame.code, frame.result = self.code_of(processing), processing["result"]
        return False

    def fold_in_place(self, frame: Frame) -> Any:
        """post_execution fired inside `_process_execution_result`: in sync calls, and in async calls whose loop
        body does not return that method's value as is (then `async def` middleware run on the private loop)."""
        if (
            not self.defers
            and self.seams.defers is False
            and any(map(is_async_callable, self.plan.chains[POST_EXECUTION]))
        ):
            warn_once(
                self.module,
                ("post_execution", "async"),
                f"rlm-events: {type(self.module).__qualname__}'s loop body does not return "
                "_process_execution_result(...) as is, so async post_execution middleware run on a private event "
                "loop, blocking this call's loop while they run",
            )
        return self.finish_execution(self.plan.fire(self.post_execution_ctx(frame), self.module), frame)

    def code_of(self, processing: dict[str, Any]) -> str:
        if self.seams.result_takes_code:
            return processing["code"]  # type: ignore[no-any-return]
        # 3.1 passes no code: it is pred.code, stripped as 3.1 strips it to run it.
        return self.seams.stripped(str(field_of(processing["pred"], "code")))

    def post_execution_ctx(self, frame: Frame) -> PostExecutionContext:
        processing: Any = frame.processing
        return self.post_execution_of(frame, self.code_of(processing), processing["result"], processing["history"])

    def post_execution_of(self, frame: Frame, code: str, result: Any, history: REPLHistory) -> PostExecutionContext:
        """post_execution's context for `code` (as it ran), its `result` and the `history` it is recorded into."""
        frame.code = code
        return construct(
            PostExecutionContext,
            {
                "stage": POST_EXECUTION,
                "iteration": frame.index,
                "input_args": self.input_args,
                "run": self.run,
                "code": code,
                "result": result,
                "history": history,
            },
        )

    def finish_execution(self, ctx: PostExecutionContext, frame: Frame) -> Any:
        processing: Any = frame.processing
        processing["result"] = ctx.result
        if self.seams.result_takes_code:
            processing["code"] = ctx.code
        elif ctx.code != frame.code:
            # 3.1 records pred.code as the LM wrote it (3.1.2 with its markdown fence): changed only when changed.
            processing["pred"].code = ctx.code
        frame.code, frame.result, frame.processing = ctx.code, ctx.result, None
        return self.seams.cls._process_execution_result(self.module, **processing)

    # post_iteration

    def post_iteration_ctx(self, frame: Frame, outcome: Prediction | REPLHistory) -> PostIterationContext:
        if isinstance(outcome, Prediction):  # SUBMIT: the history is in the trajectory, dumped
            before, trajectory = frame.args["history"], outcome.get("trajectory", [])
            if len(trajectory) == len(before.entries) + 1:  # the entries this iteration saw, then its own
                entries = [*before.entries, REPLEntry.model_validate(trajectory[-1])]
            else:
                entries = [REPLEntry.model_validate(e) for e in trajectory]
            history = before.model_copy(update={"entries": entries})
            prediction: Prediction | None = outcome
        else:
            history, prediction = outcome, None
        return construct(
            PostIterationContext,
            {
                "stage": POST_ITERATION,
                "iteration": frame.index,
                "input_args": self.input_args,
                "run": self.run,
                "history": history,
                "prediction": prediction,
                "stop": False,
                "stop_reason": None,
                "action": frame.action,
                "code": frame.code,
                "result": frame.result,
            },
        )

    def after_iteration(self, ctx: PostIterationContext, outcome: Any) -> tuple[Any, bool]:
        """What the iteration returns to the loop, and whether the extract fallback must produce it instead."""
        if ctx.prediction is not None:
            if not isinstance(outcome, Prediction):  # no SUBMIT: a middleware finishes the run with its own
                self.ours = (ctx.prediction, ctx.history)
            return ctx.prediction, False
        if ctx.stop:
            self.stopped_by = ctx.stop_reason or "middleware"
            self.announce_stop()
        return ctx.history, ctx.stop

    def stopped_with(self, prediction: Prediction, history: REPLHistory) -> Prediction:
        """`prediction`, the stop's extract from `history`, recorded as `ours`."""
        self.ours = (prediction, history)
        return prediction


def current_call(module: Any) -> Call | None:
    call = CURRENT.get()
    return call if call is not None and call.module is module else None
