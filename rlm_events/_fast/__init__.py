"""Fast paths over other libraries' internals, each fenced in one module.

* `pydantic`: building a context without `model_construct`'s per-call work (slot descriptors, per-class
  field recipes).
* `blinker`: which receivers hear a sender, read where blinker keeps them, without its `make_id()`.

Each module names the releases it was checked against, probes once at import that the internals are what it
expects, and otherwise uses the library's public API (`FAST` says which is in use; `REASON` why not the fast
path). `RLM_EVENTS_FAST_PATHS=0` in the environment makes both use the public API without probing; `fallback()`
does so for a while (tests). `tests/test_fast_paths.py` pins both paths; CI runs the suite on the lowest supported
pydantic and blinker releases too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

ENV = "RLM_EVENTS_FAST_PATHS"


class Unexpected(Exception):
    """A library's internals are not what its fast path expects (raised by the probes)."""


def disabled() -> str | None:
    """Why the fast paths are off by request (`RLM_EVENTS_FAST_PATHS=0`), or `None`."""
    return f"{ENV}=0 in the environment" if os.environ.get(ENV, "").strip() == "0" else None


def failure(check: Callable[[], None]) -> str | None:
    """What `check` (a fast path's probe) found wrong, or `None`: its `Unexpected` message as it is,
    anything else it raised with the exception's type."""
    try:
        check()
    except Exception as exc:
        return str(exc) if isinstance(exc, Unexpected) else f"{type(exc).__name__}: {exc}"
    return None


@contextmanager
def switched(module: str, fast: bool, changed: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Set the fast-path module `module`'s `FAST` to `fast` inside the block, then back (not thread-safe);
    `changed()` runs after each switch, for a module that keeps state while `FAST` is on."""
    fenced: Any = sys.modules[module]  # its FAST, the global its hot paths read
    was, fenced.FAST = fenced.FAST, fast
    changed()
    try:
        yield
    finally:
        fenced.FAST = was
        changed()
