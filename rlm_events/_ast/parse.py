"""Parsing generated code: one helper, and the lock that serialises CPython's AST conversions."""

from __future__ import annotations

import ast
import threading

AST_LOCK = threading.Lock()
"""Held while source, AST objects and code objects are converted (`ast.parse`, `compile` of a tree): that is
not thread-safe in some CPython releases (`SystemError: AST constructor recursion depth mismatch`), and the
interpreters and planners of concurrent runs parse at once."""


def parse(code: str) -> ast.Module | None:
    """The module's tree, or `None` when `code` is not valid Python (a `SyntaxError`, or a `ValueError` for
    source with null bytes). Parses under `AST_LOCK`."""
    try:
        with AST_LOCK:
            return ast.parse(code, mode="exec")
    except (SyntaxError, ValueError):
        return None


__all__ = ["AST_LOCK", "parse"]
