"""The values a bounded evaluation works on: plain data of exact builtin types, or `Unknown`.

Values enter an evaluation only as literals of the code, or as copies made by `plain()` (exact-type checks,
`type(v) is list` and so on, which run no code of the value's class): no object of the user's or the REPL's ever
enters it, so no `__eq__`, `__hash__`, `__iter__`, `__format__`, property or descriptor of theirs can run.
Containers are copied, so the evaluator's `list.append` never touches a REPL object.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .limits import LIMITS, Limits

SCALARS = (str, int, float, bool, type(None))
"""The exact scalar types a value may have."""
_NONE = type(None)
_RESULTS = (*SCALARS, list, tuple)  # what the exact types' methods may return


class Unknown:
    """A value the evaluator cannot know. `needs`: free names whose values might make it known."""

    __slots__ = ("needs",)

    def __init__(self, needs: frozenset[str] = frozenset()) -> None:
        self.needs = needs

    def __repr__(self) -> str:
        return f"Unknown({sorted(self.needs)})" if self.needs else "Unknown()"


UNKNOWN = Unknown()


class Opaque(Unknown):
    """A function or class defined by the code (or a callable found in the REPL): unknown, and calling it is a
    barrier (it may change anything)."""

    __slots__ = ()


class Ref:
    """A callable the evaluator knows by name: a tool (`kind="tool"`), a pure builtin (`"builtin"`), or the
    REPL's `SUBMIT` (`"submit"`)."""

    __slots__ = ("kind", "name")

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name


def is_unknown(value: Any) -> bool:
    """Whether `value` is an `Unknown` (or an `Opaque`) itself, not a container holding one."""
    return type(value) is Unknown or type(value) is Opaque


def needs_of(value: Any, _depth: int = 0) -> frozenset[str] | None:
    """`None` if `value` is concrete plain data all the way down; else the free names its unknown parts need
    to become known, or an empty set when some part cannot become known whatever the REPL holds."""
    if is_unknown(value):
        return value.needs  # type: ignore[no-any-return]
    kind = type(value)
    if kind in SCALARS or kind is range:
        return None
    if _depth > 50:
        return frozenset()
    if kind is list or kind is tuple:
        items: Iterable[Any] = value
    elif kind is dict:
        items = [*value.keys(), *value.values()]
    else:
        return frozenset()
    found: frozenset[str] | None = None
    for item in items:
        needs = needs_of(item, _depth + 1)
        if needs is not None:
            if not needs:
                return needs  # hopeless: no REPL value makes it known
            found = needs if found is None else found | needs
    return found


def unknown_of(*values: Any) -> Unknown:
    """The unknown result of an operation on `values`: it needs what they need, unless one cannot be known."""
    needs: frozenset[str] = frozenset()
    for value in values:
        found = needs_of(value)
        if found is not None:
            if not found:
                return UNKNOWN
            needs |= found
    return Unknown(needs) if needs else UNKNOWN


def plain(value: Any, limits: Limits = LIMITS, _budget: list[int] | None = None, _depth: int = 0) -> Any:
    """A copy of `value` if it is plain data of exact builtin types (within `limits`), else `UNKNOWN`.

    Only `type(x) is ...` checks and the exact types' own C methods run: never code of another class."""
    budget = _budget if _budget is not None else [limits.max_alloc]
    kind = type(value)
    if kind is str:
        budget[0] -= len(value)
        return value if len(value) <= limits.max_chars and budget[0] >= 0 else UNKNOWN
    if kind is bool or kind is _NONE:
        return value
    if kind is int:
        return value if value.bit_length() <= limits.max_int_bits else UNKNOWN
    if kind is float:
        return value if math.isfinite(value) else UNKNOWN
    if _depth >= 20:
        return UNKNOWN
    if kind is list or kind is tuple:
        budget[0] -= len(value)
        if len(value) > limits.max_items or budget[0] < 0:
            return UNKNOWN
        items = [plain(v, limits, budget, _depth + 1) for v in list(value)]
        return items if kind is list else tuple(items)
    if kind is dict:
        budget[0] -= len(value)
        if len(value) > limits.max_items or budget[0] < 0:
            return UNKNOWN
        copied = {}
        for k, v in list(value.items()):
            if type(k) not in SCALARS:  # exact scalar keys: their hash and == are C
                return UNKNOWN
            copied[k] = plain(v, limits, budget, _depth + 1)
        return copied
    if kind is range:
        return value
    return UNKNOWN


def plain_result(value: Any) -> Any:
    """Results of the exact types' methods: lists from `split`, tuples from `partition`, scalars."""
    return value if type(value) in _RESULTS else UNKNOWN


def hashable(value: Any) -> bool:
    """Whether `value` is a scalar or a tuple of them: a key whose `hash` and `==` are the exact types' C."""
    kind = type(value)
    return kind in SCALARS or (kind is tuple and all(hashable(v) for v in value))


__all__ = [
    "SCALARS",
    "UNKNOWN",
    "Opaque",
    "Ref",
    "Unknown",
    "hashable",
    "is_unknown",
    "needs_of",
    "plain",
    "plain_result",
    "unknown_of",
]
