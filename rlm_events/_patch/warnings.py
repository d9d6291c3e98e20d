"""Stages that cannot fire are named, once: the WARNING the patch layer logs instead of skipping one silently."""

from __future__ import annotations

import logging
import weakref
from typing import Any

_WARNED: weakref.WeakKeyDictionary[Any, set[Any]] = weakref.WeakKeyDictionary()


def warn_once(module: Any, key: Any, message: str) -> None:
    """Log `message` at WARNING the first time `key` comes up for `module`: stages that cannot fire are named,
    never skipped silently, and never flood the log."""
    seen = _WARNED.setdefault(module, set())
    if key not in seen:
        seen.add(key)
        logging.getLogger("rlm_events").warning(message)
