"""How each hook maps onto its stage's context: the arguments it is called with, and how its output is applied."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dspy.primitives.repl_types import REPLVariable
from pydantic import BaseModel

from ..context import PostExecutionContext, PostIterationContext, PreExecutionContext, PreIterationContext
from ..stages import Stage
from .outputs import PostExecutionOutput, PostIterationOutput, PreExecutionOutput, PreIterationOutput

# -- how each hook maps onto its stage's context ------------------------------------------------------------

# run.state key of what the pre_iteration chain left for this iteration, which the execution hooks are given.
_SEEN = "rlm_events.hooks:iteration"


class _Seen:
    """What the pre_iteration chain left for one iteration (a slotted class: built once per iteration)."""

    __slots__ = ("input_args", "iteration", "variables")

    def __init__(self, iteration: int | None, variables: list[REPLVariable], input_args: dict[str, Any]) -> None:
        self.iteration, self.variables, self.input_args = iteration, variables, input_args


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


def _assign(ctx: Any, field: str, value: Any) -> None:
    """Set `ctx.<field>`, unless a hook passed the value through (the same object): a context validates every
    assignment, and a pass-through hook should cost none."""
    if getattr(ctx, field) is not value:
        setattr(ctx, field, value)


def _pre_execution_apply(ctx: PreExecutionContext, out: PreExecutionOutput) -> None:
    _assign(ctx, "code", out.code)


def _post_execution_args(ctx: PostExecutionContext) -> tuple[Any, ...]:
    seen = _seen(ctx)
    return (ctx.iteration, ctx.code, ctx.result, list(seen.variables), ctx.history, dict(seen.input_args))


def _post_execution_apply(ctx: PostExecutionContext, out: PostExecutionOutput) -> None:
    _assign(ctx, "result", out.result)


def _post_iteration_args(ctx: PostIterationContext) -> tuple[Any, ...]:
    return (ctx.iteration, ctx.action, ctx.code, ctx.result, ctx.history)


def _post_iteration_apply(ctx: PostIterationContext, out: PostIterationOutput) -> None:
    _assign(ctx, "history", out.history)
    if out.stop:  # a hook's default stop=False must not cancel a stop another middleware asked for
        ctx.stop = True


def always(ctx: Any) -> bool:
    """A hook that applies at every context of its stage."""
    return True


def _iteration_goes_on(ctx: PostIterationContext) -> bool:
    return ctx.prediction is None


def nothing(ctx: Any) -> None:
    """Nothing to do after the rest of the chain."""
    return None


@dataclass(frozen=True)
class Kind:
    """One of the four hooks: its stage, keyword, parameters, output model and how it folds into the context."""

    stage: Stage
    keyword: str
    parameters: tuple[str, ...]
    output: type[BaseModel]
    arguments: Callable[[Any], tuple[Any, ...]]
    apply: Callable[[Any, Any], None]
    applies: Callable[[Any], bool] = always
    after: Callable[[Any], None] = nothing


KINDS: tuple[Kind, ...] = (
    Kind(
        Stage.PRE_ITERATION,
        "pre_iteration_hook",
        ("iteration", "variables", "history", "input_args"),
        PreIterationOutput,
        _pre_iteration_args,
        _pre_iteration_apply,
        after=_remember_iteration,
    ),
    Kind(
        Stage.PRE_EXECUTION,
        "pre_execution_hook",
        ("iteration", "code", "variables", "history", "input_args"),
        PreExecutionOutput,
        _pre_execution_args,
        _pre_execution_apply,
    ),
    Kind(
        Stage.POST_EXECUTION,
        "post_execution_hook",
        ("iteration", "code", "result", "variables", "history", "input_args"),
        PostExecutionOutput,
        _post_execution_args,
        _post_execution_apply,
    ),
    Kind(
        Stage.POST_ITERATION,
        "post_iteration_hook",
        ("iteration", "pred", "code", "result", "history"),
        PostIterationOutput,
        _post_iteration_args,
        _post_iteration_apply,
        applies=_iteration_goes_on,
    ),
)
"""The four hooks, in the order [`enable_rlm_hooks()`][rlm_events.hooks.enable_rlm_hooks] takes them."""
