"""What taps, built-ins and record/replay may know about the RLM call they run in, in one place.

The patch layer (`rlm_events._patch`) owns the per-call state; everything else in rlm-events reads it through
these functions, never through the patch layer's private names.
"""

from __future__ import annotations

from ._patch import (
    CodeInterpreterError,
    ExecutionError,
    assembled_by_litellm,
    batched_queries_keep_context,
    constructor_of,
    current_iteration,
    current_run,
    execute_without_callbacks,
    failed_after_answer,
    interpreter_class,
    iteration_limit,
    raw_tool,
    runs_pyodide,
    serving_recorded_actions,
    stream_mode,
    worker_started,
)
from .lm_history import lms_of

__all__ = [
    "CodeInterpreterError",
    "ExecutionError",
    "assembled_by_litellm",
    "batched_queries_keep_context",
    "constructor_of",
    "current_iteration",
    "current_run",
    "execute_without_callbacks",
    "failed_after_answer",
    "interpreter_class",
    "iteration_limit",
    "lms_of",
    "raw_tool",
    "runs_pyodide",
    "serving_recorded_actions",
    "stream_mode",
    "worker_started",
]
