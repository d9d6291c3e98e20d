"""Errors raised by the chain engine, and the helpers that name middleware in messages and notes."""

from __future__ import annotations

from typing import Any


class ChainError(RuntimeError):
    """A middleware broke the chain protocol (for example, it called `next` more than once)."""


def middleware_name(fn: Any) -> str:
    """A readable name for a middleware: `module.qualname` for functions, the class name for callable objects."""
    target = getattr(fn, "func", fn)  # functools.partial
    qualname = getattr(target, "__qualname__", None) or type(target).__qualname__
    module = getattr(target, "__module__", None) or type(target).__module__
    return f"{module}.{qualname}" if module and module != "builtins" else qualname


def add_note(exc: BaseException, note: str) -> None:
    """Attach a PEP 678 note; on Python 3.10, where `add_note` is missing, fill `__notes__` the same way."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:  # pragma: no cover - Python 3.10
        exc.__notes__ = [*getattr(exc, "__notes__", []), note]  # type: ignore[attr-defined]
