"""What rlm-events needs of DSPy's code interpreters beyond their public protocol, in one place.

* :data:`ExecutionError`: the error an interpreter raises for a failure the LM should see and recover from
  (``CodeExecutionError`` from DSPy 3.3 on; 3.1 and 3.2 only have ``CodeInterpreterError``, which their loop shows
  to the LM). :data:`CodeInterpreterError` ends the call on 3.3+.
* :func:`interpreter_class`: the class of the interpreters an RLM creates, told without creating one (read from
  the RLM's private ``_interpreter_factory`` (3.3+), ``_interpreter`` (3.1/3.2), or the per-call factory
  :func:`rlm_events.testing.build_rlm` sets before 3.3).
* :func:`worker_started` and :func:`execute_without_callbacks`: ``dspy.LocalInterpreter``'s worker process (its
  private ``_process``) and its ``execute`` without the DSPy callback wrapper (``execute.__wrapped__``), so that an
  execution of rlm-events' own is recorded by no trace.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import dspy
from dspy.primitives import code_interpreter

ExecutionError: type[Exception] = getattr(code_interpreter, "CodeExecutionError", code_interpreter.CodeInterpreterError)
CodeInterpreterError = code_interpreter.CodeInterpreterError


def interpreter_class(module: Any) -> type | None:
    """The class of the interpreters ``module`` creates, when it can be told without creating one."""
    per_call = module.__dict__.get("_interpreter_context")  # rlm_events.testing.build_rlm before DSPy 3.3
    candidate: Any = getattr(per_call, "factory", None)
    if candidate is None and "_interpreter_factory" in module.__dict__:
        candidate = module.__dict__["_interpreter_factory"]
        from dspy.primitives.python_interpreter import PythonInterpreter

        if candidate is None or candidate is PythonInterpreter:  # "unset": dspy.settings, else PythonInterpreter
            candidate = dspy.settings.get("interpreter_factory") or PythonInterpreter
    elif candidate is None and "_interpreter" in module.__dict__:  # DSPy 3.1/3.2: one shared interpreter, or None
        candidate = module.__dict__["_interpreter"]
        if candidate is None:
            from dspy.primitives.python_interpreter import PythonInterpreter

            candidate = PythonInterpreter
    while isinstance(candidate, functools.partial):
        candidate = candidate.func
    if isinstance(candidate, type):
        return candidate
    if candidate is not None and hasattr(candidate, "execute") and not inspect.isroutine(candidate):
        return type(candidate)  # an interpreter instance
    return None


def worker_started(repl: Any) -> bool:
    """Whether ``repl`` (a ``dspy.LocalInterpreter``) has started its worker process (and so holds variables)."""
    return vars(repl).get("_process") is not None


def execute_without_callbacks(repl: Any, code: str, variables: dict[str, Any]) -> Any:
    """``dspy.LocalInterpreter.execute(repl, code, variables)`` without DSPy's callback wrapper: no callback (and
    so no trace) records it."""
    local: Any = dspy.LocalInterpreter  # type: ignore[attr-defined]
    execute = getattr(local.execute, "__wrapped__", local.execute)
    return execute(repl, code, variables)


__all__ = ["CodeInterpreterError", "ExecutionError", "execute_without_callbacks", "interpreter_class", "worker_started"]
