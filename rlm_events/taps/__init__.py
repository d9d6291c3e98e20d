"""Observe-only taps: record, show, log, time and export what instrumented `dspy.RLM` calls do.

Register any of them with `events.tap(tap)` or `tap.install(events)`. Each is imported on first use, so
`import rlm_events.taps` costs nothing and an optional extra (`rich`, `otel`, `mlflow`) is needed only by the
tap that uses it.

| tap | module | what it does |
| --- | --- | --- |
| [`JsonlTrace`][rlm_events.trace.JsonlTrace] | [`rlm_events.trace`][rlm_events.trace] | one JSON line per stage event, for `python -m rlm_events view` |
| [`ProgressTap`][rlm_events.taps.progress.ProgressTap] | [`progress`][rlm_events.taps.progress] | live iteration n/max, stage, elapsed time and tokens (`rich`) |
| [`LoggingTap`][rlm_events.taps.logs.LoggingTap] | [`logs`][rlm_events.taps.logs] | stage events as `logging` records |
| [`StageTimings`][rlm_events.taps.timings.StageTimings] | [`timings`][rlm_events.taps.timings] | per-stage duration statistics |
| [`OpenTelemetryTap`][rlm_events.taps.otel.OpenTelemetryTap] | [`otel`][rlm_events.taps.otel] | OpenTelemetry spans per call and iteration (`otel`) |
| [`MlflowTap`][rlm_events.taps.mlflow.MlflowTap] | [`mlflow`][rlm_events.taps.mlflow] | MLflow traces of the loop, nesting `mlflow.dspy.autolog()` (`mlflow`) |

`JsonlTrace` lives with the trace format it writes (schema, reader, viewer) in [`rlm_events.trace`][rlm_events.trace].
"""  # noqa: E501

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..trace.writer import JsonlTrace
    from .logs import LoggingTap
    from .mlflow import MlflowTap
    from .otel import OpenTelemetryTap
    from .progress import ProgressTap
    from .timings import StageStats, StageTimings

_EXPORTS = {  # name -> its module, relative to this package
    "JsonlTrace": "..trace.writer",
    "LoggingTap": ".logs",
    "MlflowTap": ".mlflow",
    "OpenTelemetryTap": ".otel",
    "ProgressTap": ".progress",
    "StageStats": ".timings",
    "StageTimings": ".timings",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = ["JsonlTrace", "LoggingTap", "MlflowTap", "OpenTelemetryTap", "ProgressTap", "StageStats", "StageTimings"]
