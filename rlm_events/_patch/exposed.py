"""What the patch layer lets the rest of rlm-events know about DSPy's runtime and the running call: the
interpreters' error classes and discovery, the uncallbacked execute, how an RLM is built, the LM-history signals,
the raw tools, and the current run and iteration. `rlm_events.runtime` re-exports exactly `__all__`.
"""

from __future__ import annotations

from typing import Any

from ..context import Run
from .call import CURRENT
from .construct import batched_queries_keep_context, constructor_of, iteration_limit
from .frame import SkippableREPL
from .interpreters import (
    CodeInterpreterError,
    ExecutionError,
    execute_without_callbacks,
    interpreter_class,
    runs_pyodide,
    worker_started,
)
from .lm_signals import assembled_by_litellm, failed_after_answer, stream_mode
from .resume import serving_recorded_actions
from .tools import raw_tool


def current_iteration(run: Run) -> tuple[Any, dict[str, Any]] | None:
    """`(repl, input_args)` of the iteration of `run` executing in this context (the interpreter itself, never
    a stand-in of ours), or `None` outside one."""
    call = CURRENT.get()
    frame = call.frame if call is not None and call.run is run else None
    if frame is None or "repl" not in frame.args:
        return None
    repl = frame.args["repl"]
    if isinstance(repl, SkippableREPL):
        repl = object.__getattribute__(repl, "_repl")
    inputs = frame.args.get("input_args")
    return repl, dict(inputs) if isinstance(inputs, dict) else {}


def current_run() -> Run | None:
    """The run of the instrumented call executing in this context (`None` outside one). Threads DSPy's
    interpreters and `llm_query_batched` (3.3+) run tools in see it too: they copy the caller's context."""
    call = CURRENT.get()
    return call.run if call is not None else None


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
    "raw_tool",
    "runs_pyodide",
    "serving_recorded_actions",
    "stream_mode",
    "worker_started",
]
