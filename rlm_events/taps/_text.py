"""Text helpers shared by the taps: bounded previews and recognising failed-execution results."""

from __future__ import annotations

from typing import Any

ERROR_PREFIXES = ("[Error]", "[Type Error]")
"""How DSPy (and rlm-events' middleware) begin the result text of code that failed."""


def preview(value: Any, limit: int) -> str:
    """``value`` as text of at most about ``limit`` characters: strings as they are, anything else by ``repr``.

    Never raises: a ``repr`` that fails gives ``<unrepresentable TypeName>``.
    """
    if isinstance(value, str):
        text = value
    else:
        try:
            text = repr(value)
        except Exception:
            text = f"<unrepresentable {type(value).__name__}>"
    if len(text) > limit:
        return f"{text[:limit]}… [+{len(text) - limit} chars]"
    return text


def is_error_result(result: Any) -> bool:
    """Whether an execution result is the ``[Error] …`` (or ``[Type Error] …``) text the LM gets for failed code."""
    return isinstance(result, str) and result.startswith(ERROR_PREFIXES)
