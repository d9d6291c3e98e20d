"""DSPy's sandbox `dspy` facade: the predictor calls a REPL's code makes through it, routed through a function of
the caller's.

From DSPy 3.4.1, code in an RLM's REPL may build and call DSPy predictors (`p = dspy.Predict("q -> a");
p(q="...")`): a shim in the interpreter stands in for `dspy`, and asks the host over two tools that
`RLM._setup_facade` adds to the interpreter's `tools` after the loop's own ones (so they never pass the `tool_call`
stage): `__dspy_construct__` builds the predictor on the host (free, no LM call) and `__dspy_call__` runs it (its
LM calls are paid, and charged against `max_llm_calls`). Checked against DSPy 3.4.0 (no facade) and 3.4.1.

[`around_facade_calls()`][rlm_events._patch.facade.around_facade_calls] puts a function around the
`__dspy_call__` of the interpreter a run's current iteration executes in (`dspy.LocalInterpreter` and the library's
`Sandboxed` look a tool up in `interpreter.tools` when the code calls it). Where there is no facade (a release
before 3.4.1, an interpreter that could not host the shim, a subclass that installs none) it does nothing and
answers `False`: there are no such calls to route.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..context import Run
from .exposed import current_iteration

try:  # DSPy 3.4.1+
    from dspy.primitives.facade import CALL_TOOL
except ImportError:  # an older release: no facade
    CALL_TOOL = "__dspy_call__"

FacadeCall = Callable[[Callable[..., Any], tuple[Any, ...], dict[str, Any]], Any]
"""`around(call, args, kwargs)`: answers one facade predictor call, making it with `call(*args, **kwargs)` or not."""

_AROUND = "__rlm_events_facade__"  # on a routed tool: (the tool it routes, the function around it)


def _installed(interpreter: Any) -> tuple[Callable[..., Any], FacadeCall | None] | None:
    """DSPy's predictor-call tool in `interpreter.tools` (under any routing of ours) and the function our routing
    puts around it now (`None` when unrouted); `None` when the interpreter has no facade."""
    tools = getattr(interpreter, "tools", None)
    tool = tools.get(CALL_TOOL) if isinstance(tools, dict) else None
    if not callable(tool):
        return None
    routed: tuple[Callable[..., Any], FacadeCall] | None = getattr(tool, "__dict__", {}).get(_AROUND)
    return routed if routed is not None else (tool, None)


def facade_call_of(interpreter: Any) -> Callable[..., Any] | None:
    """The facade's predictor-call tool of `interpreter` as DSPy installed it (under any routing of ours), or `None`
    when it has none."""
    found = _installed(interpreter)
    return found[0] if found is not None else None


def around_facade_calls(run: Run, around: FacadeCall) -> bool:
    """Route the facade predictor calls of the interpreter `run`'s current iteration executes in through `around`
    (once: a second call with the same `around` changes nothing; another `around` replaces it). `False` outside an
    iteration of `run`, or when its interpreter has no facade."""
    found = current_iteration(run)
    return found is not None and route_calls(found[0], around)


def route_calls(interpreter: Any, around: FacadeCall) -> bool:
    """[`around_facade_calls()`][rlm_events._patch.facade.around_facade_calls] on `interpreter` itself."""
    found = _installed(interpreter)
    if found is None:
        return False
    call, routing = found
    if routing is around:
        return True

    def routed_call(*args: Any, **kwargs: Any) -> Any:
        return around(call, args, kwargs)

    routed_call.__dict__[_AROUND] = (call, around)
    interpreter.tools[CALL_TOOL] = routed_call
    return True


__all__ = ["CALL_TOOL", "FacadeCall", "around_facade_calls", "facade_call_of", "route_calls"]
