"""Reading a field of what a predictor returned (the action's `code`, `reasoning`) on the hot path."""

from __future__ import annotations

from typing import Any

from dspy import Prediction


def field_of(action: Any, name: str, default: Any = None) -> Any:
    """`getattr(action, name, default)`, read from the fields of a plain `dspy.Prediction` by its public `get()`:
    an attribute read on a Prediction first fails, then goes through its `__getattr__`, which costs about as much as
    a whole stage's dispatch. Any other type, subclasses included (one may define `name` as a property), is asked
    with `getattr`."""
    if type(action) is Prediction:
        return action.get(name, default)
    return getattr(action, name, default)


__all__ = ["field_of"]
