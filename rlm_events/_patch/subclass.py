"""Cached subclasses that stand in for a DSPy class on one instance (`instance.__class__ = subclass`) and are, to
pickle and copy, the class they stand in for."""

from __future__ import annotations

import copyreg
from typing import Any

from .detect import ATTR, BASE


def base_of(cls: Any) -> Any:
    """The DSPy class a stand-in subclass was made from (`cls` itself when it is not one)."""
    return cls.__dict__.get(BASE, cls)


def is_stand_in(cls: Any) -> bool:
    return BASE in cls.__dict__


def reduce_to_base(self: Any, protocol: int) -> tuple[Any, ...]:
    """`__reduce_ex__` of a stand-in: pickle (and `copy.copy`/`copy.deepcopy`) as the plain DSPy class.
    Instrumentation holds live callables and is not state."""
    state = self.__getstate__()
    if isinstance(state, dict):
        state = {k: v for k, v in state.items() if k != ATTR}
    # Not copyreg.__newobj__: pickle refuses it for a class other than the object's own. _reconstructor(cls, object,
    # None) is object.__new__(cls), and needs nothing from rlm-events to unpickle.
    return copyreg._reconstructor, (base_of(type(self)), object, None), state  # type: ignore[attr-defined]


def stand_in_namespace(cls: Any) -> dict[str, Any]:
    """What every stand-in subclass of `cls` defines: its base, and its base's names and pickling."""
    return {"__reduce_ex__": reduce_to_base, BASE: cls, "__module__": cls.__module__, "__qualname__": cls.__qualname__}
