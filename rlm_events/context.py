"""The mutable context object of each stage, as pydantic v2 models.

Every context validates assignments (`ctx.code = 3` raises `pydantic.ValidationError` naming the field),
forbids unknown fields, and carries `stage`, `iteration` (0-based; `None` on run-level stages),
`input_args` and `run`. What a middleware leaves in a context when its chain returns is what the loop uses.

Contexts are built by `construct()` and `FastConstruct.model_construct()` (`rlm_events._fast.pydantic`, the
fast path over pydantic's internals, with its fallback to the public `model_construct`).
"""

from __future__ import annotations

from datetime import datetime
from functools import cache
from typing import Any, ClassVar

from dspy import Prediction
from dspy.primitives.repl_types import REPLHistory, REPLVariable
from pydantic import ConfigDict, Field

from ._fast.pydantic import FastConstruct, construct
from .stages import Stage

_CONFIG = ConfigDict(arbitrary_types_allowed=True, validate_assignment=True, extra="forbid")


class Run(FastConstruct):
    """One call of an RLM: shared by every context of that call and by no other call.

    `state` is a dict private to this call: middleware shared by concurrent calls keep per-call counters there.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    id: str
    module: Any = Field(repr=False, description="The dspy.RLM instance being called.")
    started_at: datetime
    state: dict[str, Any] = Field(default_factory=dict, repr=False)


class StageContext(FastConstruct):
    """Fields every stage's context has."""

    model_config = _CONFIG
    STAGE: ClassVar[Stage]

    stage: Stage
    iteration: int | None = None
    input_args: dict[str, Any] = Field(default_factory=dict)
    run: Run = Field(repr=False)


class RunStartContext(StageContext):
    """A call starts. `input_args` is mutable: what is left there is what the RLM is called with."""

    STAGE: ClassVar[Stage] = Stage.RUN_START


class PreIterationContext(StageContext):
    """Before the LM writes this iteration's code.

    * `extra_vars` are bound in the REPL namespace for this iteration's code and listed among the variables the
      LM is shown.
    * `python_code` is this iteration's prelude: prepended to this iteration's code (after the pre_execution
      chain changed it), so it runs with it and the history records it as part of it. Later iterations do not get
      it again (what it defines stays in the REPL namespace, like anything the code defines).
    * `persistent_python_code` is the call's persistent prelude: on entry the one in force ("" for none);
      what is left here runs before every execution of this call from this iteration on, until a later iteration
      changes it ("" clears it). It is not recorded in the history.
    * `prompt_context` is text the LM is shown in this iteration's action prompt only, after the variables'
      descriptions (the `variables_info` input); it is never executed, and neither the history nor the next
      iteration's prompt has it.
    * `history` is what the LM will see.
    """

    STAGE: ClassVar[Stage] = Stage.PRE_ITERATION

    history: REPLHistory
    variables: list[REPLVariable]
    extra_vars: dict[str, Any] = Field(default_factory=dict)
    python_code: str | None = None
    persistent_python_code: str = ""
    prompt_context: str = ""


class PreExecutionContext(StageContext):
    """The LM wrote `code`; it has not run.

    `code` is mutable: the changed code is what runs *and* what the history records. To skip execution and
    supply the result instead, call [`skip()`][rlm_events.context.PreExecutionContext.skip] (or set `result` to anything
    but `None`).
    """

    STAGE: ClassVar[Stage] = Stage.PRE_EXECUTION

    code: str
    reasoning: str = ""
    history: REPLHistory
    result: Any = None

    def skip(self, result: Any) -> None:
        """Do not run the code; use `result` as if the interpreter had returned it (text, `[Error] …`, …)."""
        if result is None:
            raise ValueError("pre_execution: skip() needs a result; use '' for empty output")
        if not isinstance(result, str) and type(result).__name__ != "FinalOutput":
            raise TypeError(
                f"pre_execution: skip() expects the text the interpreter would have printed (a str, e.g. "
                f"'[Error] not allowed'), or DSPy's FinalOutput; got {type(result).__name__}: {result!r}"
            )
        self.result = result

    @property
    def skipped(self) -> bool:
        """Whether execution will be skipped."""
        return self.result is not None


class PostExecutionContext(StageContext):
    """The code ran (or was skipped). `result` is the raw interpreter result: output text, an `[Error] …`
    string, or DSPy's `FinalOutput` after `SUBMIT`. Both fields are mutable and are what the history records."""

    STAGE: ClassVar[Stage] = Stage.POST_EXECUTION

    code: str
    result: Any = None
    history: REPLHistory


class PostIterationContext(StageContext):
    """The result was folded into the history.

    `history` (mutable) is what the next iteration sees. `prediction` is the final `Prediction` when
    `SUBMIT` succeeded, else `None`; set it to `None` to reject a submission and go on, or to a
    `Prediction` to finish now. Set `stop = True` to end the loop: DSPy's extract fallback then produces the
    answer from the history so far; `stop_reason` says why in the run's `RunEndContext.stop_reason` (a
    [`Budget`][rlm_events.builtins.Budget] sets `"budget"`; unset, it is `"middleware"`). `action` is the LM's
    output for this iteration (`reasoning`, `code`).
    """

    STAGE: ClassVar[Stage] = Stage.POST_ITERATION

    history: REPLHistory
    prediction: Prediction | None = None
    stop: bool = False
    stop_reason: str | None = None
    action: Prediction | None = Field(default=None, repr=False)
    code: str = ""
    result: Any = Field(default=None, repr=False)


class ExtractContext(StageContext):
    """DSPy's extract fallback runs (`max_iters` reached, or `stop` was set).

    `history` is what the extractor sees. The innermost `next` runs the extractor and sets `prediction`; a
    middleware that sets `prediction` itself and does not call `next` replaces it.
    """

    STAGE: ClassVar[Stage] = Stage.EXTRACT

    history: REPLHistory
    variables: list[REPLVariable]
    prediction: Prediction | None = None


class ToolCallContext(StageContext):
    """Executed code calls `llm_query`, `llm_query_batched` or a user tool.

    The innermost `next` performs the real call with `args`/`kwargs` and sets `result`; a middleware can
    deny (return without calling `next`, after setting `result` or raising), cache or meter it.
    """

    STAGE: ClassVar[Stage] = Stage.TOOL_CALL

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = Field(default_factory=dict)
    result: Any = None


class RunEndContext(StageContext):
    """A call ended. Fires for every call, failed ones included, after the interpreter was shut down.

    `prediction` and `error` are mutable: the call returns `prediction` when `error` is `None`,
    else raises `error`. `stop_reason` says why the loop ended: `"submit"` (the code called `SUBMIT`),
    `"max_iters"` (the iteration limit; DSPy's extract fallback answered), `"budget"` (a Budget stopped it),
    `"middleware"` (another middleware set `PostIterationContext.stop`, or its own `stop_reason`) or
    `"error"` (the call failed). `iterations` counts the iterations that started: whose `pre_iteration`
    completed (0 for a call that failed before its first).
    """

    STAGE: ClassVar[Stage] = Stage.RUN_END

    prediction: Prediction | None = None
    error: BaseException | None = None
    iterations: int = 0
    forced_extract: bool = False
    duration_s: float = 0.0
    stop_reason: str = "submit"


CONTEXT_TYPES: dict[Stage, type[StageContext]] = {
    cls.STAGE: cls
    for cls in (
        RunStartContext,
        PreIterationContext,
        PreExecutionContext,
        PostExecutionContext,
        PostIterationContext,
        ExtractContext,
        ToolCallContext,
        RunEndContext,
    )
}


@cache
def _frozen(cls: type[StageContext]) -> type[StageContext]:
    config = ConfigDict(**{**cls.model_config, "frozen": True})  # type: ignore[typeddict-item]
    return type(cls.__name__, (cls,), {"model_config": config, "__module__": cls.__module__})


def snapshot(ctx: StageContext) -> StageContext:
    """A read-only copy of `ctx` as it is now: assigning a field raises, and dict/list fields are copies, so an
    observer can neither change the run nor see later changes. It is still an instance of `type(ctx)`."""
    # The fields are already those of type(ctx): copy them as they are, without building the model again.
    values = {k: (v.copy() if isinstance(v, (dict, list)) else v) for k, v in ctx.__dict__.items()}
    return construct(_frozen(type(ctx)), values, set(ctx.model_fields_set))
