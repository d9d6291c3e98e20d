"""The only module that touches DSPy's private RLM API.

rlm-events never copies DSPy's loop. It swaps the class of one ``dspy.RLM`` instance for a cached subclass whose
overrides wrap the smallest private seams and call the original method for the real work, so DSPy's own loop body
keeps running:

================================  ===========================================================================
seam                              stages
================================  ===========================================================================
``forward`` / ``aforward``        ``run_start``, ``run_end`` (the call boundary; the interpreter is shut down
                                  inside, before ``run_end``)
``_execute_iteration`` (+async)   ``pre_iteration`` before, ``post_execution`` and ``post_iteration`` after
``generate_action`` (read)        ``pre_execution`` right after the predictor (any callable) returned the code
``_execute_code`` (or the REPL)   skips execution when ``pre_execution`` supplied a result
``_process_execution_result``     deferred until ``post_execution`` folded code and result
``_extract_fallback`` (+async)    ``extract``
``_prepare_execution_tools``      ``tool_call`` around every tool the executed code can call
================================  ===========================================================================

Version differences (DSPy 3.1.2 to 3.4.x) live in :class:`_Seams` and :class:`RLMConstructor`, detected once per
RLM class from signatures, attributes and the loop's source, never from version numbers:

* 3.1 runs ``repl.execute`` inline in ``_execute_iteration`` (so the REPL is wrapped to let pre_execution skip it)
  and its ``_process_execution_result`` takes no ``code``: it records ``pred.code`` (3.1.2 as the LM wrote it, fence
  included), so contexts see it stripped, as it runs, and a changed code is handed over through ``pred.code``.
  3.2+ route execution through ``_execute_code`` and pass ``code`` explicitly.
* 3.3 adds a positional-only caller-owned ``interpreter`` to ``forward`` and 3.4 a keyword ``interpreter_factory``:
  call options, never input args. 3.4 adds arguments to ``_execute_iteration``; arguments are bound by name.
* The constructor takes ``max_iterations`` and one shared ``interpreter`` before 3.3, ``max_iters`` and an
  ``interpreter_factory`` from 3.3 on; 3.1.2 takes tools as a dict. :class:`RLMConstructor` translates.

A class whose loop lacks a needed piece raises :class:`~rlm_events.UnsupportedDSPyError` at ``instrument()`` time,
naming the DSPy version and the piece: a stage is never silently skipped.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import copyreg
import functools
import inspect
import itertools
import logging
import re
import sys
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import dspy
from dspy import Prediction
from dspy.primitives.code_interpreter import CodeInterpreter
from dspy.primitives.repl_types import REPLEntry, REPLHistory, REPLVariable

from middleware import is_async_callable

from .context import (
    ExtractContext,
    PostExecutionContext,
    PostIterationContext,
    PreExecutionContext,
    PreIterationContext,
    Run,
    RunEndContext,
    RunStartContext,
    StageContext,
    ToolCallContext,
    construct,
)
from .errors import StageError, UnsupportedDSPyError
from .stages import Stage

if TYPE_CHECKING:
    from .instrumentation import Instrumentation
    from .plan import Plan

_ATTR = "_rlm_events"
_BASE = "__rlm_events_base__"
_NO_RESULT: Any = object()


# -- version adapters -----------------------------------------------------------------------------------------


class _Params:
    """The parameters of one private method, to bind the arguments of a call to it by name and call it again.

    A seam binds the loop's call once (:meth:`bind`), reads and replaces arguments in that dict, and calls the
    method with it (:meth:`call`). The names are those of the base-most definition in the MRO that declares them
    all (DSPy's own), as the loop passes them. An override may rename nothing, but may take fewer of them plus
    ``*args``, take ``*args, **kwargs`` only, or take them positionally only: it is called as it can be called.
    """

    __slots__ = ("by_keyword", "method", "names")

    def __init__(self, cls: type, method: str, required: tuple[str, ...]) -> None:
        self.method = method
        definitions = [_parameters(fn) for fn in _definitions(cls, method)]
        outer = definitions[0]
        named = next((d for d in reversed(definitions) if _declares(d, required, positional_only=True)), None)
        outer_names = _positional(outer)
        if named is None or outer_names != _positional(named)[: len(outer_names)]:
            declared = {p.name for p in outer}
            missing = [n for n in required if n not in declared] or [n for n in outer_names if n not in required]
            raise _unsupported(cls, method, f"has no parameter {', '.join(missing)}")
        # The names positional arguments bind to, in order (up to *args or the keyword-only ones).
        self.names = _positional(named)
        keywords = {p.name for p in outer if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        self.by_keyword = any(p.kind is p.VAR_KEYWORD for p in outer) or all(n in keywords for n in self.names)
        if (
            not self.by_keyword
            and not any(p.kind is p.VAR_POSITIONAL for p in outer)
            and len(outer_names) < len(self.names)
        ):
            raise _unsupported(cls, method, f"does not accept {', '.join(self.names[len(outer_names) :])}")

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by name, to :meth:`call` the method with."""
        if len(args) > len(self.names):
            raise TypeError(f"{self.method}() takes {len(self.names)} positional arguments but {len(args)} were given")
        return {**dict(zip(self.names, args, strict=False)), **kwargs}  # fewer: the rest have defaults

    def call(self, fn: Callable[..., Any], obj: Any, bound: dict[str, Any]) -> Any:
        """``fn(obj, ...)`` with ``bound``: as keywords where ``fn`` takes them, else the loop's names positionally."""
        if self.by_keyword:
            return fn(obj, **bound)
        positional = list(itertools.takewhile(lambda n: n in bound, self.names))
        return fn(obj, *[bound[n] for n in positional], **{k: v for k, v in bound.items() if k not in positional})


def _positional(params: list[inspect.Parameter]) -> tuple[str, ...]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in itertools.takewhile(lambda p: p.kind in kinds, params))


def _parameters(fn: Any) -> list[inspect.Parameter]:
    params = list(inspect.signature(fn).parameters.values())
    return params[1:] if params and params[0].name == "self" else params


def _declares(params: list[inspect.Parameter], names: tuple[str, ...], *, positional_only: bool = False) -> bool:
    kinds: set[inspect._ParameterKind] = {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
    if positional_only:
        kinds.add(inspect.Parameter.POSITIONAL_ONLY)
    declared = {p.name for p in params if p.kind in kinds}
    return all(n in declared for n in names)


def _definitions(cls: type, method: str) -> Iterator[Any]:
    """``method`` as each class of ``cls``'s MRO defines it, outermost first."""
    for klass in cls.__mro__:
        fn = klass.__dict__.get(method, _NO_RESULT)
        if fn is not _NO_RESULT:
            yield fn


def _owner(cls: type, method: str) -> type:
    """The class whose definition of ``method`` ``cls`` uses."""
    return next((k for k in cls.__mro__ if method in k.__dict__), cls)


def _is_dspys(klass: type) -> bool:
    return klass.__module__ == "dspy" or klass.__module__.startswith("dspy.")


def _unsupported(cls: type, method: str, piece: str) -> UnsupportedDSPyError:
    """The error for a loop rlm-events cannot fit: DSPy's own class changed, or a subclass's override differs."""
    owner = _owner(cls, method)
    if _is_dspys(owner):
        return UnsupportedDSPyError(
            f"rlm-events cannot instrument {cls.__qualname__} on DSPy {dspy.__version__}: {owner.__name__}.{method}() "
            f"{piece}. Supported: DSPy 3.1.2 to 3.4.x; please report this DSPy version."
        )
    return UnsupportedDSPyError(
        f"rlm-events cannot instrument {cls.__qualname__}: {owner.__qualname__}.{method}() {piece}, which "
        f"rlm-events needs of a dspy.RLM subclass (DSPy {dspy.__version__})"
    )


class _Seams:
    """What one RLM class's loop looks like, detected from its methods' signatures and source."""

    _REQUIRED = (
        "forward",
        "aforward",
        "_execute_iteration",
        "_aexecute_iteration",
        "_process_execution_result",
        "_extract_fallback",
        "_aextract_fallback",
        "_prepare_execution_tools",
    )

    def __init__(self, cls: Any) -> None:
        self.cls = cls  # the class whose methods do the work
        for name in self._REQUIRED:
            if not callable(getattr(cls, name, None)):
                raise _unsupported(cls, name, "is missing")
        loop_args = ("repl", "variables", "history", "iteration", "input_args", "output_field_names")
        self.iteration = _Params(cls, "_execute_iteration", loop_args)
        self.aiteration = _Params(cls, "_aexecute_iteration", loop_args)
        # 3.2+ pass the stripped code explicitly; 3.1 records pred.code.
        self.result_takes_code = any(
            _declares(_parameters(fn), ("code",)) for fn in _definitions(cls, "_process_execution_result")
        )
        self.result = _Params(
            cls, "_process_execution_result", ("pred", "result", "history", *(("code",) * self.result_takes_code))
        )
        self.extract = _Params(cls, "_extract_fallback", ("variables", "history", "output_field_names"))
        self.aextract = _Params(cls, "_aextract_fallback", ("variables", "history", "output_field_names"))
        # 3.2+ route execution through _execute_code; 3.1 calls repl.execute inline, so we wrap the REPL.
        self.has_execute_code = callable(getattr(cls, "_execute_code", None)) and all(
            _calls(cls, method, "self._execute_code(") is not False
            for method in ("_execute_iteration", "_aexecute_iteration")
        )
        # Options of the call itself, never input args: 3.3's positional-only caller-owned interpreter is passed in
        # *args (a keyword of that name is an input), 3.4's keyword-only interpreter_factory in **kwargs.
        self.call_options = frozenset(
            p.name
            for fn in _definitions(cls, "forward")
            for p in _parameters(fn)
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
        self._require_loop_calls(cls)
        # post_execution of an async call is fired after the loop body returned, where it can be awaited: that
        # needs the body to return _process_execution_result(...) as is. Otherwise it fires inside that method.
        self.defers = all(_returns_processed(cls, m) for m in ("_execute_iteration", "_aexecute_iteration"))
        from dspy.predict import rlm as rlm_module

        strip = getattr(rlm_module, "_strip_code_fences", None)
        self.strip: Callable[[str], str] = strip if callable(strip) else str.strip

    def stripped(self, raw: str) -> str:
        """The code as DSPy runs it: without its markdown fence."""
        try:
            return self.strip(raw)
        except SyntaxError:  # DSPy reports the bad fence; middleware still see (and may fix) the raw text
            return raw

    def _require_loop_calls(self, cls: type) -> None:
        """Each stage fires from a call the loop makes; a loop that no longer makes it would skip the stage."""
        execute = ("self._execute_code(", "repl.execute(")
        required = {
            "forward": (
                ("self._prepare_execution_tools(",),
                ("self._execute_iteration(",),
                ("self._extract_fallback(",),
            ),
            "aforward": (
                ("self._prepare_execution_tools(",),
                ("self._aexecute_iteration(",),
                ("self._aextract_fallback(",),
            ),
            "_execute_iteration": (("self.generate_action(",), execute),
            "_aexecute_iteration": (("self.generate_action.acall(",), execute),
        }
        for method, calls in required.items():
            missing = [alternatives[0] for alternatives in calls if _calls_any(cls, method, alternatives) is False]
            if missing:
                raise _unsupported(cls, method, f"does not call {', '.join(c + '...)' for c in missing)}")


def _source(fn: Any) -> str | None:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):  # no source shipped
        return None


def _chain_sources(cls: type, method: str) -> Iterator[str | None]:
    """The sources of the definitions of ``method`` that run when ``cls``'s is called: the outermost, and each
    parent's as long as an override calls ``super().<method>(...)``. ``None`` for a definition without source."""
    for fn in _definitions(cls, method):
        source = _source(fn) if inspect.isfunction(fn) else None
        yield source
        if source is None or not re.search(rf"super\(\)\.{method}\(", source):
            return


def _calls(cls: type, method: str, call: str) -> bool | None:
    """Whether running ``cls``'s ``method`` makes ``call`` (by its source); ``None`` when a source is missing."""
    return _calls_any(cls, method, (call,))


def _calls_any(cls: type, method: str, calls: tuple[str, ...]) -> bool | None:
    unknown = False
    for source in _chain_sources(cls, method):
        if source is None:
            unknown = True
        elif any(c in source for c in calls):
            return True
    return None if unknown else False


def _returns_processed(cls: type, method: str) -> bool:
    """Whether each definition that runs returns ``_process_execution_result(...)`` (or its parent's result) as is."""
    for source in _chain_sources(cls, method):
        if source is None:
            return False
        lines = [line.strip() for line in source.splitlines()]
        delegations = [line for line in lines if f"super().{method}(" in line]
        if delegations:
            if any(not re.match(rf"return (await )?super\(\)\.{method}\(", line) for line in delegations):
                return False
            continue
        calls = [line for line in lines if "self._process_execution_result(" in line]
        return bool(calls) and all(line.startswith("return ") for line in calls)
    return False


# -- per-call state -------------------------------------------------------------------------------------------

_CURRENT: contextvars.ContextVar[_Call | None] = contextvars.ContextVar("rlm_events_call", default=None)
_DEFERRED: Any = object()  # what the patched _process_execution_result returns when post_execution must fold first

# Hot paths read these once per iteration: a module global is cheaper than the enum's class attribute.
_PRE_ITERATION, _PRE_EXECUTION = Stage.PRE_ITERATION, Stage.PRE_EXECUTION
_POST_EXECUTION, _POST_ITERATION = Stage.POST_EXECUTION, Stage.POST_ITERATION


class _Frame:
    """One iteration of one call: the loop body's arguments by name, and what its stages learnt on the way."""

    __slots__ = ("action", "args", "code", "index", "processing", "result", "skip")

    def __init__(self, call: _Call, args: dict[str, Any]) -> None:
        """Start iteration ``args["iteration"]`` of ``call``, whose loop body is called with ``args``."""
        self.args = args  # what DSPy's loop body runs with; pre_iteration replaces history, variables, input_args
        self.index: int = args["iteration"]
        self.action: Prediction | None = None  # generate_action's output: the LM's reasoning and code
        self.skip: Any = _NO_RESULT  # pre_execution's result, used instead of running the code
        self.processing: dict[str, Any] | None = None  # _process_execution_result's arguments, while deferred
        self.code = ""
        self.result: Any = None
        call.iterations += 1
        call.frame = self
        if not call.seams.has_execute_code:
            args["repl"] = _SkippableREPL(args["repl"], self)


class _Call:
    """One call of an instrumented RLM: its plan (fixed at start), run, counters and current iteration.

    The stage helpers come in pairs around ``plan.fire``/``plan.afire``, so that the sync and async seams share
    everything but the firing: ``*_ctx`` builds a stage's context from the loop's state, ``apply_*`` (or
    ``finish_*``) hands what the middleware left in it back to the loop.
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
        "plan",
        "run",
        "seams",
        "t0",
    )

    def __init__(
        self, module: dspy.RLM, seams: _Seams, plan: Plan, input_args: dict[str, Any], *, is_async: bool
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
        self.frame: _Frame | None = None
        self.t0 = time.perf_counter()

    @staticmethod
    def begin(module: dspy.RLM, seams: _Seams, kwargs: dict[str, Any], *, is_async: bool) -> _Call | None:
        events: Instrumentation | None = module.__dict__.get(_ATTR)
        if events is None:
            return None
        plan = events.plan
        if plan.idle_for(module):  # receivers connected only to other RLMs do not count
            return None
        inputs = {k: v for k, v in kwargs.items() if k not in seams.call_options}
        return _Call(module, seams, plan, inputs, is_async=is_async)

    def wants(self, stage: Stage) -> bool:
        """Whether anything would see ``stage`` in this call: receivers connected only to other RLMs do not count.

        The per-iteration seams test ``busy[stage] or plan.wants(stage, module)`` in place, so that a stage with
        middleware costs them no call."""
        return self.plan.wants(stage, self.module)

    def ctx(self, cls: type[StageContext], iteration: int | None = None, **fields: Any) -> Any:
        """A ``cls`` context of this call; ``fields`` are the rest of its fields, all of them, in declaration order."""
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

    def end_ctx(self, prediction: Prediction | None, error: BaseException | None) -> RunEndContext:
        return self.ctx(
            RunEndContext,
            prediction=prediction,
            error=error,
            iterations=self.iterations,
            forced_extract=self.forced_extract,
            duration_s=time.perf_counter() - self.t0,
        )

    # pre_iteration

    def pre_iteration_ctx(self, frame: _Frame) -> PreIterationContext:
        args = frame.args
        return self.ctx(
            PreIterationContext,
            frame.index,
            history=args["history"],
            variables=list(args["variables"]),
            extra_vars={},
            python_code=None,
        )

    @staticmethod
    def apply_pre_iteration(ctx: PreIterationContext, frame: _Frame) -> None:
        args = frame.args
        if ctx.python_code:
            result = args["repl"].execute(ctx.python_code, variables={})
            if isinstance(result, str) and result.startswith("[Error]"):
                raise StageError(f"pre_iteration: python_code failed in the REPL: {result}")
        variables = list(ctx.variables)
        if ctx.extra_vars:
            shown = {v.name for v in variables}
            variables += [REPLVariable.from_value(k, v) for k, v in ctx.extra_vars.items() if k not in shown]
            args["input_args"] = {**args["input_args"], **ctx.extra_vars}
        args["history"], args["variables"] = ctx.history, variables

    # pre_execution (called from the generate_action seam)

    def acting(self, frame: _Frame, predictor: Any) -> Any:
        """What ``self.generate_action`` is while this iteration waits for its action: ``predictor`` itself once
        the action is in, else a stand-in that records the action and fires pre_execution on it."""
        return predictor if frame.action is not None else _Acting(predictor, self, frame)

    def acted(self, frame: _Frame, action: Any) -> bool:
        """Record ``action`` as the iteration's LM output (the first one only): whether pre_execution fires on it."""
        if frame.action is not None or self.frame is not frame:
            return False
        frame.action = action
        if not isinstance(getattr(action, "code", None), str):  # DSPy reports what it cannot run; we stand aside
            return False
        return self.busy[_PRE_EXECUTION] or self.plan.wants(_PRE_EXECUTION, self.module)

    def unacted(self, frame: _Frame) -> None:
        """The iteration ended without an action from ``self.generate_action``: say once that pre_execution could
        not fire (the loop called the predictor another way), if anything wanted it."""
        if not (self.busy[_PRE_EXECUTION] or self.plan.wants(_PRE_EXECUTION, self.module)):
            return
        predictor = type(self.module.__dict__.get("generate_action"))
        warn_once(
            self.module,
            ("pre_execution", predictor),
            f"rlm-events: pre_execution did not fire in iteration {frame.index + 1} of "
            f"{type(self.module).__qualname__}: its loop did not get the action from self.generate_action(...) "
            f"(a {predictor.__qualname__}); not reported again for this RLM and predictor class",
        )

    def pre_execution_ctx(self, frame: _Frame, action: Any) -> PreExecutionContext:
        frame.code = code = self.seams.stripped(action.code)
        return self.ctx(
            PreExecutionContext,
            frame.index,
            code=code,
            reasoning=str(getattr(action, "reasoning", "")),
            history=frame.args["history"],
            result=None,
        )

    @staticmethod
    def apply_pre_execution(ctx: PreExecutionContext, frame: _Frame, action: Any) -> Any:
        if ctx.code != frame.code:
            try:
                action.code = ctx.code  # DSPy strips and runs action.code next
            except (AttributeError, TypeError) as exc:
                raise StageError(
                    f"pre_execution: a middleware changed the code, but generate_action returned a "
                    f"{type(action).__name__} whose code cannot be set ({exc}); return a dspy.Prediction"
                ) from None
        if ctx.result is not None:
            frame.skip = ctx.result
        return action

    # post_execution (deferred by the _process_execution_result seam)

    def folds(self, frame: _Frame, processing: dict[str, Any]) -> bool:
        """Called with ``_process_execution_result``'s arguments: whether post_execution must fold code and result
        first. Either way, what the post_iteration context shows is recorded when it is wanted."""
        if self.busy[_POST_EXECUTION] or self.plan.wants(_POST_EXECUTION, self.module):
            frame.processing = processing
            return True
        if self.busy[_POST_ITERATION] or self.plan.wants(_POST_ITERATION, self.module):
            frame.code, frame.result = self.code_of(processing), processing["result"]
        return False

    def fold_in_place(self, frame: _Frame) -> Any:
        """post_execution fired inside ``_process_execution_result``: in sync calls, and in async calls whose loop
        body does not return that method's value as is (then ``async def`` middleware run on the private loop)."""
        if (
            not self.defers
            and self.seams.defers is False
            and any(map(is_async_callable, self.plan.chains[_POST_EXECUTION]))
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
        return self.seams.stripped(str(processing["pred"].code))

    def post_execution_ctx(self, frame: _Frame) -> PostExecutionContext:
        processing: Any = frame.processing
        frame.code = self.code_of(processing)
        return self.ctx(
            PostExecutionContext,
            frame.index,
            code=frame.code,
            result=processing["result"],
            history=processing["history"],
        )

    def finish_execution(self, ctx: PostExecutionContext, frame: _Frame) -> Any:
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

    def post_iteration_ctx(self, frame: _Frame, outcome: Prediction | REPLHistory) -> PostIterationContext:
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
        return self.ctx(
            PostIterationContext,
            frame.index,
            history=history,
            prediction=prediction,
            stop=False,
            action=frame.action,
            code=frame.code,
            result=frame.result,
        )

    @staticmethod
    def after_iteration(ctx: PostIterationContext, outcome: Any) -> tuple[Any, bool]:
        """What the iteration returns to the loop, and whether the extract fallback must produce it instead."""
        if ctx.prediction is not None:
            return ctx.prediction, False
        return ctx.history, ctx.stop

    # tools

    def wrap_tool(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        plan, module = self.plan, self.module

        def new_ctx(args: tuple[Any, ...], kwargs: dict[str, Any]) -> ToolCallContext:
            index = self.frame.index if self.frame is not None else None
            return self.ctx(ToolCallContext, index, name=name, args=args, kwargs=kwargs, result=None)

        if is_async_callable(fn):  # also an object whose __call__ is async

            async def aterminal(c: ToolCallContext) -> ToolCallContext:
                c.result = await fn(*c.args, **c.kwargs)
                return c

            @functools.wraps(fn)
            async def atool(*args: Any, **kwargs: Any) -> Any:
                return (await plan.afire(new_ctx(args, kwargs), module, aterminal)).result

            return atool

        def terminal(c: ToolCallContext) -> ToolCallContext:
            c.result = fn(*c.args, **c.kwargs)
            return c

        @functools.wraps(fn)
        def tool(*args: Any, **kwargs: Any) -> Any:
            return plan.fire(new_ctx(args, kwargs), module, terminal).result

        return tool


class _SkippableREPL:
    """DSPy 3.1 runs ``repl.execute`` inline; this stand-in lets pre_execution skip it. Everything else passes."""

    def __init__(self, repl: Any, frame: _Frame) -> None:
        object.__setattr__(self, "_repl", repl)
        object.__setattr__(self, "_frame", frame)

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        skip = self._frame.skip
        return self._repl.execute(code, variables=variables) if skip is _NO_RESULT else skip

    def __getattr__(self, name: str) -> Any:
        return getattr(self._repl, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._repl, name, value)


_WARNED: weakref.WeakKeyDictionary[Any, set[Any]] = weakref.WeakKeyDictionary()


def warn_once(module: Any, key: Any, message: str) -> None:
    """Log ``message`` at WARNING the first time ``key`` comes up for ``module``: stages that cannot fire are named,
    never skipped silently, and never flood the log."""
    seen = _WARNED.setdefault(module, set())
    if key not in seen:
        seen.add(key)
        logging.getLogger("rlm_events").warning(message)


def _current(module: Any) -> _Call | None:
    call = _CURRENT.get()
    return call if call is not None and call.module is module else None


# -- the instrumented classes ---------------------------------------------------------------------------------


def _base_of(cls: Any) -> Any:
    return cls.__dict__.get(_BASE, cls)


def _reduce_to_base(self: Any, protocol: int) -> tuple[Any, ...]:
    """Pickle (and copy.copy) as the plain DSPy class: instrumentation holds live callables and is not state."""
    state = self.__getstate__()
    if isinstance(state, dict):
        state = {k: v for k, v in state.items() if k != _ATTR}
    # Not copyreg.__newobj__: pickle refuses it for a class other than the object's own. _reconstructor(cls, object,
    # None) is object.__new__(cls), and needs nothing from rlm-events to unpickle.
    return copyreg._reconstructor, (_base_of(type(self)), object, None), state  # type: ignore[attr-defined]


@functools.cache
def _instrumented_rlm_class(cls: Any) -> Any:
    seams = _Seams(cls)
    iteration, aiteration, result = seams.iteration, seams.aiteration, seams.result

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _Call.begin(self, seams, kwargs, is_async=False)
        if call is None:
            return cls.forward(self, *args, **kwargs)
        prediction, error = None, None
        token = _CURRENT.set(call)
        try:
            start = call.start_ctx()
            kwargs = call.apply_start(start and call.plan.fire(start, self), kwargs)
            prediction = cls.forward(self, *args, **kwargs)
        except BaseException as exc:
            error = exc
        finally:
            _CURRENT.reset(token)
        end = call.plan.fire(call.end_ctx(prediction, error), self)
        if end.error is not None:
            raise end.error
        return end.prediction

    async def aforward(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _Call.begin(self, seams, kwargs, is_async=True)
        if call is None:
            return await cls.aforward(self, *args, **kwargs)
        prediction, error = None, None
        token = _CURRENT.set(call)
        try:
            start = call.start_ctx()
            kwargs = call.apply_start(start and await call.plan.afire(start, self), kwargs)
            prediction = await cls.aforward(self, *args, **kwargs)
        except BaseException as exc:
            error = exc
        finally:
            _CURRENT.reset(token)
        end = await call.plan.afire(call.end_ctx(prediction, error), self)
        if end.error is not None:
            raise end.error
        return end.prediction

    # The iteration seams run on every iteration: no helper call for what a stage with nothing to see skips.

    def _execute_iteration(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _CURRENT.get()
        if call is None or call.module is not self:
            return cls._execute_iteration(self, *args, **kwargs)
        frame = _Frame(call, iteration.bind(args, kwargs))
        stop = False
        try:
            if call.busy[_PRE_ITERATION] or call.plan.wants(_PRE_ITERATION, self):
                call.apply_pre_iteration(call.plan.fire(call.pre_iteration_ctx(frame), self), frame)
            outcome = iteration.call(cls._execute_iteration, self, frame.args)
            if frame.action is None:
                call.unacted(frame)
            if call.busy[_POST_ITERATION] or call.plan.wants(_POST_ITERATION, self):
                end = call.plan.fire(call.post_iteration_ctx(frame, outcome), self)
                outcome, stop = call.after_iteration(end, outcome)
        finally:
            call.frame = None
        if stop:
            return self._extract_fallback(frame.args["variables"], outcome, frame.args["output_field_names"])
        return outcome

    async def _aexecute_iteration(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _CURRENT.get()
        if call is None or call.module is not self:
            return await cls._aexecute_iteration(self, *args, **kwargs)
        frame = _Frame(call, aiteration.bind(args, kwargs))
        stop = False
        try:
            if call.busy[_PRE_ITERATION] or call.plan.wants(_PRE_ITERATION, self):
                call.apply_pre_iteration(await call.plan.afire(call.pre_iteration_ctx(frame), self), frame)
            outcome = await aiteration.call(cls._aexecute_iteration, self, frame.args)
            if frame.action is None:
                call.unacted(frame)
            if outcome is _DEFERRED:
                outcome = call.finish_execution(await call.plan.afire(call.post_execution_ctx(frame), self), frame)
            if call.busy[_POST_ITERATION] or call.plan.wants(_POST_ITERATION, self):
                end = await call.plan.afire(call.post_iteration_ctx(frame, outcome), self)
                outcome, stop = call.after_iteration(end, outcome)
        finally:
            call.frame = None
        if stop:
            return await self._aextract_fallback(frame.args["variables"], outcome, frame.args["output_field_names"])
        return outcome

    def _process_execution_result(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _CURRENT.get()
        frame = call.frame if call is not None and call.module is self else None
        if frame is not None and call.folds(frame, result.bind(args, kwargs)):  # type: ignore[union-attr]
            return _DEFERRED if call.defers else call.fold_in_place(frame)  # type: ignore[union-attr]
        return cls._process_execution_result(self, *args, **kwargs)

    def _execute_code(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _CURRENT.get()
        frame = call.frame if call is not None and call.module is self else None
        if frame is not None and frame.skip is not _NO_RESULT:
            return frame.skip
        return cls._execute_code(self, *args, **kwargs)

    def _extract_fallback(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _current(self)
        if call is None:
            return cls._extract_fallback(self, *args, **kwargs)
        call.forced_extract = True
        if not call.wants(Stage.EXTRACT):
            return cls._extract_fallback(self, *args, **kwargs)
        bound = seams.extract.bind(args, kwargs)

        def terminal(c: ExtractContext) -> ExtractContext:
            if c.prediction is None:
                bound["history"], bound["variables"] = c.history, c.variables
                c.prediction = cls._extract_fallback(self, **bound)
            return c

        ctx = call.ctx(ExtractContext, history=bound["history"], variables=bound["variables"], prediction=None)
        return _extracted(call.plan.fire(ctx, self, terminal))

    async def _aextract_fallback(self: Any, *args: Any, **kwargs: Any) -> Any:
        call = _current(self)
        if call is None:
            return await cls._aextract_fallback(self, *args, **kwargs)
        call.forced_extract = True
        if not call.wants(Stage.EXTRACT):
            return await cls._aextract_fallback(self, *args, **kwargs)
        bound = seams.aextract.bind(args, kwargs)

        async def terminal(c: ExtractContext) -> ExtractContext:
            if c.prediction is None:
                bound["history"], bound["variables"] = c.history, c.variables
                c.prediction = await cls._aextract_fallback(self, **bound)
            return c

        ctx = call.ctx(ExtractContext, history=bound["history"], variables=bound["variables"], prediction=None)
        return _extracted(await call.plan.afire(ctx, self, terminal))

    def _prepare_execution_tools(self: Any, *args: Any, **kwargs: Any) -> Any:
        tools = cls._prepare_execution_tools(self, *args, **kwargs)
        call = _current(self)
        if call is None or not call.wants(Stage.TOOL_CALL):
            return tools
        return {name: call.wrap_tool(name, fn) for name, fn in tools.items()}

    def __deepcopy__(self: Any, memo: dict[int, Any]) -> Any:
        """A deep copy carries its own instrumentation: same middleware and taps, its own registrations, runs and
        signal sender; nothing it does reaches the original's receivers or ``run.state``."""
        base: Any = _base_of(type(self))
        new = base.__new__(base)
        memo[id(self)] = new
        state = {k: copy.deepcopy(v, memo) for k, v in self.__getstate__().items() if k != _ATTR}
        new.__setstate__(state)
        events = self.__dict__.get(_ATTR)
        if events is not None:
            clone = memo.get(id(events))
            if clone is None:
                clone = memo[id(events)] = events._clone()
            attach(new, clone)
        return new

    namespace: dict[str, Any] = {
        "forward": forward,
        "aforward": aforward,
        "_execute_iteration": _execute_iteration,
        "_aexecute_iteration": _aexecute_iteration,
        "_process_execution_result": _process_execution_result,
        "_extract_fallback": _extract_fallback,
        "_aextract_fallback": _aextract_fallback,
        "_prepare_execution_tools": _prepare_execution_tools,
        "__deepcopy__": __deepcopy__,
        "__reduce_ex__": _reduce_to_base,
        "generate_action": _ActionSeam(),
    }
    if seams.has_execute_code:
        namespace["_execute_code"] = _execute_code
    for name, fn in namespace.items():
        original = getattr(cls, name, None)
        if original is not None and name not in ("__deepcopy__", "__reduce_ex__", "generate_action"):
            functools.update_wrapper(fn, original)
    namespace.update({_BASE: cls, "__module__": cls.__module__, "__qualname__": cls.__qualname__})
    if _walks_the_stack(cls):
        namespace["__getattribute__"] = _getattribute_without_stack_walk
    return type(cls)(cls.__name__, (cls,), namespace)


def _walks_the_stack(cls: Any) -> bool:
    """DSPy before 3.3 calls ``inspect.stack()`` on every ``module.forward`` lookup, to warn about direct calls. That
    reads the source line of every frame on the stack, once per iteration for ``generate_action``: each frame a
    seam adds costs tens of microseconds per iteration there. DSPy 3.3's check looks at the caller's frame only."""
    try:
        return "inspect.stack(" in inspect.getsource(cls.__getattribute__)
    except (OSError, TypeError):  # a slot wrapper (object's own) or no source shipped
        return False


def _getattribute_without_stack_walk(self: Any, name: str) -> Any:
    """DSPy 3.3+'s version of that check: the same warning, from the caller's frame alone."""
    attr = object.__getattribute__(self, name)
    if name == "forward" and callable(attr) and sys._getframe(1).f_code.co_name != "__call__":
        logging.getLogger("dspy.primitives.module").warning(
            f"Calling module.forward(...) on {type(self).__name__} directly is discouraged. "
            "Please use module(...) instead."
        )
    return attr


def _extracted(ctx: ExtractContext) -> Prediction:
    if ctx.prediction is None:
        raise StageError("extract: the middleware chain returned without a prediction (call next(ctx) or set one)")
    return ctx.prediction


class _Acting:
    """``generate_action`` as the loop sees it until the iteration's action is in: calls go to the real predictor
    (``__call__`` / ``forward`` in sync loops, ``acall`` / ``aforward`` in async ones), then record the action and
    fire pre_execution on it. Everything else, and any error, is the predictor's own: a loop that works bare works
    the same, whatever the predictor is (a ``dspy.Predict``, another module, a plain callable)."""

    __slots__ = ("_call", "_frame", "_predictor")

    def __init__(self, predictor: Any, call: _Call, frame: _Frame) -> None:
        self._predictor, self._call, self._frame = predictor, call, frame

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._acted(self._predictor(*args, **kwargs))

    def _acted(self, action: Any) -> Any:
        call, frame = self._call, self._frame
        if not call.acted(frame, action):
            return action
        return call.apply_pre_execution(
            call.plan.fire(call.pre_execution_ctx(frame, action), call.module), frame, action
        )

    async def _aacted(self, action: Any) -> Any:
        call, frame = self._call, self._frame
        if not call.acted(frame, action):
            return action
        ctx = await call.plan.afire(call.pre_execution_ctx(frame, action), call.module)
        return call.apply_pre_execution(ctx, frame, action)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._predictor, name)  # a missing acall fails here as it fails bare
        if name in ("acall", "aforward") and callable(attr):

            async def acted(*args: Any, **kwargs: Any) -> Any:
                return await self._aacted(await attr(*args, **kwargs))

            return acted
        if name == "forward" and callable(attr):
            return lambda *args, **kwargs: self._acted(attr(*args, **kwargs))
        return attr

    def __repr__(self) -> str:
        return repr(self._predictor)


class _ActionSeam:
    """``generate_action`` of an instrumented RLM class: a data descriptor over the instance's own attribute, so
    that reading it during an iteration yields the :class:`_Acting` stand-in, while assigning, deleting and every
    other read (``named_predictors``, pickling, copies) see the real predictor in the instance's ``__dict__``."""

    def __get__(self, rlm: Any, owner: Any = None) -> Any:
        if rlm is None:
            return self
        try:
            predictor = rlm.__dict__["generate_action"]
        except KeyError:
            raise AttributeError(f"'{type(rlm).__name__}' object has no attribute 'generate_action'") from None
        call = _CURRENT.get()
        if call is None or call.module is not rlm or call.frame is None:
            return predictor
        return call.acting(call.frame, predictor)

    def __set__(self, rlm: Any, value: Any) -> None:
        rlm.__dict__["generate_action"] = value

    def __delete__(self, rlm: Any) -> None:
        try:
            del rlm.__dict__["generate_action"]
        except KeyError:
            raise AttributeError("generate_action") from None


# -- building an RLM the same way on every version ------------------------------------------------------------


class RLMConstructor:
    """How one RLM class's constructor takes the iteration limit, the interpreter and the tools.

    :meth:`arguments` translates the DSPy 3.3+ arguments (``max_iters``, ``interpreter_factory``, ``tools`` as a
    list) into what this class takes, and :meth:`finish` completes a freshly constructed instance, so that an RLM
    built this way behaves the same on every supported release: before 3.3 the constructor takes
    ``max_iterations`` and one ``interpreter`` that every call shares and nobody shuts down, so the instance is
    given a fresh interpreter from the factory per call, shut down when the call ends (as 3.3+ do).
    """

    def __init__(self, cls: Any) -> None:
        params = inspect.signature(cls.__init__).parameters
        limit = next((name for name in ("max_iters", "max_iterations") if name in params), None)
        if limit is None:
            raise _unsupported(cls, "__init__", "takes neither max_iters nor max_iterations")
        self.limit: str = limit
        self.takes_factory = "interpreter_factory" in params
        if not self.takes_factory:
            if "interpreter" not in params:
                raise _unsupported(cls, "__init__", "takes neither interpreter_factory nor interpreter")
            _Params(cls, "_interpreter_context", ("execution_tools",))
            _Params(cls, "_inject_execution_context", ("interpreter", "execution_tools"))
        # 3.1.2 takes {name: function}; 3.1.3+ take a list of functions or dspy.Tool (normalised by _normalize_tools).
        self.tools_as_dict = not callable(getattr(cls, "_normalize_tools", None))

    def arguments(
        self,
        *,
        max_iters: int | None = None,
        interpreter_factory: Callable[[], Any] | None = None,
        tools: Iterable[Any] | None = None,
        **options: Any,
    ) -> tuple[dict[str, Any], Callable[[], Any] | None]:
        """This class's constructor keywords, and the factory :meth:`finish` must install (``None``: nothing to)."""
        kwargs = dict(options)
        if max_iters is not None:
            kwargs[self.limit] = max_iters
        if tools is not None:
            kwargs["tools"] = _tools_by_name(tools) if self.tools_as_dict else list(tools)
        if interpreter_factory is None:
            return kwargs, None
        if self.takes_factory:  # DSPy validates it
            kwargs["interpreter_factory"] = interpreter_factory
            return kwargs, None
        is_interpreter = not isinstance(interpreter_factory, type) and isinstance(interpreter_factory, CodeInterpreter)
        if is_interpreter or not callable(interpreter_factory):
            raise TypeError(
                "interpreter_factory must be a zero-argument callable that creates a CodeInterpreter (one per call), "
                f"not {'an interpreter' if is_interpreter else 'a'} {type(interpreter_factory).__name__}"
            )
        return kwargs, interpreter_factory

    @staticmethod
    def finish(rlm: Any, factory: Callable[[], Any] | None) -> None:
        """Make ``rlm`` (before 3.3) create its interpreter per call with ``factory``; a no-op for ``None``."""
        if factory is not None:
            rlm.__dict__["_interpreter_context"] = _InterpreterPerCall(rlm, factory)


@functools.cache
def constructor_of(cls: Any) -> RLMConstructor:
    """The :class:`RLMConstructor` of an RLM class (detected once per class)."""
    return RLMConstructor(cls)


def _tools_by_name(tools: Iterable[Any]) -> dict[str, Callable[..., Any]]:
    found: dict[str, Callable[..., Any]] = {}
    for tool in tools:
        if isinstance(tool, dspy.Tool):
            name, fn = tool.name, tool.func
        elif callable(tool):
            name, fn = getattr(tool, "__name__", type(tool).__name__), tool
        else:
            raise TypeError(f"Tool {tool!r} must be callable, got {type(tool).__name__}")
        if name in found:
            raise ValueError(f"Duplicate tool name '{name}'")
        found[name] = fn
    return found


class _InterpreterPerCall:
    """``_interpreter_context`` of one RLM before DSPy 3.3: a fresh interpreter from ``factory`` for each call,
    given the call's tools, and shut down when the call ends, failed and cancelled calls included."""

    def __init__(self, rlm: Any, factory: Callable[[], Any]) -> None:
        self.rlm, self.factory = rlm, factory

    @contextlib.contextmanager
    def __call__(self, execution_tools: dict[str, Callable[..., Any]]) -> Iterator[Any]:
        interpreter = self.factory()
        try:
            self.rlm._inject_execution_context(interpreter, execution_tools)
            yield interpreter
        finally:
            interpreter.shutdown()


def batched_queries_keep_context(cls: Any) -> bool:
    """Whether ``llm_query_batched`` of this RLM class runs its prompts with the caller's context variables.

    DSPy 3.3+ do (``contextvars.copy_context()``). Before, its worker threads see neither ``dspy.context(...)`` nor
    the rlm-events run, so their sub-LM calls cannot be attributed to the run (a DSPy limitation we do not patch
    around: the executor is module-global in DSPy, and patching it would change RLMs we do not instrument).
    """
    return _calls(cls, "_make_llm_tools", "copy_context") is not False


def iteration_limit(rlm: Any) -> int | None:
    """The iteration limit of ``rlm`` (``max_iters``; ``max_iterations`` before DSPy 3.3), or ``None``."""
    for name in ("max_iters", "max_iterations"):
        value = getattr(rlm, name, None)
        if isinstance(value, int):
            return value
    return None


# -- attach / detach ------------------------------------------------------------------------------------------


def instrumentation_of(rlm: Any) -> Instrumentation | None:
    return rlm.__dict__.get(_ATTR)


def attach(rlm: Any, events: Instrumentation) -> None:
    """Instrument ``rlm`` with ``events`` (``rlm`` must not be instrumented yet)."""
    original: Any = type(rlm)
    cls = _instrumented_rlm_class(original)
    rlm.__dict__[_ATTR] = events
    rlm.__class__ = cls
    events._attach(rlm)


def detach(rlm: Any) -> None:
    """Exactly undo :func:`attach`; a no-op on an RLM that is not instrumented."""
    events = rlm.__dict__.pop(_ATTR, None)
    if _BASE in type(rlm).__dict__:
        rlm.__class__ = _base_of(type(rlm))
    if events is not None:
        events._detach(rlm)
