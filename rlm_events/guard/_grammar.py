"""The grammar generated code is parsed with: which Python will run it
([`interpreter_python()`][rlm_events.guard._grammar.interpreter_python]), and parsing
with that Python's grammar (`parse_code()`), refusing what the guard cannot read."""

from __future__ import annotations

import ast
import sys
from typing import Any

from .._ast import converted
from ..runtime import runs_pyodide
from ._violation import Violation

HOST_PYTHON: tuple[int, int] = (sys.version_info[0], sys.version_info[1])
# DSPy's PythonInterpreter runs Pyodide 0.29 (CPython 3.13) under Deno; the guard parses its code with that grammar.
PYODIDE_PYTHON = (3, 13)
NEWER_SYNTAX = (
    "no `type X = ...` statements, no `def f[T]` / `class C[T]` type parameters, and no f-string that reuses its "
    "own quote character inside {...}"
)


def parse_code(code: str, target: tuple[int, int] | None) -> tuple[ast.Module | None, Violation | None]:
    """The module's tree, or the `"syntax"` violation that refuses it."""
    try:
        if target is not None and target < HOST_PYTHON:
            return converted(lambda: ast.parse(code, feature_version=target)), None
        return converted(lambda: ast.parse(code)), None
    except SyntaxError as exc:
        line = exc.lineno or 0
        message = f"{exc.msg} (line {line})" if line else exc.msg
        here = f"{HOST_PYTHON[0]}.{HOST_PYTHON[1]}"
        if target is not None and target > HOST_PYTHON:
            detail = (
                f"the guard runs on Python {here} and cannot parse this code ({message}); the sandbox runs Python "
                f"{target[0]}.{target[1]}, which may accept it, but code the guard cannot read is not run"
            )
            hint = f"write it in Python {here} syntax: {NEWER_SYNTAX}"
        else:
            version = f"Python {target[0]}.{target[1]}" if target is not None else f"Python {here}"
            detail = f"this is not valid {version}: {message}; nothing was run"
            hint = "fix the syntax and send plain Python only (no markdown fences or prose)"
        return None, Violation("syntax", "parse", line, detail, hint)
    except ValueError:
        return None, Violation(
            "syntax", "parse", 0, "the code contains null bytes; nothing was run", "send plain Python text"
        )


def interpreter_python(rlm: Any) -> tuple[int, int] | None:
    """The Python version of the interpreter `rlm` runs code in, when the guard can tell:
    [`PYODIDE_PYTHON`][rlm_events.guard._grammar.PYODIDE_PYTHON]
    for DSPy's Deno/Pyodide `PythonInterpreter` (also when it is the default), else `None` (the guard's own)."""
    return PYODIDE_PYTHON if runs_pyodide(rlm) else None


__all__ = ["HOST_PYTHON", "NEWER_SYNTAX", "PYODIDE_PYTHON", "interpreter_python", "parse_code"]
