"""The [`ReplayTools`][rlm_events.replay.replay_tools.ReplayTools]: a `tool_call` middleware that serves a
recording's tool results."""

from __future__ import annotations

import builtins
import contextlib
import json
import threading
from collections import deque
from typing import Any, Literal

from ..context import ToolCallContext
from ..installable import Installable, Registrations
from ..stages import Stage
from ._json import jsonable
from .recording import RecordedToolCall, Recording, ReplayExhaustedError


def _canonical(name: str, args: Any, kwargs: Any) -> str:
    return json.dumps([name, args, kwargs], sort_keys=True, default=repr, ensure_ascii=False)


_ReplayedErrors: dict[str, type[Exception]] = {}


def _replayed_error(call: RecordedToolCall) -> Exception:
    """An exception with the recorded class name and args (built-in classes are reused), as the code saw it."""
    name = call.error_type or "Exception"
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        cls = builtin
    else:
        cls = _ReplayedErrors.setdefault(name, type(name, (Exception,), {"__module__": "rlm_events.replay"}))
    if call.error_args is not None:
        with contextlib.suppress(Exception):  # a class whose constructor wants other arguments
            return cls(*call.error_args)
    return cls(call.error_message or "")


class ReplayTools(Installable):
    """A `tool_call` middleware that serves a recording's tool results instead of calling the tools.

    A call gets the next unserved recorded result of a call with the same name and the same (JSON) arguments;
    a recorded error is raised again (same class name and message). A call the recording does not hold raises
    [`ReplayExhaustedError`][rlm_events.replay.recording.ReplayExhaustedError] (`on_missing="error"`, the default) or
    goes to the real tool
    (`on_missing="call"`). Install it after your own `tool_call` middleware. Thread-safe.
    """

    def __init__(self, recording: Recording, *, on_missing: Literal["error", "call"] = "error") -> None:
        if on_missing not in ("error", "call"):
            raise ValueError(f"on_missing must be 'error' or 'call', got {on_missing!r}")
        recording.check()
        self.recording = recording
        self.on_missing = on_missing
        self._lock = threading.Lock()
        self._queues: dict[str, deque[RecordedToolCall]] = {}
        self.served = 0
        for call in recording.tool_calls:
            self._queues.setdefault(_canonical(call.name, call.args, call.kwargs), deque()).append(call)
        self._middleware = self._serve  # one object, so uninstall() can find it

    def registrations(self) -> Registrations:
        """The replaying middleware, innermost so far in the `tool_call` chain: install it last."""
        return Registrations(middleware=[(Stage.TOOL_CALL, self._middleware)])

    def remaining(self) -> list[RecordedToolCall]:
        """The recorded tool calls not served yet, in recorded order."""
        with self._lock:
            return sorted((c for q in self._queues.values() for c in q), key=lambda c: c.index)

    def _serve(self, ctx: ToolCallContext, next: Any) -> ToolCallContext:
        args, _ = jsonable(list(ctx.args))
        kwargs, _ = jsonable(dict(ctx.kwargs))
        with self._lock:
            index = self.served
            self.served += 1
            queue = self._queues.get(_canonical(ctx.name, args, kwargs))
            recorded = queue.popleft() if queue else None
        if recorded is None:
            if self.on_missing == "call":
                return next(ctx)
            where = "" if ctx.iteration is None else f" in iteration {ctx.iteration + 1}"
            shown = _canonical(ctx.name, args, kwargs)
            raise ReplayExhaustedError(
                f"ReplayTools has no recorded result for tool call {index} (0-based){where}: {shown[:200]}. "
                f"The recording of run {self.recording.run_id} holds {len(self.recording.tool_calls)} tool calls; "
                "the replay diverged from the recorded run (pass on_missing='call' to call the real tool instead).",
                call_index=index,
            )
        if recorded.error_type is not None:
            raise _replayed_error(recorded)
        if not recorded.exact:
            raise ReplayExhaustedError(
                f"tool call {index} ({ctx.name}): the recorded result was not JSON and cannot be replayed",
                call_index=index,
            )
        ctx.result = recorded.result
        return ctx
