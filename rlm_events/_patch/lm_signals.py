"""What the usage meter reads of DSPy's LM-call internals, release by release: how the call starting now streams,
whether a response was assembled by LiteLLM, and whether a streamed call failed after the provider answered.

[`rlm_events.lm_usage`][rlm_events.lm_usage] decides what these facts mean for the bill; this module only knows where
DSPy keeps
them (`dspy.settings.send_stream` / `track_usage`, DSPy 3.4's `dspy.clients.execution` stream readers).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any, Literal

import dspy

_STREAM_READERS = frozenset({"_attempt", "_aattempt"})  # the functions of DSPy 3.4's _EXECUTION reading a stream
_EXECUTION = "dspy.clients.execution"


def stream_mode() -> Literal["usage", "estimated"] | None:
    """How the LM call starting now streams: `None` (not: no `dspy.streamify` stream is open), `"usage"`
    (DSPy asks the provider for the stream's usage) or `"estimated"` (it does not, on the LiteLLM path)."""
    settings = dspy.settings
    if getattr(settings, "send_stream", None) is None:
        return None
    return "usage" if getattr(settings, "track_usage", False) else "estimated"


def assembled_by_litellm(entry: dict[str, Any]) -> bool:
    """Whether the history entry's response was assembled by LiteLLM (DSPy's LiteLLM path, where a stream's usage
    is only the provider's when DSPy asked for it), not by DSPy 3.4's own engines (which always ask)."""
    return type(entry.get("response")).__module__.split(".", 1)[0] == "litellm"


def failed_after_answer(exception: BaseException | None) -> bool:
    """Whether a streamed call failed inside DSPy while it passed the provider's answer on to the stream's
    listener: DSPy 3.4 reads the provider's stream (the request was answered and billed) and sends each chunk
    with `anyio.from_thread.run`, which fails in a thread AnyIO did not start (`llm_query_batched`'s workers).
    Read from the traceback (the failure or its causes): a frame of DSPy's stream reader calling into AnyIO.
    DSPy before 3.4 fails the same way *before* sending the request: nothing was billed, nothing is counted."""
    seen: set[int] = set()
    while exception is not None and id(exception) not in seen:
        seen.add(id(exception))
        frames = [tb.tb_frame for tb in _walk(exception.__traceback__)]
        for caller, callee in itertools.pairwise(frames):
            reader = caller.f_code.co_name in _STREAM_READERS and caller.f_globals.get("__name__") == _EXECUTION
            if reader and str(callee.f_globals.get("__name__", "")).startswith("anyio"):
                return True
        exception = exception.__cause__ or exception.__context__
    return False


def _walk(tb: Any) -> Iterable[Any]:
    while tb is not None:
        yield tb
        tb = tb.tb_next


__all__ = ["assembled_by_litellm", "failed_after_answer", "stream_mode"]
