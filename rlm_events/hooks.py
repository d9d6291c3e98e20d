"""The ``dspy-rlm-hooks`` API on rlm-events: switch by changing one import line.

>>> from rlm_events.hooks import enable_rlm_hooks, disable_rlm_hooks, PreIterationOutput

Each hook becomes one ``(ctx, next)`` middleware on its stage of :func:`rlm_events.instrument`'s chain, so hooks
run in registration order among other middleware, signals and taps on the same RLM. A hook is called with the
positional arguments ``dspy-rlm-hooks`` documents and returns its output model or ``None`` (change nothing):

==================  ======================================================  ==========================
hook                called as                                                returns
==================  ======================================================  ==========================
``pre_iteration``   ``(iteration, variables, history, input_args)``          :class:`PreIterationOutput`
``pre_execution``   ``(iteration, code, variables, history, input_args)``    :class:`PreExecutionOutput`
``post_execution``  ``(iteration, code, result, variables, history,          :class:`PostExecutionOutput`
                    input_args)``
``post_iteration``  ``(iteration, pred, code, result, history)``             :class:`PostIterationOutput`
==================  ======================================================  ==========================

``iteration`` is 0-based. ``variables`` is the iteration's ``REPLVariable`` list; in the execution hooks
``input_args`` also holds the ``extra_vars`` injected for this iteration (as in ``dspy-rlm-hooks``). ``pred`` is the
LM's action (``reasoning``, ``code``). As in ``dspy-rlm-hooks``, ``post_iteration`` is not called for the iteration
whose ``SUBMIT`` succeeded: there is no next iteration to steer.

An ``async def`` hook becomes an ``async def`` middleware: awaited on the caller's loop in ``aforward``, run on
rlm-events' private loop in ``forward`` (the caller's loop is never nested). A ``def`` hook that returns an awaitable
has it run on that private loop.

The output models are those of ``dspy-rlm-hooks`` 0.1.15 (``PreIterationOutput`` with ``python_code``,
``persistent_python_code`` and ``prompt_context``) and reject unknown fields, naming the field and the ones that
exist. When MLflow can be imported, :func:`enable_rlm_hooks` also installs
``rlm_events.taps.mlflow.MlflowTap`` on the RLM's instrumentation (once; :func:`disable_rlm_hooks` removes it), as
``dspy-rlm-hooks`` records hook spans; :func:`enable_rlm_hooks_with_tracing` does the same but raises
``ImportError`` without MLflow.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import logging
import sys
import weakref
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Union

import dspy
from dspy import Prediction
from dspy.primitives.repl_types import REPLHistory, REPLVariable
from pydantic import BaseModel, ConfigDict, Field, model_validator

from middleware import is_async_callable, middleware_name, run_sync

from .context import PostExecutionContext, PostIterationContext, PreExecutionContext, PreIterationContext
from .instrumentation import Instrumentation, instrument, instrumentation_of, uninstrument
from .signals import BY_STAGE
from .stages import Stage

# -- output models (field names and defaults as in dspy-rlm-hooks 0.1.15) ------------------------------------


def _unknown_fields(model: type[BaseModel], unknown: list[str]) -> str:
    fields = list(model.model_fields)
    described = []
    for name in unknown:
        close = difflib.get_close_matches(name, fields, n=1)
        described.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    plural = "s" if len(unknown) > 1 else ""
    return f"{model.__name__} has no field{plural} {', '.join(described)}; its fields are: {', '.join(fields)}"


class _Output(BaseModel):
    """An output model: unknown fields are an error naming them and the fields that exist (not ignored)."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _known_fields_only(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [str(k) for k in data if k not in cls.model_fields]
            if unknown:
                raise ValueError(_unknown_fields(cls, unknown))
        return data


class PreIterationOutput(_Output):
    """What a ``pre_iteration`` hook changes before the LM writes this iteration's code.

    * ``extra_vars`` are bound in the REPL for this iteration's code (and listed among the variables the LM sees).
    * ``python_code`` is prepended to this iteration's code only (after ``pre_execution_hook`` saw the LM's code),
      so it runs with it and the history records it with it; return it again to have it in a later iteration.
    * ``persistent_python_code`` replaces the call's persistent prelude: ``None`` keeps it, a string replaces it,
      ``""`` clears it. The prelude runs before every execution of the call from this iteration on; the history
      does not record it.
    * ``prompt_context`` is shown to the LM in this iteration's action prompt only, after the variables'
      descriptions; it is not executed.
    """

    extra_vars: dict[str, Any] = Field(default_factory=dict)
    python_code: str = ""
    persistent_python_code: str | None = None
    prompt_context: str = ""


class PreExecutionOutput(_Output):
    """The code to run instead of the LM's; it is also what the history records."""

    code: str


class PostExecutionOutput(_Output):
    """The execution result to record instead of the raw one (output text, ``[Error] …`` text or ``FinalOutput``)."""

    result: Any


class PostIterationOutput(_Output):
    """The history the next iteration sees; ``stop=True`` ends the loop through DSPy's extract fallback."""

    history: REPLHistory
    stop: bool = False


PreIterationHook = Callable[
    [int, list[REPLVariable], REPLHistory, dict[str, Any]],
    Union[PreIterationOutput, Awaitable[Union[PreIterationOutput, None]], None],
]
PreExecutionHook = Callable[
    [int, str, list[REPLVariable], REPLHistory, dict[str, Any]],
    Union[PreExecutionOutput, Awaitable[Union[PreExecutionOutput, None]], None],
]
PostExecutionHook = Callable[
    [int, str, Any, list[REPLVariable], REPLHistory, dict[str, Any]],
    Union[PostExecutionOutput, Awaitable[Union[PostExecutionOutput, None]], None],
]
PostIterationHook = Callable[
    [int, Prediction, str, Any, REPLHistory],
    Union[PostIterationOutput, Awaitable[Union[PostIterationOutput, None]], None],
]
RLMHook = Union[PreIterationHook, PreExecutionHook, PostExecutionHook, PostIterationHook]

# -- how each hook maps onto its stage's context ------------------------------------------------------------

# run.state key of what the pre_iteration chain left for this iteration, which the execution hooks are given.
_SEEN = "rlm_events.hooks:iteration"


@dataclass(frozen=True)
class _Seen:
    iteration: int | None
    variables: list[REPLVariable]
    input_args: dict[str, Any]


def _seen(ctx: PreExecutionContext | PostExecutionContext) -> _Seen:
    seen = ctx.run.state.get(_SEEN)
    if isinstance(seen, _Seen) and seen.iteration == ctx.iteration:
        return seen
    # Another middleware short-circuited pre_iteration before the hooks' recorder ran.
    return _Seen(ctx.iteration, [], dict(ctx.input_args))


def _pre_iteration_args(ctx: PreIterationContext) -> tuple[Any, ...]:
    return (ctx.iteration, list(ctx.variables), ctx.history, dict(ctx.input_args))


def _pre_iteration_apply(ctx: PreIterationContext, out: PreIterationOutput) -> None:
    if out.extra_vars:
        ctx.extra_vars = {**ctx.extra_vars, **out.extra_vars}
    if out.python_code:
        ctx.python_code = "\n".join(code for code in (ctx.python_code, out.python_code) if code)
    if out.persistent_python_code is not None:
        ctx.persistent_python_code = out.persistent_python_code
    if out.prompt_context:
        ctx.prompt_context = "\n\n".join(text for text in (ctx.prompt_context, out.prompt_context) if text)


def _remember_iteration(ctx: PreIterationContext) -> None:
    ctx.run.state[_SEEN] = _Seen(ctx.iteration, list(ctx.variables), {**ctx.input_args, **ctx.extra_vars})


def _pre_execution_args(ctx: PreExecutionContext) -> tuple[Any, ...]:
    seen = _seen(ctx)
    return (ctx.iteration, ctx.code, list(seen.variables), ctx.history, dict(seen.input_args))


def _pre_execution_apply(ctx: PreExecutionContext, out: PreExecutionOutput) -> None:
    ctx.code = out.code


def _post_execution_args(ctx: PostExecutionContext) -> tuple[Any, ...]:
    seen = _seen(ctx)
    return (ctx.iteration, ctx.code, ctx.result, list(seen.variables), ctx.history, dict(seen.input_args))


def _post_execution_apply(ctx: PostExecutionContext, out: PostExecutionOutput) -> None:
    ctx.result = out.result


def _post_iteration_args(ctx: PostIterationContext) -> tuple[Any, ...]:
    return (ctx.iteration, ctx.action, ctx.code, ctx.result, ctx.history)


def _post_iteration_apply(ctx: PostIterationContext, out: PostIterationOutput) -> None:
    ctx.history = out.history
    if out.stop:  # a hook's default stop=False must not cancel a stop another middleware asked for
        ctx.stop = True


def _always(ctx: Any) -> bool:
    return True


def _iteration_goes_on(ctx: PostIterationContext) -> bool:
    return ctx.prediction is None


def _nothing(ctx: Any) -> None:
    return None


@dataclass(frozen=True)
class _Kind:
    """One of the four hooks: its stage, keyword, parameters, output model and how it folds into the context."""

    stage: Stage
    keyword: str
    parameters: tuple[str, ...]
    output: type[BaseModel]
    arguments: Callable[[Any], tuple[Any, ...]]
    apply: Callable[[Any, Any], None]
    applies: Callable[[Any], bool] = _always
    after: Callable[[Any], None] = _nothing


_KINDS: tuple[_Kind, ...] = (
    _Kind(
        Stage.PRE_ITERATION,
        "pre_iteration_hook",
        ("iteration", "variables", "history", "input_args"),
        PreIterationOutput,
        _pre_iteration_args,
        _pre_iteration_apply,
        after=_remember_iteration,
    ),
    _Kind(
        Stage.PRE_EXECUTION,
        "pre_execution_hook",
        ("iteration", "code", "variables", "history", "input_args"),
        PreExecutionOutput,
        _pre_execution_args,
        _pre_execution_apply,
    ),
    _Kind(
        Stage.POST_EXECUTION,
        "post_execution_hook",
        ("iteration", "code", "result", "variables", "history", "input_args"),
        PostExecutionOutput,
        _post_execution_args,
        _post_execution_apply,
    ),
    _Kind(
        Stage.POST_ITERATION,
        "post_iteration_hook",
        ("iteration", "pred", "code", "result", "history"),
        PostIterationOutput,
        _post_iteration_args,
        _post_iteration_apply,
        applies=_iteration_goes_on,
    ),
)

# -- hooks as middleware --------------------------------------------------------------------------------------


class _HookMiddleware:
    """A hook (or, for pre_iteration without a hook, only the recorder the execution hooks need) as middleware.

    Being an instance of this class is what marks the middleware :func:`disable_rlm_hooks` removes, so the hooks
    of an RLM are found in its own plan, deep copies included (they share their plan's middleware).
    ``owns_instrumentation`` says :func:`enable_rlm_hooks` created the instrumentation.
    """

    __call__: Callable[[Any, Any], Any]  # sync or async, by subclass

    def __init__(self, kind: _Kind, hook: Callable[..., Any] | None, owns_instrumentation: bool) -> None:
        self.kind, self.hook, self.owns_instrumentation = kind, hook, owns_instrumentation
        self.tap: Any = None  # the MlflowTap enable_rlm_hooks installed with these hooks, if any
        described = middleware_name(hook) if hook is not None else "(records variables)"
        # Middleware errors and notes name the middleware by __module__/__qualname__: name the user's hook there.
        self.__module__ = __name__
        self.__qualname__ = f"{kind.keyword}[{described}]"

    def __repr__(self) -> str:
        return f"<{self.__qualname__}>"

    def _hook_for(self, ctx: Any) -> Callable[..., Any] | None:
        """The hook to call at this ``ctx``, if any (the recorder has none; post_iteration skips final ones)."""
        return self.hook if self.hook is not None and self.kind.applies(ctx) else None

    def _checked(self, out: Any) -> BaseModel | None:
        if out is None or isinstance(out, self.kind.output):
            return out
        raise TypeError(
            f"{self.kind.keyword} {middleware_name(self.hook)} returned {type(out).__name__}; "
            f"it must return {self.kind.output.__name__} or None"
        )

    def _apply(self, ctx: Any, out: Any) -> None:
        checked = self._checked(out)
        if checked is not None:
            self.kind.apply(ctx, checked)


class _SyncHookMiddleware(_HookMiddleware):
    def __call__(self, ctx: Any, next: Callable[[Any], Any]) -> Any:
        hook = self._hook_for(ctx)
        if hook is not None:
            out = hook(*self.kind.arguments(ctx))
            if inspect.isawaitable(out):  # "return a coroutine and the system handles it"
                out = run_sync(out)
            self._apply(ctx, out)
        ctx = next(ctx)
        self.kind.after(ctx)
        return ctx


class _AsyncHookMiddleware(_HookMiddleware):
    async def __call__(self, ctx: Any, next: Callable[[Any], Awaitable[Any]]) -> Any:
        hook = self._hook_for(ctx)
        if hook is not None:
            out = hook(*self.kind.arguments(ctx))
            if inspect.isawaitable(out):
                out = await out
            self._apply(ctx, out)
        ctx = await next(ctx)
        self.kind.after(ctx)
        return ctx


def _check_hook(kind: _Kind, hook: Any) -> None:
    if not callable(hook):
        raise TypeError(f"{kind.keyword} must be callable or None, got {type(hook).__name__}: {hook!r}")
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):  # some builtins cannot be inspected; accept them
        return
    try:
        signature.bind(*kind.parameters)
    except TypeError:
        raise TypeError(
            f"{kind.keyword} {middleware_name(hook)} must accept ({', '.join(kind.parameters)}) positionally; "
            f"its signature is {signature}"
        ) from None


def _adapt(kind: _Kind, hook: Callable[..., Any] | None, owns_instrumentation: bool) -> _HookMiddleware:
    cls = _AsyncHookMiddleware if hook is not None and is_async_callable(hook) else _SyncHookMiddleware
    return cls(kind, hook, owns_instrumentation)


# Instrumentations enable_rlm_hooks created, remembered even while they hold no hooks (disable kept one for a
# receiver), so a later disable still knows it may uninstrument. Weak: it never keeps an instrumentation alive.
_CREATED_BY_HOOKS: weakref.WeakSet[Instrumentation] = weakref.WeakSet()


def _owned(events: Instrumentation, hooks: list[_HookMiddleware]) -> bool:
    # The middleware flag covers deep copies, whose cloned instrumentation shares the hooks' middleware.
    return events in _CREATED_BY_HOOKS or any(mw.owns_instrumentation for mw in hooks)


def _hooks_on(events: Instrumentation) -> Iterator[_HookMiddleware]:
    for stage in Stage:
        for mw in events.plan.chains[stage]:
            if isinstance(mw, _HookMiddleware):
                yield mw


def _require_rlm(rlm: Any, function: str) -> None:
    if not isinstance(rlm, dspy.RLM):
        raise TypeError(f"{function}() expects a dspy.RLM instance, got {type(rlm).__name__}: {rlm!r}")


# -- MLflow -----------------------------------------------------------------------------------------------------

_MLFLOW_TAP_MODULE = "rlm_events.taps.mlflow"
_MLFLOW_MISSING = (
    'enable_rlm_hooks_with_tracing() needs MLflow: pip install "rlm-events[mlflow]" '
    "(or use enable_rlm_hooks(), which records hook spans only when MLflow is installed)"
)


def _mlflow_importable() -> bool:
    """Whether ``import mlflow`` can succeed, without importing it (``sys.modules["mlflow"] = None`` blocks it)."""
    if "mlflow" in sys.modules:
        return sys.modules["mlflow"] is not None
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):
        return False


def _new_mlflow_tap(*, required: bool) -> Any:
    """A new ``MlflowTap()``; ``None`` when MLflow or the tap cannot be imported, unless ``required`` (then
    ``ImportError``)."""
    if not _mlflow_importable():
        if required:
            raise ImportError(_MLFLOW_MISSING)
        return None
    try:
        return importlib.import_module(_MLFLOW_TAP_MODULE).MlflowTap()
    except ImportError as exc:
        if required:
            raise ImportError(f"{_MLFLOW_MISSING}: {exc}") from exc
        logging.getLogger("rlm_events").debug("rlm-events: hook spans not recorded in MLflow: %s", exc)
        return None


def _install_tap(tap: Any, events: Instrumentation, *, required: bool) -> Any:
    try:
        tap.install(events)
    except ImportError as exc:  # e.g. an MLflow without the tracing API
        if required:
            raise ImportError(f"{_MLFLOW_MISSING}: {exc}") from exc
        logging.getLogger("rlm_events").debug("rlm-events: hook spans not recorded in MLflow: %s", exc)
        return None
    return tap


def _uninstall_tap(tap: Any, events: Instrumentation) -> None:
    uninstall = getattr(tap, "uninstall", None)
    if callable(uninstall):
        uninstall(events)


# -- public API -----------------------------------------------------------------------------------------------


def enable_rlm_hooks(
    rlm: dspy.RLM,
    *,
    pre_iteration_hook: PreIterationHook | None = None,
    pre_execution_hook: PreExecutionHook | None = None,
    post_execution_hook: PostExecutionHook | None = None,
    post_iteration_hook: PostIterationHook | None = None,
) -> None:
    """Run these hooks in every iteration of ``rlm`` (this instance only), replacing hooks enabled before.

    Each hook is registered as a middleware on its stage of ``rlm_events.instrument(rlm)`` (innermost so far), so
    it coexists with other middleware, signal receivers and taps. Hooks are checked now: a hook that is not
    callable with its documented positional arguments raises ``TypeError`` naming it; so does ``rlm`` not being a
    ``dspy.RLM``. At run time, a hook returning anything but its output model or ``None`` raises ``TypeError``
    naming the hook and the model; whatever a hook raises fails the call, as in ``dspy-rlm-hooks``.
    Calls already running keep the hooks they started with; the old hooks are swapped for the new ones in one change,
    so a call starting meanwhile has either set, whole.

    When MLflow can be imported, ``rlm_events.taps.mlflow.MlflowTap()`` is installed too (once, kept when hooks are
    enabled again, removed by :func:`disable_rlm_hooks`), so the stages the hooks act on are recorded as MLflow
    spans; without MLflow the hooks run the same, untraced.
    """
    _enable(rlm, "enable_rlm_hooks", pre_iteration_hook, pre_execution_hook, post_execution_hook, post_iteration_hook)


def enable_rlm_hooks_with_tracing(
    rlm: dspy.RLM,
    *,
    pre_iteration_hook: PreIterationHook | None = None,
    pre_execution_hook: PreExecutionHook | None = None,
    post_execution_hook: PostExecutionHook | None = None,
    post_iteration_hook: PostIterationHook | None = None,
) -> None:
    """:func:`enable_rlm_hooks`, for callers who want MLflow spans or an error: raises ``ImportError`` (naming
    ``pip install "rlm-events[mlflow]"``) before changing anything when MLflow or the MLflow tap cannot be imported."""
    hooks = (pre_iteration_hook, pre_execution_hook, post_execution_hook, post_iteration_hook)
    _enable(rlm, "enable_rlm_hooks_with_tracing", *hooks, tracing=True)


def _enable(
    rlm: dspy.RLM,
    function: str,
    pre_iteration_hook: PreIterationHook | None,
    pre_execution_hook: PreExecutionHook | None,
    post_execution_hook: PostExecutionHook | None,
    post_iteration_hook: PostIterationHook | None,
    *,
    tracing: bool = False,
) -> None:
    _require_rlm(rlm, function)
    hooks = (pre_iteration_hook, pre_execution_hook, post_execution_hook, post_iteration_hook)
    given = list(zip(_KINDS, hooks, strict=True))
    for kind, hook in given:
        if hook is not None:
            _check_hook(kind, hook)
    if all(hook is None for _, hook in given):
        disable_rlm_hooks(rlm)
        return
    previous = instrumentation_of(rlm)
    previous_hooks = list(_hooks_on(previous)) if previous is not None else []
    tap = next((mw.tap for mw in previous_hooks if mw.tap is not None), None)
    new_tap = _new_mlflow_tap(required=tracing) if tap is None else None  # ImportError before any change
    owns = previous is None or _owned(previous, previous_hooks)
    events = instrument(rlm)
    if owns:
        _CREATED_BY_HOOKS.add(events)
    needs_variables = pre_execution_hook is not None or post_execution_hook is not None
    # The execution hooks are given the iteration's variables, which only pre_iteration sees: record them.
    new = [
        (kind.stage, _adapt(kind, hook, owns))
        for kind, hook in given
        if hook is not None or (kind.stage is Stage.PRE_ITERATION and needs_variables)
    ]
    if new_tap is not None:
        tap = _install_tap(new_tap, events, required=tracing)
    for _, mw in new:
        mw.tap = tap
    events.replace(previous_hooks, new)  # one change: a call starting meanwhile has the old hooks or the new


def disable_rlm_hooks(rlm: dspy.RLM) -> None:
    """Remove the hooks :func:`enable_rlm_hooks` registered on ``rlm`` (and the MLflow tap it installed with them);
    other middleware, taps and receivers stay.

    When :func:`enable_rlm_hooks` created the instrumentation and nothing else uses it (no middleware, no tap, no
    signal receiver connected for this RLM), ``rlm`` is uninstrumented: its class and ``__dict__`` are exactly as
    before. A no-op on an RLM without hooks. Raises ``TypeError`` if ``rlm`` is not a ``dspy.RLM``.
    """
    _require_rlm(rlm, "disable_rlm_hooks")
    events = instrumentation_of(rlm)
    if events is None:
        return
    hooks = list(_hooks_on(events))
    events.replace(hooks, [])
    for tap in {id(mw.tap): mw.tap for mw in hooks if mw.tap is not None}.values():
        _uninstall_tap(tap, events)
    if not _owned(events, hooks):
        return
    _CREATED_BY_HOOKS.add(events)
    if not _in_use(events, rlm):
        uninstrument(rlm)
        _CREATED_BY_HOOKS.discard(events)


def _in_use(events: Instrumentation, rlm: dspy.RLM) -> bool:
    plan = events.plan
    if any(plan.chains[stage] for stage in Stage) or plan.all_taps:
        return True
    # Receivers connected for this RLM only would go silent if it were uninstrumented. Receivers connected for
    # any sender are not counted: they heard nothing from this RLM before the hooks either.
    anonymous = object()
    for signal in BY_STAGE.values():
        for_any = {id(r) for r in signal.receivers_for(anonymous)}
        if any(id(r) not in for_any for r in signal.receivers_for(rlm)):
            return True
    return False


__all__ = [
    "PostExecutionHook",
    "PostExecutionOutput",
    "PostIterationHook",
    "PostIterationOutput",
    "PreExecutionHook",
    "PreExecutionOutput",
    "PreIterationHook",
    "PreIterationOutput",
    "RLMHook",
    "disable_rlm_hooks",
    "enable_rlm_hooks",
    "enable_rlm_hooks_with_tracing",
]
