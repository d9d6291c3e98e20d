"""The instrumented subclass of one RLM class: overrides of the seams that call the original method for the
real work, cached per class.
"""

from __future__ import annotations

import copy
import functools
import sys
from types import CodeType
from typing import Any

from dspy import Prediction

from ..context import ExtractContext
from ..errors import StageError
from ..stages import Stage
from .action_read import action_in, action_read_code
from .call import CURRENT, DEFERRED, POST_ITERATION, PRE_ITERATION, Call, current_call
from .detect import ATTR, NO_RESULT, Seams
from .direct_calls import class_walks_the_stack, warn_if_direct
from .extract import stop_extracts
from .frame import Frame
from .loop_body import body_for
from .predict_rlm import kernel_seams
from .predictor import ActionSeam, act
from .prelude import PreludeREPL
from .subclass import base_of, stand_in_namespace
from .tools import wrap_tool

# -- the instrumented classes ---------------------------------------------------------------------------------


@functools.cache
def instrumented_rlm_class(cls: Any) -> Any:
    kernel = kernel_seams(cls)
    seams: Any = kernel or Seams(cls)
    iteration, aiteration = seams.iteration, seams.aiteration
    by_keyword, aby_keyword = iteration.by_keyword, aiteration.by_keyword
    walks = class_walks_the_stack(cls)
    body = body_for(cls, seams) if kernel is None and not walks else None
    # DSPy's extract fallback; PredictRLM's runs it on a copy of the module, from *_for_run.
    extract_name, aextract_name = seams.extract.method, seams.aextract.method
    extract_fallback, aextract_fallback = getattr(cls, extract_name), getattr(cls, aextract_name)
    # What a stop runs instead: the same, without DSPy's "reached max iterations" line (a stop logs its own).
    stop_extract, astop_extract = stop_extracts(cls, extract_name, aextract_name)

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = Call.begin(self, seams, kwargs, is_async=False)
        if call is None:
            return cls.forward(self, *args, **kwargs)
        prediction, error = None, None
        token = CURRENT.set(call)
        try:
            start = call.start_ctx()
            kwargs = call.apply_start(start and call.plan.fire(start, self), kwargs)
            prediction = cls.forward(self, *args, **kwargs)
        except BaseException as exc:
            error = exc
        finally:
            CURRENT.reset(token)
        return Call.outcome(call.plan.fire(call.end_ctx(prediction, error), self))

    # The async twin of forward: the same steps, awaiting the plan (the call's outcome as one pair, at once).
    async def aforward(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = Call.begin(self, seams, kwargs, is_async=True)
        if call is None:
            return await cls.aforward(self, *args, **kwargs)
        token = CURRENT.set(call)
        try:
            start = call.start_ctx()
            kwargs = call.apply_start(start and await call.plan.afire(start, self), kwargs)
            prediction, error = await cls.aforward(self, *args, **kwargs), None
        except BaseException as exc:
            prediction, error = None, exc
        finally:
            CURRENT.reset(token)
        return Call.outcome(await call.plan.afire(call.end_ctx(prediction, error), self))

    # The iteration seams run on every iteration; the sync and async twins share Call's steps and differ in awaits.

    def _execute_iteration(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = CURRENT.get()
        # Not this RLM's call, or nothing sees this iteration: DSPy's own (its lines, without the seams, on 3.4.1).
        if call is None or call.module is not self or (frame := call.framed(iteration, args, kwargs)) is None:
            if body is not None and body.copies():
                return body.bare(self, *args, **kwargs)
            return cls._execute_iteration(self, *args, **kwargs)
        if body is not None and body.runs(call):  # DSPy's body, run with the stages in place (ends the frame)
            outcome, stop = body(self, call, frame)
        else:  # DSPy's own body between the seams, inline: each frame on the stack costs DSPy < 3.4.1 a walk
            stop, busy = False, call.busy
            try:
                if busy[PRE_ITERATION] or call.wants(PRE_ITERATION):
                    call.apply_pre_iteration(call.plan.fire(call.pre_iteration_ctx(frame), self), frame)
                call.iterations += 1  # started: its pre_iteration folded without raising
                # In place when it takes keywords: no frame of ours between DSPy's loop and its predictor (DSPy <
                # 3.4 walks the whole stack, reading every frame's source, on each predictor call).
                if by_keyword:
                    outcome = cls._execute_iteration(self, **frame.args)
                else:
                    outcome = iteration.call(cls._execute_iteration, self, frame.args)
                call.iteration_ran(frame)
                if busy[POST_ITERATION] or call.wants(POST_ITERATION):
                    end = call.plan.fire(call.post_iteration_ctx(frame, outcome), self)
                    outcome, stop = call.after_iteration(end, outcome)
            finally:
                call.ended(frame)
        if not stop:
            return outcome
        return call.stopped_with(getattr(self, extract_name)(*_extract_args(frame, outcome)), outcome)

    async def _aexecute_iteration(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = CURRENT.get()
        if call is None or call.module is not self or (frame := call.framed(aiteration, args, kwargs)) is None:
            return await cls._aexecute_iteration(self, *args, **kwargs)
        stop = False
        try:
            if call.wants_now(PRE_ITERATION):
                ctx = await call.plan.afire(call.pre_iteration_ctx(frame), self)
                call.apply_pre_iteration(ctx, frame)
            call.iterations += 1
            if aby_keyword:
                outcome = await cls._aexecute_iteration(self, **frame.args)
            else:
                outcome = await aiteration.call(cls._aexecute_iteration, self, frame.args)
            call.iteration_ran(frame)
            if outcome is DEFERRED:  # post_execution, awaited here: see Call.folds
                done = await call.plan.afire(call.post_execution_ctx(frame), self)
                outcome = call.finish_execution(done, frame)
            if call.wants_now(POST_ITERATION):
                ended = await call.plan.afire(call.post_iteration_ctx(frame, outcome), self)
                outcome, stop = call.after_iteration(ended, outcome)
        finally:
            call.ended(frame)
        if stop:  # the stop's extract, awaited
            outcome = call.stopped_with(await getattr(self, aextract_name)(*_extract_args(frame, outcome)), outcome)
        return outcome

    def _process_execution_result(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = CURRENT.get()
        frame = call.frame if call is not None and call.module is self else None
        if frame is not None and call.folds(frame, seams.result.bind(args, kwargs)):  # type: ignore[union-attr]
            return DEFERRED if call.defers else call.fold_in_place(frame)  # type: ignore[union-attr]
        return cls._process_execution_result(self, *args, **kwargs)

    def _execute_code(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = CURRENT.get()
        frame = call.frame if call is not None and call.module is self else None
        if frame is not None:
            if frame.skip is not NO_RESULT:
                return frame.skip
            if frame.prelude:  # pre_iteration's persistent_python_code runs first, on its own: see _patch.prelude
                bound = seams.execute.bind(args, kwargs)
                bound["repl"] = PreludeREPL(bound["repl"], frame.prelude)
                return seams.execute.call(cls._execute_code, self, bound)
        return cls._execute_code(self, *args, **kwargs)

    def _extract_fallback(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = current_call(self)
        if call is None:
            return extract_fallback(self, *args, **kwargs)
        call.forced_extract = True
        fallback = extract_fallback if call.stopped_by is None else stop_extract
        if not call.wants(Stage.EXTRACT):
            return fallback(self, *args, **kwargs)
        bound = seams.extract.bind(args, kwargs)

        def terminal(c: ExtractContext) -> ExtractContext:
            if c.prediction is None:
                bound["history"], bound["variables"] = c.history, c.variables
                c.prediction = seams.extract.call(fallback, self, bound)
            return c

        ctx = call.ctx(ExtractContext, history=bound["history"], variables=bound["variables"], prediction=None)
        return _extracted(call.plan.fire(ctx, self, terminal))

    # The async twin of _extract_fallback: the terminal awaits DSPy's async extractor.
    async def _aextract_fallback(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = current_call(self)
        if call is None:
            return await aextract_fallback(self, *args, **kwargs)
        call.forced_extract = True
        fallback = aextract_fallback if call.stopped_by is None else astop_extract
        if not call.wants(Stage.EXTRACT):
            return await fallback(self, *args, **kwargs)
        bound = seams.aextract.bind(args, kwargs)

        async def terminal(c: ExtractContext) -> ExtractContext:
            if c.prediction is None:
                bound["history"], bound["variables"] = c.history, c.variables
                c.prediction = await seams.aextract.call(fallback, self, bound)
            return c

        ctx = call.ctx(ExtractContext, history=bound["history"], variables=bound["variables"], prediction=None)
        return _extracted(await call.plan.afire(ctx, self, terminal))

    def _prepare_execution_tools(self: Any, *args: Any, **kwargs: Any) -> Any:
        tools = cls._prepare_execution_tools(self, *args, **kwargs)
        call = current_call(self)
        if call is None or not call.wants(Stage.TOOL_CALL):
            return tools
        return {name: wrap_tool(call, name, fn) for name, fn in tools.items()}

    def __deepcopy__(self: Any, memo: dict[int, Any]) -> Any:
        """A deep copy carries its own instrumentation: same middleware and taps, its own registrations, runs and
        signal sender; nothing it does reaches the original's receivers or `run.state`."""
        base: Any = base_of(type(self))
        new = base.__new__(base)
        memo[id(self)] = new
        state = {k: copy.deepcopy(v, memo) for k, v in self.__getstate__().items() if k != ATTR}
        new.__setstate__(state)
        events = self.__dict__.get(ATTR)
        if events is not None:
            clone = memo.get(id(events))
            if clone is None:
                clone = memo[id(events)] = events.copy()
            from . import attach  # the package's: it imports this module

            attach(new, clone)
        return new

    namespace: dict[str, Any] = {
        "forward": forward,
        "aforward": aforward,
        "_aexecute_iteration": _aexecute_iteration,
        extract_name: _extract_fallback,
        aextract_name: _aextract_fallback,
        "_prepare_execution_tools": _prepare_execution_tools,
    }
    # Where DSPy walks the stack, the action is read on the loop body's `self.verbose` (no stand-in frame) if it can.
    loop_code = action_read_code(cls) if walks and kernel is None else None
    if kernel is None:  # DSPy's loop; PredictRLM's kernel runs a legacy loop when these are overridden
        namespace.update(
            _execute_iteration=_execute_iteration,
            _process_execution_result=_process_execution_result,
            generate_action=ActionSeam(read_on_verbose=loop_code is not None),
        )
        if seams.has_execute_code:
            namespace["_execute_code"] = _execute_code
    for name, fn in namespace.items():
        if name != "generate_action":
            functools.update_wrapper(fn, getattr(cls, name))
    if kernel is not None:
        namespace.update(kernel.overrides(cls))
    namespace.update(__deepcopy__=__deepcopy__, **stand_in_namespace(cls))
    if walks:
        namespace["__getattribute__"] = _getattribute_off_the_stack(cls, kernel is None, loop_code)
    return type(cls)(cls.__name__, (cls,), namespace)


def _getattribute_off_the_stack(cls: Any, loop_seams: bool, loop_code: CodeType | None) -> Any:
    """`__getattribute__` for the instrumented class of a DSPy that walks the stack (before 3.4.1).

    DSPy 3.4's check for direct `forward()` calls: the same warning, from the caller's frame alone. And, since every
    frame on the stack costs DSPy's walk on each predictor call, a seam with nothing to do is not put on the stack:
    `forward`/`aforward` of an RLM whose plan is idle for it, and the iteration seams outside an instrumented call,
    are DSPy's own methods (what the seams would call, without their frame). With `loop_code`, the loop body's
    read of `self.verbose` is where pre_execution fires on the action (see `_patch.action_read`)."""
    calls = {name: getattr(cls, name) for name in ("forward", "aforward")}
    iterations = {name: getattr(cls, name) for name in ("_execute_iteration", "_aexecute_iteration")}
    if not loop_seams:  # PredictRLM's kernel: its own overrides
        iterations = {}
    # DSPy's own method is handed out only to DSPy's own caller, which calls it at once: dspy.Module's
    # __call__/acall for forward, the loop (forward/aforward of a class in the MRO) for the iteration seams. Code
    # that reads the method to keep it (a timing wrapper set on the instance, a later call) gets the seam, which
    # still fires every stage once middleware is added (and calls DSPy's own while nothing sees the call).
    loop_codes = frozenset(
        code
        for klass in cls.__mro__
        for name in calls
        if (code := getattr(klass.__dict__.get(name), "__code__", None)) is not None
    )
    dunder_dict = object.__getattribute__

    def __getattribute__(self: Any, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if name in calls:
            caller = sys._getframe(1).f_code.co_name
            warn_if_direct(self, name, attr, caller)
            if caller in ("__call__", "acall"):
                events = dunder_dict(self, "__dict__").get(ATTR)
                if events is None or events.plan.idle_for(self):  # Call.begin() would return None
                    return calls[name].__get__(self, type(self))
        elif name in iterations:
            call = CURRENT.get()
            if (call is None or call.module is not self) and sys._getframe(1).f_code in loop_codes:
                return iterations[name].__get__(self, type(self))  # what the seam would call, without its frame
        elif name == "verbose" and loop_code is not None:
            call = CURRENT.get()
            frame = call.frame if call is not None and call.module is self else None
            if frame is not None and frame.action is None:
                action = action_in(sys._getframe(1), loop_code)
                if action is not None:
                    act(call, frame, action)  # type: ignore[arg-type]  # frame is set: so is call
        return attr

    return __getattribute__


def _extract_args(frame: Frame, outcome: Any) -> tuple[Any, ...]:
    """The extract fallback's arguments after a stop in the iteration of `frame` that returned `outcome`."""
    return frame.args["variables"], outcome, frame.args["output_field_names"]


def _extracted(ctx: ExtractContext) -> Prediction:
    if ctx.prediction is None:
        raise StageError("extract: the middleware chain returned without a prediction (call next(ctx) or set one)")
    return ctx.prediction
