"""A fast path over DSPy's check for direct `module.forward(...)` calls, on the releases that walk the whole stack.

DSPy 3.1.2 to 3.4.0 warn about a direct `forward()` call from `dspy.Module.__getattribute__`, which calls
`inspect.stack()` on every `forward` lookup: once per iteration for the action predictor, reading the source line of
every frame on the stack (about 25 µs a frame). An instrumented loop has two frames of rlm-events on that stack (the
`forward` and `_execute_iteration` seams, which wrap DSPy's own methods rather than copy them), so on these releases
the seams' frames cost more than everything they do. DSPy 3.4.1 replaced the walk with a look at the caller's
frame (`sys._getframe(1)`): the same warning in exactly the same cases, since `inspect.stack()[1].function` is the
caller's `co_name`.

While an RLM is instrumented, its own modules (`generate_action`, `extract`, any `dspy.Module` attribute) whose class
uses DSPy's walking check get a cached stand-in subclass with DSPy 3.4.1's check: same name, qualified name and
module, `isinstance` as before, pickled and copied as the plain class. `uninstrument()` gives them their class back.
A class with a `__getattribute__` of its own, and every release whose check does not walk, is left as it is (the
public path: DSPy's own check). Checked against DSPy 3.1.2 to 3.4.0 (walk: stand-ins) and 3.4.1 (no walk).
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
from typing import Any

import dspy

from .subclass import base_of, is_stand_in, stand_in_namespace


@functools.cache
def walks_the_stack(getattribute: Any) -> bool:
    """Whether the `__getattribute__` function `getattribute` calls `inspect.stack()` (DSPy before 3.4.1)."""
    try:
        return "inspect.stack(" in inspect.getsource(getattribute)
    except (OSError, TypeError):  # a slot wrapper (object's own) or no source shipped
        return False


def class_walks_the_stack(cls: Any) -> bool:
    return walks_the_stack(cls.__getattribute__)


def warn_if_direct(module: Any, name: str, attr: Any, caller: str) -> None:
    """DSPy's warning for a `forward` read by anything but `__call__`, word for word (DSPy 3.4.1's check)."""
    if name == "forward" and caller != "__call__" and callable(attr):
        logging.getLogger("dspy.primitives.module").warning(
            f"Calling module.forward(...) on {type(module).__name__} directly is discouraged. "
            "Please use module(...) instead."
        )


def _getattribute(self: Any, name: str) -> Any:
    """DSPy 3.4.1's `Module.__getattribute__` (`object`'s lookup, then the caller-frame check)."""
    attr = object.__getattribute__(self, name)
    if name == "forward":
        warn_if_direct(self, name, attr, sys._getframe(1).f_code.co_name)
    return attr


@functools.cache
def _stand_in(cls: Any) -> Any:
    return type(cls)(cls.__name__, (cls,), {"__getattribute__": _getattribute, **stand_in_namespace(cls)})


def _walking_module(value: Any) -> bool:
    # Only DSPy's own check is replaced: the object's class must take it from dspy.Module unchanged, and dspy.Module's
    # must be the walking one (whose parent lookup is object's, as _getattribute's is).
    cls = type(value)
    return (
        isinstance(value, dspy.Module)
        and not is_stand_in(cls)
        and cls.__getattribute__ is dspy.Module.__getattribute__
        and _module_walks()
    )


@functools.cache
def _module_walks() -> bool:
    """dspy.Module's check walks the stack, and what it looks the attribute up with is object's own."""
    above = dspy.Module.__mro__[1:-1]
    return class_walks_the_stack(dspy.Module) and all("__getattribute__" not in vars(k) for k in above)


def check_by_caller_frame(module: Any) -> None:
    """Give `module` DSPy 3.4.1's direct-call check if it has DSPy's walking one (else nothing)."""
    if not _walking_module(module):
        return
    cls: Any = type(module)
    try:
        module.__class__ = _stand_in(cls)
    except Exception:  # a class that refuses subclasses (its __init_subclass__, its metaclass): DSPy's own check
        return


def check_by_stack_walk(module: Any) -> None:
    """Undo `check_by_caller_frame(module)` (nothing if it was not done)."""
    cls = type(module)
    if is_stand_in(cls) and cls.__dict__.get("__getattribute__") is _getattribute:
        module.__class__ = base_of(cls)


def own_modules(rlm: Any) -> list[Any]:
    """The `dspy.Module` attributes of `rlm` itself (its predictors and sub-modules one level down)."""
    return [value for value in vars(rlm).values() if isinstance(value, dspy.Module)]
