"""MLflow spans for the hooks, as dspy-rlm-hooks 0.1.15 records them when MLflow is importable."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from typing import Any

from ..instrumentation import Instrumentation

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
