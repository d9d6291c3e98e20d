"""Streaming `generate_action`'s LM call internally, for a consumer that reads the answer as it is written.

DSPy streams an LM call when `dspy.settings.send_stream` is set: its LM (LiteLLM on 3.1.2-3.3, its engines on 3.4)
makes the request with `stream=True`, sends every chunk to `send_stream.send` through
`anyio.from_thread.run` (so the call must run in an AnyIO worker thread), and assembles the chunks into the
same response a non-streamed call returns (the history entry, the usage, the cache entry). This module runs the
predictor's call that way, in a worker thread of a private blocking portal, with the caller's context (DSPy's
settings, the run) copied in, and hands the text of each chunk to the consumer. In async calls (`acall`,
`aforward`: `agenerate`) DSPy awaits `send` on the caller's event loop, so the call streams right there. The user
does not wrap anything in `dspy.streamify`.

It streams only a `dspy.Predict` whose LM is a plain `dspy.LM` of chat type, when nothing else is streaming
(`send_stream` unset). Anything else, a cache hit (no chunk arrives), or an error mid-stream falls back: the
predictor is called as without streaming (after an error: again, without streaming), and the consumer is told
why once (`failed`). An answer that came whole but fails (a parse error) is the call's own error: raised as
without streaming, never asked again; and on DSPy 3.4 the adapter's JSON fallback still happens, as without
streaming (see `_quiet_emission`).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import dspy

from .resume import RecordedActions

ACTION_STREAM = "rlm_events:action_stream"
"""Where a run's `state` holds the opener of its action streams (see `rlm_events.runtime.stream_actions`)."""


class ActionSink(Protocol):
    """What reads one action's text as it streams: `feed(text)` for each piece, `failed(reason)` when the call
    fell back to a non-streamed one."""

    def feed(self, text: str) -> None: ...

    def failed(self, reason: str) -> None: ...


Opener = Callable[[int], "ActionSink | None"]


def unstreamable(predictor: Any) -> str | None:
    """Why `predictor`'s LM call cannot be streamed here (`None`: it can)."""
    if not isinstance(predictor, dspy.Predict):
        return f"generate_action is a {type(predictor).__qualname__}, not a dspy.Predict"
    if dspy.settings.send_stream is not None:
        return "the call is already streamed to a dspy.streamify consumer"
    lm = getattr(predictor, "lm", None) or dspy.settings.lm
    if type(lm) is not dspy.LM:
        return f"the main LM is a {type(lm).__qualname__}, not a dspy.LM"
    if getattr(lm, "model_type", "chat") != "chat":
        return f"the main LM's model_type is {lm.model_type!r}, not 'chat'"
    return None


def chunk_text(chunk: Any) -> str:
    """The text a streamed chunk adds (`""` for usage chunks, predictions and anything else)."""
    choices = getattr(chunk, "choices", None)
    if not choices:
        return ""
    delta = getattr(choices[0], "delta", None)
    content = getattr(delta, "content", None) if delta is not None else None
    return content if isinstance(content, str) else ""


class _Send:
    """`dspy.settings.send_stream` for one call: DSPy awaits `send(chunk)` on the portal's event loop (sync
    calls) or on the caller's (async ones)."""

    def __init__(self, sink: ActionSink, context: contextvars.Context) -> None:
        self.sink, self.context, self.chunks = sink, context, 0
        self.streams: set[Any] = set()  # the ids of the streamed answers (an adapter's fallback makes a second)
        self.whole: set[Any] = set()  # those a chunk said why they ended

    @property
    def finished(self) -> bool:
        """Every answer streamed came whole: an error of the call is its own, not a broken stream's."""
        return bool(self.whole) and self.streams <= self.whole

    async def send(self, chunk: Any) -> None:
        ident = getattr(chunk, "id", None)
        self.streams.add(ident)
        choices = getattr(chunk, "choices", None)
        if choices and getattr(choices[0], "finish_reason", None):
            self.whole.add(ident)
        text = chunk_text(chunk)
        if text:
            self.chunks += 1
            self.context.run(self.sink.feed, text)  # in the run's context: what it dispatches is the run's

    def ended(self) -> None:
        """The call returned: if no chunk came, it was not streamed after all."""
        if self.chunks == 0:
            self.sink.failed("no chunk was streamed (a cache hit, or an LM that answered at once)")


class _Fed:
    """The sink of a predictor that is not streamed, counting what the predictor fed it itself."""

    def __init__(self, sink: ActionSink) -> None:
        self.sink, self.pieces = sink, 0

    def feed(self, text: str) -> None:
        self.pieces += 1
        self.sink.feed(text)


_WRITING: contextvars.ContextVar[_Fed | None] = contextvars.ContextVar("rlm_events_action_writing", default=None)


def feed_action_text(text: str) -> bool:
    """For a `generate_action` that is not a streamed `dspy.Predict` but produces its answer piece by piece (a
    remote or scripted model): hand the next piece of the answer (DSPy's chat format, or the code itself, fenced)
    to whoever reads the action as it is written. `False` when nobody does (outside such a call)."""
    fed = _WRITING.get()
    if fed is None or not isinstance(text, str):
        return False
    fed.feed(text)
    return True


def _live(predictor: Any) -> Any:
    """The predictor whose LM call may stream: `predictor`, or under a resumed run's stand-in
    (`rlm_events._patch.resume`) the real one; `None` when the stand-in has the action recorded (no LM call)."""
    return predictor.live_predictor() if isinstance(predictor, RecordedActions) else predictor


def _sink_of(run_state: dict[str, Any], index: int) -> ActionSink | None:
    opener = run_state.get(ACTION_STREAM)
    return opener(index) if callable(opener) else None


@contextlib.contextmanager
def _writing(sink: ActionSink, reason: str) -> Iterator[None]:
    """Around a predictor that cannot be streamed: it may feed its answer itself (`feed_action_text`); if it fed
    nothing, the sink is told why once it answered."""
    fed = _Fed(sink)
    token = _WRITING.set(fed)
    try:
        yield
    finally:
        _WRITING.reset(token)
    if not fed.pieces:
        sink.failed(reason)


def _broke_off(exc: Exception) -> str:
    return f"the streamed call failed ({type(exc).__name__}: {exc}); made it again without streaming"


def generate(run_state: dict[str, Any], index: int, predictor: Any, args: Any, kwargs: Any) -> Any:
    """Call `predictor(*args, **kwargs)` for iteration `index`, streamed to the run's action sink when it has one
    and the call can stream; else as is. The result is the predictor's, streamed or not."""
    live = _live(predictor)
    sink = _sink_of(run_state, index) if live is not None else None
    if sink is None:
        return predictor(*args, **kwargs)
    predictor = live
    reason = unstreamable(predictor)
    if reason is not None:
        with _writing(sink, reason):
            return predictor(*args, **kwargs)
    send = _Send(sink, contextvars.copy_context())
    try:
        return streamed(predictor, args, kwargs, send)
    except Exception as exc:
        if send.finished:  # the answers came whole: the error is the call's own (a parse error), as without streaming
            raise
        # a stream that broke off or could not be read: make the call as without streaming
        sink.failed(_broke_off(exc))
        return predictor(*args, **kwargs)


async def agenerate(
    run_state: dict[str, Any], index: int, predictor: Any, acall: Callable[..., Any], args: Any, kwargs: Any
) -> Any:
    """The async twin of `generate`: `await acall(*args, **kwargs)` (`predictor`'s `acall` or `aforward`) for
    iteration `index`, streamed to the run's action sink when it has one and the call can stream. DSPy awaits
    `send_stream.send(chunk)` on the caller's own event loop in async calls, so the stream is read right there
    (no portal, no thread): each call of each concurrent `acall` streams in its own task."""
    live = _live(predictor)
    sink = _sink_of(run_state, index) if live is not None else None
    if sink is None:
        return await acall(*args, **kwargs)
    reason = unstreamable(live)  # `acall` is the stand-in's, which asks the real predictor
    if reason is not None:
        with _writing(sink, reason):
            return await acall(*args, **kwargs)
    send = _Send(sink, contextvars.copy_context())
    _quiet_emission()
    try:
        with _streaming(send):
            result = await acall(*args, **kwargs)
    except Exception as exc:
        if send.finished:
            raise
        sink.failed(_broke_off(exc))
        return await acall(*args, **kwargs)
    send.ended()
    return result


_INTERNAL: contextvars.ContextVar[bool] = contextvars.ContextVar("rlm_events_internal_stream", default=False)
_QUIETED: list[bool] = []
_QUIET_LOCK = threading.Lock()


def _quiet_emission() -> None:
    """DSPy 3.4 marks an adapter call whose stream reached a consumer as *emitted* (`stream_emitted()`), and then
    skips the adapter's JSON fallback after a parse error: the user has seen output. An internal stream reaches no
    user, so its calls keep the fallbacks of a non-streamed call: `stream_emitted` does nothing inside one. Installed
    once, on the first streamed call (DSPy before 3.4 has no such rule)."""
    with _QUIET_LOCK:
        if _QUIETED:
            return
        _QUIETED.append(True)
        try:
            from dspy.clients import execution
        except ImportError:
            return
        original = getattr(execution, "stream_emitted", None)
        if not callable(original):
            return

        def stream_emitted(*args: Any, **kwargs: Any) -> Any:
            if not _INTERNAL.get():
                return original(*args, **kwargs)
            return None

        execution.stream_emitted = stream_emitted  # type: ignore[attr-defined]


@contextlib.contextmanager
def _streaming(send: _Send) -> Iterator[None]:
    """DSPy's settings that stream the LM calls made inside to `send`, marked internal (see `_quiet_emission`).
    `track_usage`: DSPy 3.1-3.3 ask the provider for the stream's usage only then (3.4's engines always do)."""
    token = _INTERNAL.set(True)
    try:
        with dspy.settings.context(send_stream=send, stream_listeners=[], track_usage=True):
            yield
    finally:
        _INTERNAL.reset(token)


def streamed(predictor: Any, args: Any, kwargs: Any, send: _Send) -> Any:
    """`predictor(*args, **kwargs)` with its LM call streamed, each chunk's text fed to `send`'s sink."""
    import anyio.from_thread
    import anyio.to_thread

    context = contextvars.copy_context()

    _quiet_emission()

    def call() -> Any:
        with _streaming(send):
            return predictor(*args, **kwargs)

    with anyio.from_thread.start_blocking_portal() as portal:
        result = portal.call(functools.partial(anyio.to_thread.run_sync, lambda: context.run(call)))
    send.ended()
    return result


__all__ = [
    "ACTION_STREAM",
    "ActionSink",
    "agenerate",
    "chunk_text",
    "feed_action_text",
    "generate",
    "streamed",
    "unstreamable",
]
