"""DSPy's loop body (`RLM._execute_iteration`) run by rlm-events itself, with the four iteration stages fired in
place: the fast path over the seams that otherwise fire them around DSPy's own body.

Around DSPy's own body, an observed iteration costs a stand-in for `generate_action` (to see the action), a seam
over `_execute_code` (to skip it or run the prelude first), a seam over `_process_execution_result` (to fold
post_execution first) with its arguments bound by name, and a second strip of the code's fences. Here the same
steps run in one function, a copy of DSPy's body with the stages between its lines, pre_iteration before it and
post_iteration after it (as the `_execute_iteration` seam fires them around DSPy's own):

* it calls the predictor the `generate_action` seam gives DSPy's body (the real one: `Frame.own_body` tells the
  seam so, for DSPy's own reads), with pre_iteration's `prompt_context` after the variables' descriptions;
* pre_execution fires on the action before the body reads it, as when the stand-in returns it (so DSPy's
  `verbose` log shows the code as the stage left it);
* it strips the code's fences once, as DSPy does, and again only when pre_execution changed the code;
* it calls `_execute_code` (unless pre_execution gave the result, or through the prelude's REPL) and
  `_process_execution_result`, positionally, as DSPy's body does: the instance's own when one was set on it, else
  the class's (not the seams, whose work is done here); post_execution folds code and result between.

So what the loop, the predictor, the interpreter and every stage see is what they see around DSPy's own body. An
iteration nothing observes (nothing to fire, no prelude) runs `LoopBody.bare`: DSPy's lines alone, without the
seams' frames, which would only hand each call on.

It is used only where that holds by construction: a sync iteration of a class whose `_execute_iteration` is
DSPy's own with exactly the source of a release it was checked against (its SHA-256 below) and still is (a body
patched in later runs as itself), whose module has the helpers the body calls, with no action stream. Checked
against DSPy 3.4.1 (the newest release; the suite runs on it). Anything else (other releases, a subclass
overriding the body, PredictRLM, async loops, action streaming) runs DSPy's own body between the seams: slower,
never different. `tests/test_loop_body.py` pins both, on the same
iterations. `RLM_EVENTS_FAST_PATHS=0` in the environment turns it off, as the other fast paths.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
from types import FunctionType
from typing import TYPE_CHECKING, Any

from .._fast import disabled
from ..stages import Stage
from .detect import NO_RESULT
from .prediction import field_of
from .prelude import PreludeREPL
from .streaming import ACTION_STREAM

if TYPE_CHECKING:
    from .call import Call
    from .detect import Seams
    from .frame import Frame

FAST = disabled() is None  # False: every class runs DSPy's own body between the seams (tests switch it)

# SHA-256 of `textwrap.dedent(inspect.getsource(RLM._execute_iteration))` in the releases this body copies.
CHECKED: dict[str, str] = {
    "ca5d4ce1beb5b41160e030ae9c3877026eec189fc0613ba61d16594b5e6df0c3": "3.4.1",
}
_HELPERS = ("_strip_code_fences", "format_error_for_lm", "logger")

_MISSING: Any = object()
_instance_dict = object.__getattribute__
PRE_ITERATION, PRE_EXECUTION = Stage.PRE_ITERATION, Stage.PRE_EXECUTION
POST_EXECUTION, POST_ITERATION = Stage.POST_EXECUTION, Stage.POST_ITERATION


def source_release(fn: Any) -> str | None:
    """The checked release whose `_execute_iteration` is `fn`'s source, or `None` (unknown, or no source, or not a
    plain function: `inspect.getsource` reads a wrapper's `__wrapped__`, the source of what it wraps)."""
    if type(fn) is not FunctionType or getattr(fn, "__wrapped__", None) is not None:
        return None
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError):
        return None
    return CHECKED.get(hashlib.sha256(source.encode()).hexdigest())


class LoopBody:
    """DSPy's `_execute_iteration` for one RLM class, with the stages in place (see the module docstring)."""

    __slots__ = ("_cls", "_copied", "_format_error", "_logger", "_strip")

    def __init__(self, cls: Any, copied: Any, helpers: dict[str, Any]) -> None:
        self._cls, self._copied = cls, copied  # the class, and the loop body of its that this copies
        self._strip, self._format_error, self._logger = (helpers[name] for name in _HELPERS)

    @staticmethod
    def of(cls: Any, seams: Seams) -> LoopBody | None:
        """The body for instrumented RLM class `cls`, or `None` when `cls` must run DSPy's own."""
        fn = getattr(cls, "_execute_iteration", None)
        helpers = getattr(fn, "__globals__", {})
        shaped = seams.has_execute_code and seams.result_takes_code and seams.iteration.by_keyword
        if source_release(fn) is None or not shaped or not all(name in helpers for name in _HELPERS):
            return None
        return LoopBody(cls, fn, helpers)

    def copies(self) -> bool:
        """Whether this body may run: not switched off, and the class's loop body is still the one copied (one
        patched in since, by another library or a test, runs as itself)."""
        return FAST and self._cls._execute_iteration is self._copied

    def runs(self, call: Call) -> bool:
        """Whether this iteration of `call` runs here: `copies()`, sync, and no action stream."""
        return self.copies() and not call.is_async and ACTION_STREAM not in call.run.state

    def bare(
        self,
        rlm: Any,
        repl: Any,
        variables: list[Any],
        history: Any,
        iteration: int,
        input_args: dict[str, Any],
        output_field_names: list[str],
        interpreter_factory: Any,
        sub_agent_rules: str,
    ) -> Any:
        """An iteration nothing observes (a sync call with no stage to fire, or an iteration of another RLM's
        call): DSPy's body line for line, with DSPy's parameters, calling the predictor, `_execute_code` and
        `_process_execution_result` where the `generate_action`, `_execute_code` and `_process_execution_result`
        seams would hand DSPy's body on to them (so without those seams' frames)."""
        cls = self._cls
        variables_info = [variable.format() for variable in variables]
        instance = _instance_dict(rlm, "__dict__")
        action = _predictor(rlm, instance)(
            signature=rlm._action_signature_for_current_factory(interpreter_factory, sub_agent_rules),
            variables_info=variables_info,
            repl_history=history,
            iteration=f"{iteration + 1}/{rlm.max_iters}",
        )
        if rlm.verbose:
            self._log(rlm, iteration, action)
        code, error = self._stripped(_code_of(action))
        if error is not None:
            result: Any = f"[Error] {self._format_error(error)}"
        else:
            execute = instance.get("_execute_code")
            if execute is None:
                result = cls._execute_code(rlm, repl, code, input_args)
            else:
                result = execute(repl, code, input_args)
        process = instance.get("_process_execution_result")
        if process is None:
            return cls._process_execution_result(rlm, action, code, result, history, output_field_names)
        return process(action, code, result, history, output_field_names)

    def __call__(self, rlm: Any, call: Call, frame: Frame) -> tuple[Any, bool]:
        """Iteration `frame` of `call`, from pre_iteration to post_iteration: what it returns to the loop (a
        `Prediction` or the new history) and whether a post_iteration middleware stopped the run. Ends the frame."""
        cls, args, busy, plan = self._cls, frame.args, call.busy, call.plan
        try:
            if busy[PRE_ITERATION] or plan.wants(PRE_ITERATION, rlm):
                call.apply_pre_iteration(plan.fire(call.pre_iteration_ctx(frame), rlm), frame)
            call.iterations += 1  # started: its pre_iteration folded without raising
            repl, variables, history, iteration = args["repl"], args["variables"], args["history"], args["iteration"]
            variables_info = [variable.format() for variable in variables]
            if frame.prompt:  # pre_iteration's prompt_context, after the variables' descriptions (as Call.shown)
                variables_info = [*variables_info, frame.prompt]
                frame.prompt = ""
            frame.own_body = True  # DSPy's own reads of self.generate_action (the action signature's) get the predictor
            instance = _instance_dict(rlm, "__dict__")
            action = _predictor(rlm, instance)(
                signature=rlm._action_signature_for_current_factory(
                    args["interpreter_factory"], args["sub_agent_rules"]
                ),
                variables_info=variables_info,
                repl_history=history,
                iteration=f"{iteration + 1}/{rlm.max_iters}",
            )
            frame.action = action
            # pre_execution fires on the action as the predictor returned it, before DSPy's body reads it (as the
            # stand-in that returns it does): the log line shows the code as the stage left it.
            raw, stripped = _code_of(action), None
            executes = busy[PRE_EXECUTION] or plan.wants(PRE_EXECUTION, rlm)
            if isinstance(raw, str) and (executes or frame.prefix):
                stripped = self._stripped(raw)
                ctx = call.pre_execution_of(frame, action, stripped[0])
                if executes:
                    ctx = plan.fire(ctx, rlm)
                if call.apply_pre_execution(ctx, frame, action):  # changed: DSPy strips what it runs
                    stripped = None
            if rlm.verbose:
                self._log(rlm, iteration, action)
            code, error = stripped or self._stripped(_code_of(action))
            if error is not None:  # DSPy reports the fence and runs nothing
                result: Any = f"[Error] {self._format_error(error)}"
            elif frame.skip is not NO_RESULT:
                result = frame.skip
            else:  # pre_iteration's persistent_python_code runs first, on its own: see _patch.prelude
                runs_in = PreludeREPL(repl, frame.prelude) if frame.prelude else repl
                execute = instance.get("_execute_code")  # DSPy calls self._execute_code: one set on the instance
                if execute is None:
                    result = cls._execute_code(rlm, runs_in, code, args["input_args"])
                else:
                    result = execute(runs_in, code, args["input_args"])
            if busy[POST_EXECUTION] or plan.wants(POST_EXECUTION, rlm):
                done = plan.fire(call.post_execution_of(frame, code, result, history), rlm)
                code, result = done.code, done.result
                frame.code, frame.result = code, result
            elif busy[POST_ITERATION] or plan.wants(POST_ITERATION, rlm):
                frame.code, frame.result = code, result
            process = instance.get("_process_execution_result")  # as _execute_code
            if process is None:
                outcome = cls._process_execution_result(rlm, action, code, result, history, args["output_field_names"])
            else:
                outcome = process(action, code, result, history, args["output_field_names"])
            # (Call.iteration_ran has nothing to say here: the action is in, and the prompt_context was shown.)
            if busy[POST_ITERATION] or plan.wants(POST_ITERATION, rlm):
                return call.after_iteration(plan.fire(call.post_iteration_ctx(frame, outcome), rlm), outcome)
            return outcome, False
        finally:
            call.ended(frame)  # a middleware that read generate_action before the action was in left a stand-in

    def _log(self, rlm: Any, iteration: int, action: Any) -> None:
        """DSPy's `verbose` line for the iteration, as its body logs it."""
        self._logger.info(
            f"RLM iteration {iteration + 1}/{rlm.max_iters}\nReasoning: {action.reasoning}\nCode:\n{action.code}"
        )

    def _stripped(self, raw: Any) -> tuple[Any, SyntaxError | None]:
        """The code DSPy runs for `raw` (its fence stripped) and no error, or `raw` and the fence's error."""
        try:
            return self._strip(raw), None
        except SyntaxError as exc:
            return raw, exc


def _predictor(rlm: Any, instance: dict[str, Any]) -> Any:
    """The action predictor the `generate_action` seam gives DSPy's body: the instance's own, read where the seam
    reads it (without DSPy's Python-level `Module.__getattribute__` and the seam); missing, the seam's own error."""
    predictor = instance.get("generate_action", _MISSING)
    return rlm.generate_action if predictor is _MISSING else predictor


def _code_of(action: Any) -> Any:
    """`action.code`, as DSPy's body reads it (a missing field raises the predictor's own error)."""
    code = field_of(action, "code", _MISSING)
    return action.code if code is _MISSING else code


def body_for(cls: Any, seams: Seams) -> LoopBody | None:
    """`LoopBody.of(cls, seams)`, `None` when the fast path is off for good (`RLM_EVENTS_FAST_PATHS=0`)."""
    if disabled() is not None:
        return None
    return LoopBody.of(cls, seams)


__all__ = ["CHECKED", "FAST", "LoopBody", "body_for", "source_release"]
