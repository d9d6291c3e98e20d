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
from collections.abc import Callable

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
