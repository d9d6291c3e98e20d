"""A fast path over DSPy's loop body, for the releases that walk the whole stack on every predictor call.

DSPy 3.1.2 to 3.3.1 call `inspect.stack()` on every `module.forward` lookup, so each predictor call reads every frame
on the stack (about 25 µs a frame). The `generate_action` stand-in (`predictor.Acting`) is one more frame there. Their
sync loop body reads `self.verbose` right after the action predictor returned, before anything uses the action:

    action = self.generate_action(...)
    if self.verbose:

so an instrumented class of such a loop lets DSPy call the predictor itself (no frame of rlm-events in between) and
fires pre_execution on that read, with the action taken from the loop body's frame (its local `action`): the same
object at the same point of the loop, so what pre_execution changes (`action.code`) is what DSPy logs, strips and
runs, as with the stand-in. Checked against DSPy 3.1.2 and 3.3.1. Anywhere else (a loop body of another shape, an
async call, a `prompt_context` to show, a streamed action, a class whose `__getattribute__` does not walk) the
stand-in does it.
"""

from __future__ import annotations

import inspect
import re
from types import CodeType, FrameType
from typing import Any

# `action = self.generate_action(<arguments, one level of parentheses>)` followed by `if self.verbose:`.
_ACTION_THEN_VERBOSE = re.compile(
    r"\baction = self\.generate_action\((?:[^()]|\([^()]*\))*\)\s*\n\s*if self\.verbose\s*:"
)

ENABLED = True
"""Whether instrumented classes created from now on may use the fast path (tests turn it off to pin the stand-in)."""


def action_read_code(cls: Any) -> CodeType | None:
    """The code of `cls._execute_iteration` when pre_execution may fire on its `self.verbose` read (see the module),
    else `None`: the loop body reads `self.generate_action` and `self.verbose` once each, the latter right after the
    former returned into its local `action`; and the class defines no `__getattr__` (which would be handed an
    `AttributeError` that pre_execution raised from the read)."""
    if not ENABLED or hasattr(cls, "__getattr__"):
        return None
    method = getattr(cls, "_execute_iteration", None)
    code = getattr(method, "__code__", None)
    if not isinstance(code, CodeType) or "action" not in code.co_varnames:
        return None
    try:
        source = inspect.getsource(method)  # type: ignore[arg-type]
    except (OSError, TypeError):
        return None
    if source.count("self.verbose") != 1 or source.count("self.generate_action") != 1:
        return None
    return code if _ACTION_THEN_VERBOSE.search(source) else None


def action_in(caller: FrameType, loop_code: CodeType) -> Any:
    """The action the loop body `caller` holds, when `caller` runs `loop_code` (else `None`)."""
    if caller.f_code is not loop_code:
        return None
    return caller.f_locals.get("action")
