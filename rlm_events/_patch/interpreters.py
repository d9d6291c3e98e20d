"""What rlm-events needs of DSPy's code interpreters beyond their public protocol, in one place.

* [`ExecutionError`][rlm_events._patch.interpreters.ExecutionError]: the error an interpreter raises for a failure the
  LM should see and recover from
  (`CodeExecutionError` from DSPy 3.3 on; 3.1 and 3.2 only have `CodeInterpreterError`, which their loop shows
  to the LM). [`CodeInterpreterError`][rlm_events._patch.interpreters.CodeInterpreterError] ends the call on 3.3+.
* [`interpreter_class()`][rlm_events._patch.interpreters.interpreter_class]: the class of the interpreters an RLM
  creates, told without creating one (read from
  the RLM's private `_interpreter_factory` (3.3+), `_interpreter` (3.1/3.2), or the per-call factory
  [`rlm_events.build.build_rlm()`][rlm_events.build.build_rlm] sets before 3.3);
  [`runs_pyodide()`][rlm_events._patch.interpreters.runs_pyodide] on top of it.
* [`worker_started()`][rlm_events._patch.interpreters.worker_started] and
  [`execute_without_callbacks()`][rlm_events._patch.interpreters.execute_without_callbacks]: `dspy.LocalInterpreter`'s
  worker process (its
  private `_process`) and its `execute` without the DSPy callback wrapper (`execute.__wrapped__`), so that an
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
    """The class of the interpreters `module` creates, when it can be told without creating one.

    The one place that reads where an RLM keeps its interpreter: the per-call factory
    [`rlm_events.build.build_rlm()`][rlm_events.build.build_rlm] sets before DSPy 3.3, else `_interpreter_factory`
    (3.3+; unset means
    `dspy.settings.interpreter_factory`, else `PythonInterpreter`, as DSPy resolves it), else the shared
    `_interpreter` (3.1/3.2, and PredictRLM; `None` means `PythonInterpreter`). `None` for a factory that is
    a plain function (what it makes is unknown until it is called)."""
    from dspy.primitives.python_interpreter import PythonInterpreter

    attributes = vars(module) if hasattr(module, "__dict__") else {}
    candidate: Any = getattr(attributes.get("_interpreter_context"), "factory", None)
    if candidate is None and "_interpreter_factory" in attributes:
        candidate = attributes["_interpreter_factory"]
        if candidate is None or candidate is PythonInterpreter:  # "unset": dspy.settings, else PythonInterpreter
            candidate = dspy.settings.get("interpreter_factory") or PythonInterpreter
    elif candidate is None and "_interpreter" in attributes:  # DSPy 3.1/3.2: one shared interpreter, or None
        candidate = attributes["_interpreter"]
        if candidate is None:
            candidate = PythonInterpreter
    while isinstance(candidate, functools.partial):
        candidate = candidate.func
    if isinstance(candidate, type):
        return candidate
    if candidate is not None and hasattr(candidate, "execute") and not inspect.isroutine(candidate):
        return type(candidate)  # an interpreter instance
    return None


def runs_pyodide(module: Any) -> bool:
    """Whether `module` runs its code in DSPy's Deno/Pyodide `PythonInterpreter` (or a subclass), also when
    that is the default it falls back to."""
    from dspy.primitives.python_interpreter import PythonInterpreter

    cls = interpreter_class(module)
    return cls is not None and issubclass(cls, PythonInterpreter)


def worker_started(repl: Any) -> bool:
    """Whether `repl` (a `dspy.LocalInterpreter`) has started its worker process (and so holds variables)."""
    return vars(repl).get("_process") is not None


def execute_without_callbacks(repl: Any, code: str, variables: dict[str, Any]) -> Any:
    """`dspy.LocalInterpreter.execute(repl, code, variables)` without DSPy's callback wrapper: no callback (and
    so no trace) records it."""
    local: Any = dspy.LocalInterpreter  # type: ignore[attr-defined]
    execute = getattr(local.execute, "__wrapped__", local.execute)
    return execute(repl, code, variables)


__all__ = [
    "CodeInterpreterError",
    "ExecutionError",
    "execute_without_callbacks",
    "interpreter_class",
    "runs_pyodide",
    "worker_started",
]
