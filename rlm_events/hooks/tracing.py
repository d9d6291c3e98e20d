"""MLflow spans for the hooks, as dspy-rlm-hooks 0.1.15 names them, and only when the user turned MLflow on.

`mlflow_turned_on()` decides for [`enable_rlm_hooks()`][rlm_events.hooks.enable_rlm_hooks] (`tracing=None`). MLflow
counts
as turned on when, at the time of the call, one of these holds (checked through MLflow's public API, the same in
`mlflow-tracing` 3.4+ and the full `mlflow` package):

* DSPy autologging is on: `mlflow.dspy.autolog()` or `mlflow.autolog()`
  (`mlflow.utils.autologging_utils.autologging_is_disabled("dspy")` is false);
* a tracking URI was set explicitly: `mlflow.set_tracking_uri(...)` or `MLFLOW_TRACKING_URI`
  (`mlflow.is_tracking_uri_set()`);
* an experiment was chosen: `mlflow.set_experiment(...)` (which sets `MLFLOW_EXPERIMENT_ID`),
  `MLFLOW_EXPERIMENT_ID` or `MLFLOW_EXPERIMENT_NAME`;
* a run is active: `mlflow.active_run()`.

`RLM_EVENTS_MLFLOW=0` in the environment turns the spans off whatever holds. MLflow is never imported to find out
when the program has not imported it and no `MLFLOW_` variable above is set: a program that never mentions MLflow
pays nothing, and nothing writes a store (`mlflow.db`, `mlruns/`) into the working directory on its behalf.

The spans are those of 0.1.15: `rlm_hook/<hook>` around each hook call (`rlm_hook/pre_iteration`,
`rlm_hook/pre_execution`, `rlm_hook/post_execution`, `rlm_hook/post_iteration`, with 0.1.15's inputs and
outputs, code as fenced Markdown) and `rlm/execute_code` for each execution, inside the trace
[`MlflowTap`][rlm_events.taps.mlflow.MlflowTap] records (root `RLM.forward`, `iteration N`, `generate_action`).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import re
import sys
from collections.abc import Iterator
from typing import Any

from ..instrumentation import Instrumentation
from ..stages import Stage

logger = logging.getLogger("rlm_events")

# -- when MLflow is on ------------------------------------------------------------------------------------------

ENV = "RLM_EVENTS_MLFLOW"  # "0": never add MLflow spans in enable_rlm_hooks (as RLM_EVENTS_FAST_PATHS=0)
_OFF_VALUES = frozenset({"0", "false", "no", "off"})
_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME")

_MLFLOW_TAP_MODULE = "rlm_events.taps.mlflow"
_MLFLOW_MISSING = (
    'enable_rlm_hooks_with_tracing() needs MLflow: pip install "rlm-events[mlflow]" '
    "(or use enable_rlm_hooks(), which records hook spans only when MLflow is installed and turned on)"
)
# 0.1.15's name of the span of each execution; its hook spans are rlm_hook/<stage>.
SPAN_NAMES = {"execute_code": "rlm/execute_code"}


def turned_off_by_environment() -> bool:
    """Whether `RLM_EVENTS_MLFLOW` turns the hooks' MLflow spans off (`0`, `false`, `no`, `off`)."""
    return os.environ.get(ENV, "").strip().lower() in _OFF_VALUES


def _mlflow_importable() -> bool:
    """Whether `import mlflow` can succeed, without importing it (`sys.modules["mlflow"] = None` blocks it)."""
    if "mlflow" in sys.modules:
        return sys.modules["mlflow"] is not None
    try:
        return importlib.util.find_spec("mlflow") is not None
    except (ImportError, ValueError):
        return False


def mlflow_turned_on() -> str | None:
    """Why MLflow counts as turned on by the user (see the module docstring), or `None`. Never raises."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        if not any(os.environ.get(name) for name in _MLFLOW_ENV) or not _mlflow_importable():
            return None  # the program never imported MLflow nor configured it: don't import it to find out
        try:
            mlflow = importlib.import_module("mlflow")
        except Exception:
            logger.debug("rlm-events: MLflow is configured in the environment but cannot be imported", exc_info=True)
            return None
    checks = (
        ("autolog", _dspy_autolog_on),
        ("tracking URI", lambda m: bool(m.is_tracking_uri_set())),
        ("experiment", lambda m: any(os.environ.get(name) for name in _MLFLOW_ENV[1:])),
        ("active run", lambda m: m.active_run() is not None),
    )
    for reason, check in checks:
        try:
            if check(mlflow):
                return reason
        except Exception:  # an MLflow without this API: that way of turning it on does not exist there
            continue
    return None


def _dspy_autolog_on(mlflow: Any) -> bool:
    autologging = importlib.import_module("mlflow.utils.autologging_utils")
    return not autologging.autologging_is_disabled("dspy")


# -- the tap ----------------------------------------------------------------------------------------------------


def new_mlflow_tap(*, required: bool) -> Any:
    """A new `MlflowTap` with 0.1.15's span names; `None` when MLflow or the tap cannot be imported, unless
    `required` (then `ImportError`)."""
    if not _mlflow_importable():
        if required:
            raise ImportError(_MLFLOW_MISSING)
        return None
    try:
        return importlib.import_module(_MLFLOW_TAP_MODULE).MlflowTap(span_names=SPAN_NAMES)
    except ImportError as exc:
        return _untraced(exc, required=required)


def install_tap(tap: Any, events: Instrumentation, *, required: bool) -> Any:
    """Install the tap `new_mlflow_tap()` made on `events`; the tap, or `None` when MLflow refuses it
    (`ImportError` instead when `required`)."""
    try:
        tap.install(events)
    except ImportError as exc:  # e.g. an MLflow without the tracing API
        return _untraced(exc, required=required)
    return tap


def _untraced(exc: ImportError, *, required: bool) -> None:
    """MLflow cannot trace the hooks: say so (`ImportError` naming the extra when `required`; else DEBUG)."""
    if required:
        raise ImportError(f"{_MLFLOW_MISSING}: {exc}") from exc
    logger.debug("rlm-events: hook spans not recorded in MLflow: %s", exc)


def uninstall_tap(tap: Any, events: Instrumentation) -> None:
    """Remove a tap `install_tap()` installed from `events`."""
    uninstall = getattr(tap, "uninstall", None)
    if callable(uninstall):
        uninstall(events)


# -- the rlm_hook/<hook> spans ----------------------------------------------------------------------------------


def _fenced(code: Any) -> Any:
    """Python source as fenced Markdown (0.1.15's rendering); a fence longer than any backtick run inside."""
    if not isinstance(code, str):
        return code
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}python\n{code if code.endswith(chr(10)) else code + chr(10)}{fence}"


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def span_inputs(stage: Stage, arguments: tuple[Any, ...]) -> dict[str, Any]:
    """0.1.15's span inputs for the hook of `stage` called with `arguments`."""
    if stage is Stage.PRE_ITERATION:
        return {"iteration": arguments[0], "input_args": _plain(arguments[3])}
    if stage is Stage.PRE_EXECUTION:
        return {"iteration": arguments[0], "original_code": _fenced(arguments[1])}
    if stage is Stage.POST_EXECUTION:
        return {"iteration": arguments[0], "code": _fenced(arguments[1]), "original_result": _plain(arguments[2])}
    return {"iteration": arguments[0], "code": _fenced(arguments[2]), "result": _plain(arguments[3])}


def span_outputs(stage: Stage, out: Any) -> dict[str, Any] | None:
    """0.1.15's span outputs for the hook of `stage` that returned `out` (`None`: it changed nothing)."""
    if out is None:
        return None
    if stage is Stage.PRE_ITERATION:
        return {
            "extra_vars": _plain(out.extra_vars),
            "python_code": _fenced(out.python_code),
            "persistent_python_code": _fenced(out.persistent_python_code),
            "prompt_context": out.prompt_context,
        }
    if stage is Stage.PRE_EXECUTION:
        return {"modified_code": _fenced(out.code)}
    if stage is Stage.POST_EXECUTION:
        return {"final_result": _plain(out.result)}
    return {"stop": out.stop}


class HookSpan:
    """The `rlm_hook/<stage>` span of one hook call; every method is a no-op when the span could not start."""

    __slots__ = ("_manager", "_span", "stage")

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self._manager: Any = None
        self._span: Any = None

    def outputs(self, out: Any) -> None:
        if self._span is not None:
            try:
                self._span.set_outputs(span_outputs(self.stage, out))
            except Exception:
                logger.debug("rlm-events: could not record the outputs of rlm_hook/%s", self.stage.value, exc_info=True)


@contextlib.contextmanager
def hook_span(stage: Stage, arguments: tuple[Any, ...]) -> Iterator[HookSpan]:
    """A current MLflow span `rlm_hook/<stage>` around a hook call, with 0.1.15's inputs. The hook's exception
    propagates (and is recorded on the span); a failure of MLflow itself is logged and never reaches the run."""
    span = HookSpan(stage)
    mlflow = sys.modules.get("mlflow")
    try:
        manager = mlflow.start_span(name=f"rlm_hook/{stage.value}")  # type: ignore[union-attr]
        span._span = manager.__enter__()
        span._manager = manager
        span._span.set_inputs(span_inputs(stage, arguments))
    except Exception:
        logger.debug("rlm-events: could not start the span rlm_hook/%s", stage.value, exc_info=True)
    if span._manager is None:
        yield span
        return
    try:
        yield span
    except BaseException:
        _exit(span, *sys.exc_info())
        raise
    _exit(span, None, None, None)


def _exit(span: HookSpan, *exc_info: Any) -> None:
    try:
        span._manager.__exit__(*exc_info)
    except Exception:
        logger.debug("rlm-events: could not end the span rlm_hook/%s", span.stage.value, exc_info=True)
