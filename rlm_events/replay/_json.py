"""How the recorder keeps what a run passed and returned: as JSON-compatible data, exactly when it can."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def jsonable(value: Any) -> tuple[Any, bool]:
    """`value` as JSON-compatible data, and whether that is exact (False: only a repr could be kept)."""
    try:
        json.dumps(value)
        return value, True
    except (TypeError, ValueError):
        pass
    try:
        return _ANY.dump_python(value, mode="json"), True  # pydantic models, dataclasses, datetimes, sets, …
    except Exception:
        try:
            return {"__repr__": repr(value)}, False
        except Exception:
            return {"__repr__": f"<unrepresentable {type(value).__name__}>"}, False
