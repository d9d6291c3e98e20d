"""How much work a bounded evaluation may do (`Limits`, one set for every evaluator), the meter that
enforces them (`Bounded`), and the signals that end part of an evaluation.

Operations are Python's own on exact builtin types (C code without side effects), after size checks that keep
every result small: no `"x" * 10**12`, no `10**10**9`, no `f"{x:>999999999}"`.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    """Bounds on an evaluation's work: every result and all of them together stay small."""

    max_items: int = 100_000
    """Elements of one list, tuple, dict or range the evaluator builds or iterates."""
    max_chars: int = 1_000_000
    """Characters of one string the evaluator builds."""
    max_alloc: int = 20_000_000
    """Characters and elements built in one evaluation, all together."""
    max_steps: int = 200_000
    """Statements and expressions evaluated in one evaluation."""
    max_int_bits: int = 4096
    max_seconds: float = 0.05
    """Wall time of one evaluation; past it the evaluation stops with what it found."""
    max_width: int = 10_000
    """Widths and precisions in format specs and `%` formats."""


LIMITS = Limits()
"""The default limits."""


class Stop(Exception):
    """The code stops here (`SUBMIT`, `raise`, a failed `assert`) or the evaluation ran out of budget
    (`Stop("budget")`, `Stop("time")`)."""


class TooBig(Exception):
    """An operation would build a value past the limits: its result is unknown."""


class Break(Exception):
    """`break`."""


class Continue(Exception):
    """`continue`."""


class Uncertain(Exception):
    """Control flow depends on something unknown (a `break` under an unknown condition): stop the loop."""


_BIG_NUMBER = re.compile(r"\d{5,}")
_PERCENT_FIELD = re.compile(r"%[^a-zA-Z%]*[a-zA-Z%]")


class Bounded:
    """Counts an evaluation's steps, allocations and time against its `Limits`."""

    def __init__(self, limits: Limits = LIMITS) -> None:
        self.limits = limits
        self.steps = 0
        self.alloc = 0
        self.deadline = 0.0
        self.line = 0
        """The line of the statement being evaluated."""
        self.stopped: str | None = None
        """Why the evaluation stopped early (`"budget"`, `"time"`, `"depth"`), if it did."""

    def start_clock(self) -> None:
        """Start the evaluation's wall-time budget (`limits.max_seconds`)."""
        self.deadline = time.perf_counter() + self.limits.max_seconds

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise Stop("budget")
        if self.steps % 256 == 0 and time.perf_counter() > self.deadline:
            raise Stop("time")

    def grew_by(self, count: int) -> None:
        self.alloc += count
        if self.alloc > self.limits.max_alloc:
            raise Stop("budget")

    def grew(self, value: Any) -> Any:
        """Count what `value` (a new str or container) allocated; fail when it or the total is too large."""
        kind = type(value)
        if kind is str or kind is list or kind is tuple or kind is dict:
            size = len(value)
            limit = self.limits.max_chars if kind is str else self.limits.max_items
            self.alloc += size
            if size > limit:
                raise TooBig
            if self.alloc > self.limits.max_alloc:
                raise Stop("budget")
        elif kind is int and value.bit_length() > self.limits.max_int_bits:
            raise TooBig
        return value

    def check_size(self, value: Any) -> None:
        """Refuse to render `value` as text (str, repr, format) if that text could be too long."""
        budget = [self.limits.max_chars]

        def walk(v: Any, depth: int) -> None:
            kind = type(v)
            budget[0] -= len(v) + 2 if kind is str else 24
            if budget[0] < 0 or depth > 50:
                raise TooBig
            if kind is list or kind is tuple:
                for item in v:
                    walk(item, depth + 1)
            elif kind is dict:
                for key, item in v.items():
                    walk(key, depth + 1)
                    walk(item, depth + 1)
            elif kind is int and v.bit_length() > self.limits.max_int_bits:
                raise TooBig

        walk(value, 0)

    def check_percent(self, template: str) -> None:
        """Refuse a `%` template with a `*` or a large width or precision."""
        for found in _PERCENT_FIELD.finditer(template):
            if "*" in found.group() or _BIG_NUMBER.search(found.group()):
                raise TooBig

    def check_spec(self, spec: str) -> None:
        """Refuse a format spec with a width or precision past `limits.max_width`."""
        for number in re.findall(r"\d+", spec):
            if len(number) > 5 or int(number) > self.limits.max_width:
                raise TooBig


__all__ = ["LIMITS", "Bounded", "Break", "Continue", "Limits", "Stop", "TooBig", "Uncertain"]
