"""dspy-rlm-hooks 0.1.15's speculation API (`enable_rlm_speculation`, `SpecTool`) on
[`rlm_events.builtins.Speculate`][rlm_events.builtins.Speculate].

What differs from 0.1.15, by design: the shadow pass is our planner, which evaluates the code's syntax tree over
plain-data copies of values and never runs the code (no subprocess); and a pure tool is never called twice for one
real call (0.1.15 allows it).

`streaming` means what it meant in 0.1.15: `True` (the default) streams `generate_action`'s code while the main LM
writes it and dispatches calls during the generation, falling back to planning over the assembled code where the LM
cannot stream (0.1.15's Lazy/JIT fallback); `False` plans over the assembled code only. It is
[`Speculate(stream=...)`][rlm_events.builtins.Speculate], in sync and async calls alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import dspy

from ..instrumentation import instrumentation_of
from ..speculate import Speculate
from ._adapters import hooks_on
from ._ownership import instrument_for_api, owned, release


class speculative:
    """Marks a tool as pure (no observable side effects), so that its calls may be made ahead of the code.

    `name` defaults to the function's `__name__` and must be the name the tool has in the REPL. The hints
    `deterministic` and `latency_hint_ms` are accepted for compatibility; the planner does not need them.
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        deterministic: bool = True,
        latency_hint_ms: float | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"SpecTool() wraps a tool function, got {type(fn).__name__}")
        self.fn, self.deterministic, self.latency_hint_ms = fn, deterministic, latency_hint_ms
        self.name: str = name or str(getattr(fn, "__name__", type(fn).__name__))

    def __repr__(self) -> str:
        return f"SpecTool({self.name})"


SpecTool = Spec = speculative

_INSTALLED = "rlm_events.hooks:speculate"


def _pure_names(tools: Iterable[Any] | Mapping[str, Any], speculate_user_tools: bool) -> list[str]:
    if isinstance(tools, Mapping):  # 0.1.15's {name: tool} form: every entry is speculated
        return [str(name) for name in tools]
    names: list[str] = []
    for tool in tools:
        if isinstance(tool, speculative):
            names.append(tool.name)
        elif speculate_user_tools:
            fn = tool[0] if isinstance(tool, tuple) else tool
            names.append(fn.name if isinstance(fn, dspy.Tool) else getattr(fn, "__name__", str(fn)))
    return names


def enable_rlm_speculation(
    rlm: dspy.RLM,
    *,
    tools: Iterable[Any] | Mapping[str, Any] = (),
    speculate_user_tools: bool = False,
    max_inflight: int = 8,
    max_dispatches_per_turn: int = 2048,
    timeout_s: float = 5.0,
    streaming: bool = True,
) -> Speculate:
    """Make `rlm`'s `llm_query`/`llm_query_batched` calls, and those of `tools` wrapped in
    [`SpecTool`][rlm_events.hooks.speculation.SpecTool] (every tool in `tools` with `speculate_user_tools=True`), ahead
    of the code that makes
    them; replaces speculation enabled before. Returns the installed [`Speculate`][rlm_events.builtins.Speculate].

    Composes with [`enable_rlm_hooks()`][rlm_events.hooks.enable_rlm_hooks] in either order;
    [`disable_rlm_speculation()`][rlm_events.hooks.speculation.disable_rlm_speculation] undoes it."""
    if not isinstance(streaming, bool):
        raise TypeError(f"enable_rlm_speculation(streaming=...) must be True or False, got {streaming!r}")
    events, _ = instrument_for_api(rlm)
    pure = _pure_names(tools, speculate_user_tools)
    speculate = Speculate(
        pure, max_in_flight=max_inflight, max_per_iteration=max_dispatches_per_turn, timeout=timeout_s, stream=streaming
    )
    previous = rlm.__dict__.get(_INSTALLED)
    if isinstance(previous, Speculate):
        previous.uninstall(events)
    speculate.install(events)
    rlm.__dict__[_INSTALLED] = speculate
    return speculate


def disable_rlm_speculation(rlm: dspy.RLM) -> None:
    """Undo [`enable_rlm_speculation()`][rlm_events.hooks.speculation.enable_rlm_speculation] on `rlm` (a no-op when it
    is not enabled).

    When the 0.1.15 API (this function's twin or [`enable_rlm_hooks()`][rlm_events.hooks.enable_rlm_hooks]) instrumented
    `rlm`
    and nothing else uses the instrumentation any more, `rlm` is uninstrumented: its class and `__dict__` are
    exactly as before, in whatever order hooks and speculation were enabled and disabled."""
    speculate = rlm.__dict__.pop(_INSTALLED, None)
    events = instrumentation_of(rlm)
    if events is None:
        return
    if isinstance(speculate, Speculate):
        speculate.uninstall(events)
    release(rlm, events, owned(events, list(hooks_on(events))))


__all__ = ["Spec", "SpecTool", "disable_rlm_speculation", "enable_rlm_speculation", "speculative"]
