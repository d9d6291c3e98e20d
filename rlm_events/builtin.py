"""What every built-in middleware shares: one-line registration on the stages it needs, stage checks, the denial
text a built-in returns instead of calling a tool, and tool-name checks.

It lives below [`rlm_events.builtins`][rlm_events.builtins], [`rlm_events.guard`][rlm_events.guard] and
[`rlm_events.speculate`][rlm_events.speculate], which all
subclass [`Builtin`][rlm_events.builtin.Builtin], so that none of them imports another to get it (`rlm_events.builtins`
re-exports it).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, ClassVar

from .context import StageContext
from .installable import Installable, Registrations
from .stages import Stage

if TYPE_CHECKING:
    from .instrumentation import Instrumentation


# Names every dspy.RLM exposes to the code it runs, besides the user's tools.
RLM_BUILTIN_TOOLS = ("llm_query", "llm_query_batched")


class Builtin(Installable):
    """A `(ctx, next)` middleware object that knows the stages it belongs to.

    `install(events)` registers it on exactly those stages (in [`STAGES`][rlm_events.builtin.Builtin.STAGES] order, in
    one change) and returns
    it; `uninstall(events)` removes those registrations. Called at any other stage it raises `TypeError`
    naming the stage, because a built-in registered by hand on the wrong stage would otherwise do nothing silently.
    """

    STAGES: ClassVar[tuple[Stage, ...]] = ()

    def __call__(self, ctx: Any, next: Any) -> Any:  # pragma: no cover - every built-in overrides it
        raise NotImplementedError

    def registrations(self) -> Registrations:
        return Registrations(middleware=[(stage, self) for stage in self.STAGES])

    def stage_error(self, stage: Stage) -> TypeError:
        """The error for using this middleware at `stage`, which is not one of its
        [`STAGES`][rlm_events.builtin.Builtin.STAGES]."""
        expected = ", ".join(s.value for s in self.STAGES)
        return TypeError(
            f"{type(self).__name__} is a middleware for stage(s) {expected}; it was used at stage "
            f"{stage.value!r}. Register it with {type(self).__name__}(...).install(events)."
        )

    def _wrong_stage(self, ctx: StageContext) -> TypeError:
        return self.stage_error(ctx.stage)


def check_int(owner: str, name: str, value: Any, least: int) -> int:
    """`value` if it is an `int` (not a `bool`) of at least `least`; else a `ValueError` naming
    `owner(name=...)` and what it must be."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{owner}({name}=...) must be an int >= {least}, got {value!r}")
    return value


class ToolDenied(str):
    """The text a built-in returns to the executed code *instead of* calling a tool (a `str`, JSON-safe).

    Other built-ins recognise it: [`ToolCallCache`][rlm_events.builtins.ToolCallCache] never caches a denial.
    """

    __slots__ = ()


def denial_for(name: str, args: tuple[Any, ...], kwargs: dict[str, Any], message: str) -> Any:
    """The denial result shaped like the tool's result: one message per prompt for `llm_query_batched`."""
    if name == "llm_query_batched":
        prompts = args[0] if args else kwargs.get("prompts", [])
        if isinstance(prompts, (list, tuple)):
            return [ToolDenied(message) for _ in prompts]
    return ToolDenied(message)


def tool_names(events: Instrumentation) -> set[str]:
    """Every tool name the code of `events`' RLMs can call."""
    names = set(RLM_BUILTIN_TOOLS)
    for module in events.modules:
        names.update(getattr(module, "tools", {}) or {})
    return names


def check_tool_names(owner: str, wanted: Iterable[str], events: Instrumentation) -> None:
    """Raise `ValueError` naming the closest tool when `wanted` has a name no RLM of `events` exposes."""
    known = tool_names(events)
    if not events.modules:  # nothing attached yet: nothing to check against
        return
    for name in wanted:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{owner}: no tool named {name!r}{hint} Tools of this RLM: {', '.join(sorted(known))}")


__all__ = [
    "RLM_BUILTIN_TOOLS",
    "Builtin",
    "ToolDenied",
    "check_int",
    "check_tool_names",
    "denial_for",
    "tool_names",
]
