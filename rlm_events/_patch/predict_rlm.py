"""The seams of `predict_rlm.PredictRLM` (predict-rlm 0.13, on DSPy 3.4), beside DSPy's own.

PredictRLM is a `dspy.RLM` subclass with a loop of its own: `forward` runs the async kernel
(`_aforward_kernel`) to completion, so sync and async calls both go through `_aexecute_iteration`, which gets the
action from a per-run predictor, strips it in `_prepare_iteration_execution`, runs it with
`_aexecute_iteration_code` (an execution session's `aexecute`) and folds it with
`_complete_iteration_execution`; the extract fallback runs on a copy of the module
(`_aextract_fallback_for_run`). Its kernel checks that `_execute_iteration`, `_extract_fallback`,
`_forward_traced` and `_aforward_traced` are its own and falls back to a legacy loop otherwise, so those are
never overridden here.

| seam | stages |
| --- | --- |
| `forward` / `aforward` | `run_start`, `run_end` (as for DSPy's class) |
| `_aexecute_iteration` | `pre_iteration` before, `post_iteration` after (as for DSPy's class) |
| `_prepare_iteration_execution` | records the iteration's action (its `plan` is the context's reasoning) |
| `_aexecute_iteration_code` | `pre_execution` before the code runs (may change or skip it), `post_execution` after (may change the result), both awaited; runs pre_iteration's `python_code` and persistent prelude before the code |
| `_complete_iteration_execution` | hands the changed code to the history |
| `_begin_action_generation` | adds pre_iteration's `prompt_context` to the `variables_info` it returns |
| `_aextract_fallback_for_run` | `extract` (and its sync twin) |
| `_prepare_execution_tools` | `tool_call` around `predict()` and every user tool |

A final prediction that rlm-events hands the loop is no SUBMIT, and `_maybe_request_submit_confirmation`,
`_build_iteration_outcome` and `_build_run_trace` treat it so: a stop's extract ends the run as PredictRLM's own
extract fallback does (the step of an iteration that ended with its history, trace status `max_iterations`), a
post_iteration middleware's prediction ends it at once (status `completed`); `submit_confirmation` is asked
about neither. A `FinalOutput` from pre_execution or post_execution is a SUBMIT, as PredictRLM makes of it.

Detected by those methods (`kernel_seams()`), never by importing predict-rlm or reading its version.
"""  # noqa: E501

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from ..context import PostExecutionContext, PreExecutionContext
from ..stages import Stage
from .call import current_call
from .detect import Params, method_calls, unsupported
from .prelude import PreludeREPL

KERNEL = (
    "_aforward_kernel",
    "_prepare_iteration_execution",
    "_aexecute_iteration_code",
    "_complete_iteration_execution",
)
_LOOP_ARGS = ("repl", "variables", "history", "iteration", "input_args", "output_field_names")
_EXTRACT_ARGS = ("variables", "history", "output_field_names")


class KernelSeams:
    """What a PredictRLM-shaped class's loop looks like: the attributes the shared seams read from
    `Seams`, and the overrides of its own seams (`overrides()`)."""

    has_execute_code = True  # no REPL stand-in: execution is its own seam
    result_takes_code = True
    defers = False  # post_execution is awaited in the code seam, never deferred

    def __init__(self, cls: Any) -> None:
        self.cls = cls
        for name in (*KERNEL, "forward", "aforward", "_aexecute_iteration", "_prepare_execution_tools"):
            if not callable(getattr(cls, name, None)):
                raise unsupported(cls, name, "is missing")
        self.aiteration = Params(cls, "_aexecute_iteration", _LOOP_ARGS)
        self.iteration = self.aiteration
        self.extract = Params(cls, "_extract_fallback_for_run", _EXTRACT_ARGS)
        self.aextract = Params(cls, "_aextract_fallback_for_run", _EXTRACT_ARGS)
        self.code = Params(cls, "_aexecute_iteration_code", ("repl", "code", "input_args"))
        self.complete = Params(cls, "_complete_iteration_execution", ("pred", "code", "result", "history"))
        self.prepare = Params(cls, "_prepare_iteration_execution", ("pred",))
        # The steps that read an iteration's final prediction, where it has them (see overrides)
        self.confirm = _optional(cls, "_maybe_request_submit_confirmation", ("prediction",))
        self.outcome = _optional(cls, "_build_iteration_outcome", ("result", "history"))
        self.trace = _optional(cls, "_build_run_trace", ("status",))
        for call in (f"self.{name}(" for name in KERNEL[1:]):
            if method_calls(cls, "_aexecute_iteration", call) is False:
                raise unsupported(cls, "_aexecute_iteration", f"does not call {call}...)")
        self.call_options: frozenset[str] = frozenset()  # forward(**inputs): every keyword is an input

    @staticmethod
    def stripped(raw: str) -> str:
        return raw  # _prepare_iteration_execution strips the fence; contexts see the code it returned

    def overrides(self, cls: Any) -> dict[str, Callable[..., Any]]:
        """The kernel's own seams, for the instrumented subclass of `cls`."""
        code_params, complete_params, prepare_params = self.code, self.complete, self.prepare

        def _prepare_iteration_execution(self: Any, *args: Any, **kwargs: Any) -> Any:
            call = current_call(self)
            frame = call.frame if call is not None else None
            if frame is not None and frame.action is None:
                frame.action = prepare_params.bind(args, kwargs)["pred"]
            return cls._prepare_iteration_execution(self, *args, **kwargs)

        async def _aexecute_iteration_code(self: Any, *args: Any, **kwargs: Any) -> Any:
            call = current_call(self)
            frame = call.frame if call is not None else None
            if frame is None:
                return await cls._aexecute_iteration_code(self, *args, **kwargs)
            bound = code_params.bind(args, kwargs)
            frame.code, result, skipped = bound["code"], None, False
            if call.wants(Stage.PRE_EXECUTION):  # type: ignore[union-attr]
                action = frame.action
                reasoning = getattr(action, "reasoning", None) or getattr(action, "plan", "") or ""
                history = frame.args["history"]
                before = call.ctx(  # type: ignore[union-attr]
                    PreExecutionContext,
                    frame.index,
                    code=frame.code,
                    reasoning=str(reasoning),
                    history=history,
                    result=None,
                )
                before = await call.plan.afire(before, self)  # type: ignore[union-attr]
                bound["code"] = frame.code = before.code
                result, skipped = before.result, before.result is not None
            if not skipped:
                if frame.prefix:  # pre_iteration's python_code: part of this iteration's code, in the history too
                    bound["code"] = frame.code = f"{frame.prefix}\n{frame.code}"
                if frame.prelude:  # persistent_python_code: runs first, on its own (_patch.prelude), not recorded
                    bound = {**bound, "repl": PreludeREPL(bound["repl"], frame.prelude)}
                result = await code_params.call(cls._aexecute_iteration_code, self, bound)
            if call.wants(Stage.POST_EXECUTION):  # type: ignore[union-attr]
                after = call.ctx(  # type: ignore[union-attr]
                    PostExecutionContext, frame.index, code=frame.code, result=result, history=frame.args["history"]
                )
                after = await call.plan.afire(after, self)  # type: ignore[union-attr]
                frame.code, result = after.code, after.result
            frame.result = result
            return result

        def _complete_iteration_execution(self: Any, *args: Any, **kwargs: Any) -> Any:
            call = current_call(self)
            frame = call.frame if call is not None else None
            if frame is None or not frame.code:
                return cls._complete_iteration_execution(self, *args, **kwargs)
            bound = complete_params.bind(args, kwargs)
            bound["code"] = frame.code  # what ran, as pre_execution left it
            return complete_params.call(cls._complete_iteration_execution, self, bound)

        def _begin_action_generation(self: Any, *args: Any, **kwargs: Any) -> Any:
            begun = cls._begin_action_generation(self, *args, **kwargs)
            call = current_call(self)
            frame = call.frame if call is not None else None
            if frame is not None and frame.prompt and isinstance(begun, tuple) and begun:
                # (variables_info, start time): pre_iteration's prompt_context after the variables' descriptions
                shown = call.shown(frame, {"variables_info": begun[0]})  # type: ignore[union-attr]
                begun = (shown["variables_info"], *begun[1:])
            return begun

        # A final prediction from rlm-events (a stop's extract, a post_iteration middleware's) is no SUBMIT: the loop
        # ends on it as on its own extract (a stop) or at once (a middleware's), never asking submit_confirmation.
        confirm_params = self.confirm
        outcome_params = self.outcome
        trace_params = self.trace

        def _maybe_request_submit_confirmation(self: Any, *args: Any, **kwargs: Any) -> Any:
            call = current_call(self)
            ours = call.ours if call is not None else None
            if ours is not None and confirm_params.bind(args, kwargs)["prediction"] is ours[0]:  # type: ignore[union-attr]
                return None
            return cls._maybe_request_submit_confirmation(self, *args, **kwargs)

        def _build_iteration_outcome(self: Any, *args: Any, **kwargs: Any) -> Any:
            call = current_call(self)
            if call is None or call.ours is None:
                return cls._build_iteration_outcome(self, *args, **kwargs)
            bound = outcome_params.bind(args, kwargs)  # type: ignore[union-attr]
            if bound["result"] is not call.ours[0]:
                return cls._build_iteration_outcome(self, *args, **kwargs)
            # The step the loop records for an iteration that ended with this history; final, to end the loop.
            bound["result"] = call.ours[1]
            step, _ = outcome_params.call(cls._build_iteration_outcome, self, bound)  # type: ignore[union-attr]
            return step, True

        def _build_run_trace(self: Any, *args: Any, **kwargs: Any) -> Any:
            call = current_call(self)
            if call is None or call.stopped_by is None or call.ours is None:
                return cls._build_run_trace(self, *args, **kwargs)
            bound = trace_params.bind(args, kwargs)  # type: ignore[union-attr]
            if bound["status"] == "completed":  # the loop ended on the stop's extract: its extract's status
                bound["status"] = "max_iterations"
            return trace_params.call(cls._build_run_trace, self, bound)  # type: ignore[union-attr]

        overrides = {
            "_prepare_iteration_execution": _prepare_iteration_execution,
            "_aexecute_iteration_code": _aexecute_iteration_code,
            "_complete_iteration_execution": _complete_iteration_execution,
        }
        if callable(getattr(cls, "_begin_action_generation", None)):  # else prompt_context is reported unshown
            overrides["_begin_action_generation"] = _begin_action_generation
        for name, override, params in (
            ("_maybe_request_submit_confirmation", _maybe_request_submit_confirmation, confirm_params),
            ("_build_iteration_outcome", _build_iteration_outcome, outcome_params),
            ("_build_run_trace", _build_run_trace, trace_params),
        ):
            if params is not None:  # else this PredictRLM has no such step to keep our prediction from
                overrides[name] = override
        for name, fn in overrides.items():
            functools.update_wrapper(fn, getattr(cls, name))
        return overrides


def _optional(cls: Any, method: str, required: tuple[str, ...]) -> Params | None:
    return Params(cls, method, required) if callable(getattr(cls, method, None)) else None


def own_lms(module: Any) -> list[Any]:
    """The LM a PredictRLM was constructed with (`lm=`, kept as `_lm`); empty for other RLMs. PredictRLM copies a
    `dspy.LM` per run, and that copy's history is out of reach: see the README's PredictRLM section."""
    if not all(callable(getattr(type(module), name, None)) for name in KERNEL):
        return []
    return [module.__dict__.get("_lm")]


def kernel_seams(cls: Any) -> KernelSeams | None:
    """The `KernelSeams` of `cls` if its loop is PredictRLM's kernel, else `None`."""
    if not all(callable(getattr(cls, name, None)) for name in KERNEL):
        return None
    return KernelSeams(cls)
