"""Text helpers shared by the taps: bounded previews and recognising failed-execution results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

ERROR_PREFIXES = ("[Error]", "[Type Error]")
"""How DSPy (and rlm-events' middleware) begin the result text of code that failed."""


def _text(convert: Callable[[Any], str], value: Any, failed: str) -> str:
    """`convert(value)`, or `failed` (its `{}` the value's type name) when the value's own method raises."""
    try:
        return convert(value)
    except Exception:
        return failed.format(type(value).__name__)


def safe_repr(value: Any) -> str:
    """`repr(value)`; never raises: a `repr` that fails gives `<unrepresentable TypeName>`."""
    return _text(repr, value, "<unrepresentable {}>")


def error_message(error: BaseException, unprintable: str = "<unprintable message>") -> str:
    """`str(error)`; never raises: a `__str__` that fails gives `unprintable`."""
    return _text(str, error, unprintable)


def error_text(error: BaseException, unprintable: str = "<unprintable message>") -> str:
    """`'Type: message'` of `error` (the type's name alone when the message is empty); never raises: a `__str__`
    that fails gives `unprintable` as the message."""
    message = error_message(error, unprintable)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def preview(value: Any, limit: int) -> str:
    """`value` as text of at most about `limit` characters: strings as they are, anything else by `repr`.

    Never raises (see `safe_repr()`).
    """
    text = value if isinstance(value, str) else safe_repr(value)
    if len(text) > limit:
        return f"{text[:limit]}… [+{len(text) - limit} chars]"
    return text


def is_error_result(result: Any) -> bool:
    """Whether an execution result is the `[Error] …` (or `[Type Error] …`) text the LM gets for failed code."""
    return isinstance(result, str) and result.startswith(ERROR_PREFIXES)
