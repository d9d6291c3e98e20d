"""Bases for tap objects that register themselves: `tap.install(events)` / `tap.uninstall(events)`.

A tap only sees a tool call once it returned, so taps that time or record tool calls add a `tool_call`
middleware around the real call next to the tap (`ToolAwareTap`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..installable import Installable, Registrations
from ..stages import Stage

LOOP_STAGES = tuple(s for s in Stage if s is not Stage.TOOL_CALL)


class InstallableTap(Installable):
    """A tap object (`__call__(snapshot)`) on every stage."""

    def __call__(self, ctx: Any) -> Any:  # pragma: no cover - every subclass is the tap itself
        raise NotImplementedError

    def registrations(self) -> Registrations:
        return Registrations(taps=[(tuple(Stage), self)])


class ToolAwareTap(InstallableTap):
    """A tap on every stage but `tool_call`, plus `_tool_middleware` on `tool_call`.

    Subclasses set `self._tool_middleware` once in `__init__` (a bound method is a new object on every
    attribute access, and `uninstall` must find the very object `install` registered).
    """

    _tool_middleware: Callable[[Any, Any], Any]

    def registrations(self) -> Registrations:
        return Registrations(middleware=[(Stage.TOOL_CALL, self._tool_middleware)], taps=[(LOOP_STAGES, self)])
