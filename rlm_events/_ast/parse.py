"""Parsing generated code: one helper, and how every AST conversion of rlm-events is made safe to run at once."""

from __future__ import annotations

import ast
import gc
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

AST_LOCK = threading.RLock()
"""Held while source, AST objects and code objects are converted (`ast.parse`, `compile` of a tree), and while
rlm-events formats a traceback (Python 3.11+ parses source lines to underline them): that is not thread-safe in
some CPython releases (`SystemError: AST constructor recursion depth mismatch`), and the interpreters, guards and
planners of concurrent runs parse at once, while the tap delivery worker logs failures. Reentrant: a finalizer that
parses may run inside a conversion."""

_DEPTH_RACE = "AST constructor recursion depth mismatch"
_ATTEMPTS = 3


def converted(convert: Callable[[], T]) -> T:
    """`convert()` (an AST conversion: `ast.parse`, `compile`, formatting a traceback) under `AST_LOCK`; made again,
    with the garbage collector paused, if CPython reports the depth race.

    Why: CPython 3.11 keeps one conversion depth per interpreter, reset when a conversion starts. A conversion that
    starts in the middle of another leaves it off, and the outer one then fails with a `SystemError` although its
    input is fine. One can start in the middle only if Python code runs there: a finalizer or a collector callback
    run by a collection that the conversion's allocations trigger (on this thread, or, once that code lets the GIL
    go, another thread's conversion). The lock keeps rlm-events' own conversions, and its traceback formatting on
    other threads, apart. After a race, the new attempt (sound: the state is reset at each start) runs with the
    collector paused, so no Python code runs inside it; the collector is paused only then, because it is a
    process-wide switch. Any other error is raised at once.
    """
    for attempt in range(1, _ATTEMPTS + 1):
        with AST_LOCK:
            collecting = attempt > 1 and gc.isenabled()
            if collecting:
                gc.disable()
            try:
                return convert()
            except SystemError as exc:
                if _DEPTH_RACE not in str(exc) or attempt == _ATTEMPTS:
                    raise
            finally:
                if collecting:
                    gc.enable()
    raise AssertionError("unreachable")  # pragma: no cover


def parse(code: str) -> ast.Module | None:
    """The module's tree, or `None` when `code` is not valid Python (a `SyntaxError`, or a `ValueError` for
    source with null bytes). Parses with [`converted()`][rlm_events._ast.parse.converted]."""
    try:
        return converted(lambda: ast.parse(code, mode="exec"))
    except (SyntaxError, ValueError):
        return None


__all__ = ["AST_LOCK", "converted", "parse"]
