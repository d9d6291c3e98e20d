"""`generate_action` as an instrumented RLM's loop sees it: whatever the predictor is (a `dspy.Predict`,
another module, an object with only `__call__` or `acall`, a function), reading the attribute during an
iteration yields a stand-in that calls it, records the action and fires pre_execution on it."""

from __future__ import annotations

from typing import Any

from ..context import PreExecutionContext
from .call import CURRENT, Call
from .direct_calls import check_by_caller_frame, check_by_stack_walk
from .frame import Frame
from .streaming import ACTION_STREAM, agenerate, generate


class Acting:
    """`generate_action` as the loop sees it until the iteration's action is in: calls go to the real predictor
    (`__call__` / `forward` in sync loops, `acall` / `aforward` in async ones), then record the action and
    fire pre_execution on it. Everything else, and any error, is the predictor's own: a loop that works bare works
    the same, whatever the predictor is (a `dspy.Predict`, another module, a plain callable)."""

    __slots__ = ("_call", "_frame", "_predictor")

    def __init__(self, predictor: Any, call: Call, frame: Frame) -> None:
        self._predictor, self._call, self._frame = predictor, call, frame

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._frame.prompt:  # pre_iteration's prompt_context, in this call's variables_info
            kwargs = self._call.shown(self._frame, kwargs)
        state = self._call.run.state
        if ACTION_STREAM not in state:  # the predictor called in place: one frame less under DSPy's stack walk
            return act(self._call, self._frame, self._predictor(*args, **kwargs))
        return act(self._call, self._frame, generate(state, self._frame.index, self._predictor, args, kwargs))

    def _prepared(self, action: Any) -> tuple[PreExecutionContext | None, bool]:
        return prepared(self._call, self._frame, action)

    def _acted(self, action: Any) -> Any:
        return act(self._call, self._frame, action)

    async def _aacted(self, action: Any) -> Any:  # the async twin: awaits the stage
        ctx, fires = self._prepared(action)
        if fires:
            ctx = await self._call.plan.afire(ctx, self._call.module)  # type: ignore[type-var]
        if ctx is not None:
            self._call.apply_pre_execution(ctx, self._frame, action)
        return action

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._predictor, name)  # a missing acall fails here as it fails bare
        if name in ("acall", "aforward") and callable(attr):

            async def acted(*args: Any, **kwargs: Any) -> Any:
                if self._frame.prompt:
                    kwargs = self._call.shown(self._frame, kwargs)
                state, index = self._call.run.state, self._frame.index
                return await self._aacted(await agenerate(state, index, self._predictor, attr, args, kwargs))

            return acted
        if name == "forward" and callable(attr):

            def forward(*args: Any, **kwargs: Any) -> Any:
                if self._frame.prompt:
                    kwargs = self._call.shown(self._frame, kwargs)
                return self._acted(attr(*args, **kwargs))

            return forward
        return attr

    def __repr__(self) -> str:
        return repr(self._predictor)


def prepared(call: Call, frame: Frame, action: Any) -> tuple[PreExecutionContext | None, bool]:
    """Record `action`; its pre_execution context (`None`: nothing to do) and whether the stage fires on it
    (else only this iteration's prelude is applied)."""
    if not call.acted(frame, action):
        return None, False
    return call.pre_execution_ctx(frame, action), call.executing()


def act(call: Call, frame: Frame, action: Any) -> Any:
    """Record `action` as the iteration's LM output and fire pre_execution on it (sync); returns `action`, changed
    in place as the stage left it. (`prepared()`'s steps, in place: this runs on every observed iteration.)"""
    if not call.acted(frame, action):
        return action
    ctx = call.pre_execution_ctx(frame, action)
    if call.executing():
        ctx = call.plan.fire(ctx, call.module)
    call.apply_pre_execution(ctx, frame, action)
    return action


# `rlm.__dict__` without DSPy's Python-level `Module.__getattribute__` (read twice per iteration).
_instance_dict = object.__getattribute__


class ActionSeam:
    """`generate_action` of an instrumented RLM class: a data descriptor over the instance's own attribute, so
    that reading it during an iteration yields the `Acting` stand-in, while assigning, deleting and every
    other read (`named_predictors`, pickling, copies) see the real predictor in the instance's `__dict__`.

    With `read_on_verbose` (see `_patch.action_read`), a sync iteration with no `prompt_context` to show and no
    action stream gets the real predictor: pre_execution fires when the loop body reads `self.verbose`."""

    def __init__(self, read_on_verbose: bool = False) -> None:
        self.read_on_verbose = read_on_verbose

    def __get__(self, rlm: Any, owner: Any = None) -> Any:
        if rlm is None:
            return self
        try:
            predictor = _instance_dict(rlm, "__dict__")["generate_action"]
        except KeyError:
            raise AttributeError(f"'{type(rlm).__name__}' object has no attribute 'generate_action'") from None
        call = CURRENT.get()
        frame = call.frame if call is not None and call.module is rlm else None
        if frame is None or frame.action is not None or frame.own_body:
            return predictor
        if self.read_on_verbose and not call.is_async and not frame.prompt and ACTION_STREAM not in call.run.state:  # type: ignore[union-attr]
            return predictor  # the action is read when the loop reads self.verbose: see _patch.action_read
        stand_in = frame.stand_in
        if stand_in is None or stand_in._predictor is not predictor:  # DSPy reads it twice per iteration
            stand_in = frame.stand_in = Acting(predictor, call, frame)  # type: ignore[arg-type]
        return stand_in

    def __set__(self, rlm: Any, value: Any) -> None:
        old = rlm.__dict__.get("generate_action")
        if old is not None and old is not value:
            check_by_stack_walk(old)  # it leaves the instrumented RLM: its own class again
        rlm.__dict__["generate_action"] = value
        check_by_caller_frame(value)

    def __delete__(self, rlm: Any) -> None:
        try:
            del rlm.__dict__["generate_action"]
        except KeyError:
            raise AttributeError("generate_action") from None
