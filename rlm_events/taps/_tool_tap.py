"""Bases for tap objects that register themselves: ``tap.install(events)`` / ``tap.uninstall(events)``.

A tap only sees a tool call once it returned, so taps that time or record tool calls add a ``tool_call``
middleware around the real call next to the tap (:class:`ToolAwareTap`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from ..instrumentation import Instrumentation
from ..stages import Stage

T = TypeVar("T", bound="InstallableTap")
W = TypeVar("W", bound="ToolAwareTap")
LOOP_STAGES = tuple(s for s in Stage if s is not Stage.TOOL_CALL)


class InstallableTap:
    """A tap object (``__call__(snapshot)``) on every stage, that registers and removes itself."""

    def __call__(self, ctx: Any) -> Any:  # pragma: no cover - every subclass is the tap itself
        raise NotImplementedError

    def install(self: T, events: Instrumentation) -> T:
        """Register this tap on every stage of ``events``; return ``self``."""
        events.tap(self)
        return self

    def uninstall(self, events: Instrumentation) -> None:
        """Remove what :meth:`install` registered on ``events``."""
        events.untap(self)


class ToolAwareTap(InstallableTap):
    """A tap on every stage but ``tool_call``, plus ``_tool_middleware`` on ``tool_call``.

    Subclasses set ``self._tool_middleware`` once in ``__init__`` (a bound method is a new object on every
    attribute access, and :meth:`uninstall` must find the very object :meth:`install` registered).
    """

    _tool_middleware: Callable[[Any, Any], Any]

    def install(self: W, events: Instrumentation) -> W:
        """Tap the loop stages of ``events`` and add the ``tool_call`` middleware; return ``self``."""
        events.tap(self, stages=LOOP_STAGES)
        events.use(Stage.TOOL_CALL, self._tool_middleware)
        return self

    def uninstall(self, events: Instrumentation) -> None:
        """Remove what :meth:`install` registered on ``events``."""
        events.untap(self)
        events.remove(self._tool_middleware, Stage.TOOL_CALL)
