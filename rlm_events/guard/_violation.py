"""What the guard reports: a [`Violation`][rlm_events.guard._violation.Violation], one refused construct with where,
why and what to do instead."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ViolationKind = Literal["call", "module", "attribute", "write", "dynamic", "syntax"]

REASONS: dict[str, str] = {
    "call": "built-ins that run code or reach the REPL's internals or the file system are denied",
    "module": "only allowlisted modules, and their public non-module members, may be used; others are denied",
    "attribute": "private, dunder and interpreter-internal attributes are denied",
    "write": "writing files is denied",
    "dynamic": "attribute names the code does not spell out are denied",
    "syntax": "code the guard cannot parse is denied, since it cannot be checked",
}


@dataclass(frozen=True)
class Violation:
    """One thing the policy refuses, where it is, why, and what to do instead (`hint`)."""

    kind: ViolationKind
    name: str
    line: int
    detail: str
    hint: str = ""

    @property
    def reason(self) -> str:
        """Why this kind of construct is denied, in words meant for the LM."""
        return REASONS[self.kind]

    def __str__(self) -> str:
        text = f"line {self.line}: {self.detail} ({self.reason})"
        return f"{text}; {self.hint}" if self.hint else text


__all__ = ["REASONS", "Violation", "ViolationKind"]
