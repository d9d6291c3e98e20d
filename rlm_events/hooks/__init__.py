"""The `dspy-rlm-hooks` API on rlm-events: switch by changing one import line.

```pycon
>>> from rlm_events.hooks import enable_rlm_hooks, disable_rlm_hooks, PreIterationOutput

```

Each hook becomes one `(ctx, next)` middleware on its stage of [`rlm_events.instrument()`][rlm_events.instrument]'s
chain, so hooks
run in registration order among other middleware, signals and taps on the same RLM. A hook is called with the
positional arguments `dspy-rlm-hooks` documents and returns its output model or `None` (change nothing):

| hook | called as | returns |
| --- | --- | --- |
| `pre_iteration` | `(iteration, variables, history, input_args)` | [`PreIterationOutput`][rlm_events.hooks.outputs.PreIterationOutput] |
| `pre_execution` | `(iteration, code, variables, history, input_args)` | [`PreExecutionOutput`][rlm_events.hooks.outputs.PreExecutionOutput] |
| `post_execution` | `(iteration, code, result, variables, history, input_args)` | [`PostExecutionOutput`][rlm_events.hooks.outputs.PostExecutionOutput] |
| `post_iteration` | `(iteration, pred, code, result, history)` | [`PostIterationOutput`][rlm_events.hooks.outputs.PostIterationOutput] |

`iteration` is 0-based. `variables` is the iteration's `REPLVariable` list; in the execution hooks
`input_args` also holds the `extra_vars` injected for this iteration (as in `dspy-rlm-hooks`). `pred` is the
LM's action (`reasoning`, `code`). As in `dspy-rlm-hooks`, `post_iteration` is not called for the iteration
whose `SUBMIT` succeeded: there is no next iteration to steer.

An `async def` hook becomes an `async def` middleware: awaited on the caller's loop in `aforward`, run on
rlm-events' private loop in `forward` (the caller's loop is never nested). A `def` hook that returns an awaitable
has it run on that private loop.

The output models are those of `dspy-rlm-hooks` 0.1.15 (`PreIterationOutput` with `python_code`,
`persistent_python_code` and `prompt_context`) and reject unknown fields, naming the field and the ones that
exist. When the user turned MLflow on (autologging, a tracking URI, an experiment or a run; see
`rlm_events.hooks.tracing`), [`enable_rlm_hooks()`][rlm_events.hooks.enable_rlm_hooks] also installs
`rlm_events.taps.mlflow.MlflowTap` on the
RLM's instrumentation (once; [`disable_rlm_hooks()`][rlm_events.hooks.disable_rlm_hooks] removes it) and records each
hook call as a
`rlm_hook/<hook>` span and each execution as `rlm/execute_code`, as `dspy-rlm-hooks` 0.1.15 names them;
`tracing=False` or `RLM_EVENTS_MLFLOW=0` turns that off,
[`enable_rlm_hooks_with_tracing()`][rlm_events.hooks.enable_rlm_hooks_with_tracing] (`tracing=True`)
always traces and raises `ImportError` without MLflow.
"""  # noqa: E501

from __future__ import annotations

import dspy

from ..instrumentation import instrumentation_of
from ..stages import Stage
from ._adapters import adapt, check_hook, hooks_on, require_rlm
from ._kinds import KINDS
from ._ownership import instrument_for_api, owned, release
from .outputs import (
    PostExecutionHook,
    PostExecutionOutput,
    PostIterationHook,
    PostIterationOutput,
    PreExecutionHook,
    PreExecutionOutput,
    PreIterationHook,
    PreIterationOutput,
    RLMHook,
)
from .speculation import Spec, SpecTool, disable_rlm_speculation, enable_rlm_speculation, speculative
from .tracing import (
    install_tap,
    mlflow_turned_on,
    new_mlflow_tap,
    turned_off_by_environment,
    uninstall_tap,
)

# -- public API -----------------------------------------------------------------------------------------------


def enable_rlm_hooks(
    rlm: dspy.RLM,
    *,
    pre_iteration_hook: PreIterationHook | None = None,
    pre_execution_hook: PreExecutionHook | None = None,
    post_execution_hook: PostExecutionHook | None = None,
    post_iteration_hook: PostIterationHook | None = None,
    tracing: bool | None = None,
) -> None:
    """Run these hooks in every iteration of `rlm` (this instance only), replacing hooks enabled before.

    Each hook is registered as a middleware on its stage of `rlm_events.instrument(rlm)` (innermost so far), so
    it coexists with other middleware, signal receivers and taps. Hooks are checked now: a hook that is not
    callable with its documented positional arguments raises `TypeError` naming it; so does `rlm` not being a
    `dspy.RLM`. At run time, a hook returning anything but its output model or `None` raises `TypeError`
    naming the hook and the model; whatever a hook raises fails the call, as in `dspy-rlm-hooks`.
    Calls already running keep the hooks they started with; the old hooks are swapped for the new ones in one change,
    so a call starting meanwhile has either set, whole.

    `tracing` says whether the hooks are traced in MLflow, with 0.1.15's span names (`rlm_hook/<hook>`,
    `rlm/execute_code`) inside the trace of `rlm_events.taps.mlflow.MlflowTap`: `None` (the default) when the
    user turned MLflow on — DSPy autologging, an explicit tracking URI, an experiment or an active run, checked now
    (`rlm_events.hooks.tracing.mlflow_turned_on()`) — unless `RLM_EVENTS_MLFLOW=0`; `False` never; `True`
    always, raising `ImportError` without MLflow (as
    [`enable_rlm_hooks_with_tracing()`][rlm_events.hooks.enable_rlm_hooks_with_tracing]). The tap is installed
    once, follows the latest enable's decision and is removed by
    [`disable_rlm_hooks()`][rlm_events.hooks.disable_rlm_hooks]. Without it the hooks
    run the same, untraced, and MLflow is not even imported.
    """
    if tracing is not None and not isinstance(tracing, bool):
        raise TypeError(f"enable_rlm_hooks(tracing=...) must be True, False or None, got {tracing!r}")
    hooks = (pre_iteration_hook, pre_execution_hook, post_execution_hook, post_iteration_hook)
    _enable(rlm, "enable_rlm_hooks", hooks, tracing=tracing)


def enable_rlm_hooks_with_tracing(
    rlm: dspy.RLM,
    *,
    pre_iteration_hook: PreIterationHook | None = None,
    pre_execution_hook: PreExecutionHook | None = None,
    post_execution_hook: PostExecutionHook | None = None,
    post_iteration_hook: PostIterationHook | None = None,
) -> None:
    """[`enable_rlm_hooks()`][rlm_events.hooks.enable_rlm_hooks] with `tracing=True`, for callers who want MLflow spans
    or an error: raises
    `ImportError` (naming `pip install "rlm-events[mlflow]"`) before changing anything when MLflow or the MLflow
    tap cannot be imported. The spans go where MLflow sends them (its own default store when nothing is set)."""
    hooks = (pre_iteration_hook, pre_execution_hook, post_execution_hook, post_iteration_hook)
    _enable(rlm, "enable_rlm_hooks_with_tracing", hooks, tracing=True)


_EXECUTION_STAGES = (Stage.PRE_EXECUTION, Stage.POST_EXECUTION)


def _traced(tracing: bool | None) -> bool:
    if tracing is not None:
        return tracing
    return not turned_off_by_environment() and mlflow_turned_on() is not None


def _enable(rlm: dspy.RLM, function: str, hooks: tuple[RLMHook | None, ...], *, tracing: bool | None) -> None:
    """What both enable functions do, `hooks` given in the order of `KINDS` (as their keywords are)."""
    require_rlm(rlm, function)
    given = list(zip(KINDS, hooks, strict=True))
    for kind, hook in given:
        if hook is not None:
            check_hook(kind, hook)
    if all(hook is None for _, hook in given):
        disable_rlm_hooks(rlm)
        return
    required = tracing is True
    traced = _traced(tracing)
    previous = instrumentation_of(rlm)
    previous_hooks = list(hooks_on(previous)) if previous is not None else []
    tap = next((mw.tap for mw in previous_hooks if mw.tap is not None), None)
    new_tap = new_mlflow_tap(required=required) if traced and tap is None else None  # ImportError before changes
    dropped = tap if not traced else None
    events, owns = instrument_for_api(rlm)
    needs_variables = any(hook is not None and kind.stage in _EXECUTION_STAGES for kind, hook in given)
    # The execution hooks are given the iteration's variables, which only pre_iteration sees: record them.
    new = [
        (kind.stage, adapt(kind, hook, owns))
        for kind, hook in given
        if hook is not None or (kind.stage is Stage.PRE_ITERATION and needs_variables)
    ]
    if new_tap is not None:
        tap = install_tap(new_tap, events, required=required)
    if dropped is not None:
        tap = None
    for _, mw in new:
        mw.tap = tap
    events.replace(previous_hooks, new)  # one change: a call starting meanwhile has the old hooks or the new
    if dropped is not None:
        uninstall_tap(dropped, events)


def disable_rlm_hooks(rlm: dspy.RLM) -> None:
    """Remove the hooks [`enable_rlm_hooks()`][rlm_events.hooks.enable_rlm_hooks] registered on `rlm` (and the MLflow
    tap it installed with them);
    other middleware, taps and receivers stay.

    When the 0.1.15 API ([`enable_rlm_hooks()`][rlm_events.hooks.enable_rlm_hooks] or
    [`enable_rlm_speculation()`][rlm_events.hooks.speculation.enable_rlm_speculation]) created the instrumentation
    and nothing else uses it (no middleware — speculation included —, no tap, no signal receiver connected for this
    RLM), `rlm` is uninstrumented: its class and `__dict__` are exactly as before, in whatever order hooks and
    speculation were enabled and disabled. A no-op on an RLM without hooks. Raises `TypeError` if `rlm` is not a
    `dspy.RLM`.
    """
    require_rlm(rlm, "disable_rlm_hooks")
    events = instrumentation_of(rlm)
    if events is None:
        return
    hooks = list(hooks_on(events))
    events.replace(hooks, [])
    for tap in {id(mw.tap): mw.tap for mw in hooks if mw.tap is not None}.values():
        uninstall_tap(tap, events)
    release(rlm, events, owned(events, hooks))


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
    "Spec",
    "SpecTool",
    "disable_rlm_hooks",
    "disable_rlm_speculation",
    "enable_rlm_hooks",
    "enable_rlm_hooks_with_tracing",
    "enable_rlm_speculation",
    "speculative",
]
