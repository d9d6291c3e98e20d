"""Record every stage event of instrumented `dspy.RLM` calls as JSON Lines, one object per event.

```pycon
>>> trace = JsonlTrace("rlm-trace.jsonl")  # doctest: +SKIP
>>> events.tap(trace)  # or trace.install(events)  # doctest: +SKIP

```

Guarantees: each event is serialized, appended as one line and flushed before the tap returns, under one lock, so
lines of concurrent calls never interleave and a crash loses at most the event being written. A line is a line for
every reader (`str.splitlines` included: Unicode line separators are escaped too). Values that are not JSON are
previewed with `repr`; nothing a value does (a failing `repr` included) makes recording fail.

Each line is one record of `rlm_events.trace.schema` (the format's fields and their meaning are documented
there); [`read_trace()`][rlm_events.trace.reader.read_trace] reads the file back, `python -m rlm_events view` renders
it.
The `usage` field is the run's one meter ([`rlm_events.lm_usage`][rlm_events.lm_usage]): every LM call attributed to the
call that
made it, concurrent calls on one LM instance included; the same counts a Budget, the spans and the progress display
see. Its `cost_usd` is `null` while the cost is unknown (never `0.0` then); calls DSPy's cache answered appear
as `cached_lm_calls` and `saved_cost_usd` (see [`LMUsage`][rlm_events.trace.schema.LMUsage]).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import datetime, timezone
from types import TracebackType
from typing import IO, Any

from .. import context
from ..delivery import defer, flush
from ..lm_history import module_label
from ..lm_usage import meter_run, metered
from ..runtime import iteration_limit
from ..stages import Stage
from ..taps._span_tap import durable_link
from ..taps._text import error_text, is_error_result, preview
from ..taps._tool_tap import InstallableTap
from .schema import SCHEMA_VERSION

logger = logging.getLogger("rlm_events")

# -- previews -------------------------------------------------------------------------------------------------


def _fields_preview(prediction: Any, limit: int) -> dict[str, str] | None:
    """The output fields of a `Prediction` (its trajectory left out: it repeats the whole history)."""
    if prediction is None:
        return None
    try:
        items = dict(prediction.items())
    except Exception:
        return {"value": preview(prediction, limit)}
    return {name: preview(value, limit) for name, value in items.items() if name != "trajectory"}


def _call_preview(args: tuple[Any, ...], kwargs: dict[str, Any], limit: int) -> str:
    parts = [preview(a, limit) if not isinstance(a, str) else repr(a) for a in args]
    parts += [f"{k}={v!r}" if isinstance(v, str) else f"{k}={preview(v, limit)}" for k, v in kwargs.items()]
    return preview(", ".join(parts), limit)


def _history_len(history: Any) -> int | None:
    try:
        return len(history)
    except Exception:
        return None


# Characters json.dumps leaves raw that str.splitlines() (and so many line readers) still break lines at.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _one_line(text: str) -> str:
    """JSON text that every line reader sees as one line (those characters only occur inside JSON strings)."""
    return text.translate(_LINE_BREAKS)


# -- LM usage -------------------------------------------------------------------------------------------------


def usage_of(run: context.Run) -> dict[str, Any] | None:
    """The LM use of `run` so far (the schema's `usage`), from the run's one meter
    ([`rlm_events.lm_usage`][rlm_events.lm_usage]),
    or `None` when the run is not metered."""
    usage = metered(run)
    return usage.record() if usage is not None else None


# -- the tap --------------------------------------------------------------------------------------------------


class _RunClock:
    __slots__ = ("last",)

    def __init__(self, now: float) -> None:
        self.last = now


class JsonlTrace(InstallableTap):
    """A tap writing one JSON object per stage event to `path_or_file`: a record of `rlm_events.trace.schema`.

    Args:
        path_or_file: a path, opened now for appending (UTF-8; the directory must exist), or an open text file,
            which is written to and flushed but never closed.
        preview_chars: the length results, arguments, inputs and predictions are cut to.
        code_chars: the length code is cut to.

    Use as `events.tap(trace)` or `trace.install(events)`; `close()` (or `with JsonlTrace(...)`) closes
    a file it opened. Events arriving after `close()` are dropped.

    The line is built at the event, on the run's thread (bounded by `preview_chars` and `code_chars`); the file is
    written on the tap delivery worker (`rlm_events.delivery`), so a slow disk never stalls the run. `close()`
    first waits for the lines already built (`rlm_events.flush()`).

    Writing never raises into the run or the application: a line that cannot be written or flushed (a full disk,
    a closed file) is dropped and counted in `write_errors`, and so is a failed final flush in `close()` (and
    so on leaving a `with` block). The first failure is logged at WARNING on the `rlm_events` logger, later
    ones at DEBUG.
    """

    INLINE = True  # builds its line at the event (times, usage so far); the writing is deferred

    def __init__(
        self, path_or_file: str | os.PathLike[str] | IO[str], *, preview_chars: int = 2000, code_chars: int = 20_000
    ) -> None:
        if preview_chars < 16 or code_chars < 16:
            raise ValueError("JsonlTrace: preview_chars and code_chars must be at least 16")
        if isinstance(path_or_file, (str, os.PathLike)):
            self.path: str | None = os.fspath(path_or_file)
            self._file: IO[str] = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
            self._owns_file = True
        elif callable(getattr(path_or_file, "write", None)):
            name = getattr(path_or_file, "name", None)
            self.path = name if isinstance(name, str) else None
            self._file = path_or_file
            self._owns_file = False
        else:
            raise TypeError(f"JsonlTrace needs a path or an open text file, got {type(path_or_file).__name__}")
        self.preview_chars = preview_chars
        self.code_chars = code_chars
        self._lock = threading.Lock()
        self._runs: dict[str, _RunClock] = {}
        self._closed = False
        self.write_errors = 0
        """Lines (and final flushes) that could not be written: dropped, and logged (the first at WARNING)."""

    # -- closing --------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop recording and close the file if this trace opened it. Idempotent; never raises (a failed final
        flush is counted and logged, as a failed write is)."""
        flush()  # the lines built before: written, unless the worker is stuck (they are then dropped)
        with self._lock:
            self._closed = True
            self._runs.clear()
            if self._owns_file and not self._file.closed:
                try:
                    self._file.close()  # the file is closed even when its last flush fails
                except Exception as exc:
                    self._write_failed(exc)

    def _write_failed(self, exc: Exception) -> None:
        """Count and log a failed write or flush (called under the lock)."""
        self.write_errors += 1
        first = self.write_errors == 1
        logger.log(
            logging.WARNING if first else logging.DEBUG,
            "JsonlTrace %s: could not write the trace (%s: %s); the event is dropped, the run goes on",
            self.path or repr(self._file),
            type(exc).__name__,
            exc,
        )

    def __enter__(self) -> JsonlTrace:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<JsonlTrace {self.path or self._file!r}{' closed' if self._closed else ''}>"

    # -- recording ------------------------------------------------------------------------------------------

    def __call__(self, ctx: context.StageContext) -> None:
        """Record `ctx` (the tap entry point)."""
        fields = self.fields(ctx)
        with self._lock:
            if self._closed:
                return
            now = time.monotonic()
            clock = self._runs.get(ctx.run.id)
            if clock is None:  # run_start, or a trace installed mid-call
                clock = self._runs[ctx.run.id] = _RunClock(now)
                meter_run(ctx.run)
            record: dict[str, Any] = {
                "run_id": ctx.run.id,
                "stage": ctx.stage.value,
                "iteration": ctx.iteration,
                "t_mono": now,
                "t_wall": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                "dt_prev_s": round(now - clock.last, 6),
            }
            clock.last = now
            usage = usage_of(ctx.run)
            if usage is not None:
                record["usage"] = usage
            record.update(fields)
            if ctx.stage is Stage.RUN_END:
                del self._runs[ctx.run.id]
            line = _one_line(json.dumps(record, ensure_ascii=False, default=self._default)) + "\n"
        defer(self._write, line, closing=ctx.stage is Stage.RUN_END)

    def _write(self, line: str) -> None:
        """Write one line (on the delivery worker); a line arriving after `close()` is dropped."""
        with self._lock:
            if self._closed:
                return
            try:
                self._file.write(line)
                self._file.flush()
            except Exception as exc:  # OSError (a full disk), ValueError (a file closed by its owner)
                self._write_failed(exc)

    def _default(self, value: Any) -> str:
        return preview(value, self.preview_chars)

    def fields(self, ctx: context.StageContext) -> dict[str, Any]:
        """The stage-specific fields of `ctx`'s line (the schema's per-stage part)."""
        limit = self.preview_chars
        if isinstance(ctx, context.RunStartContext):
            start = {
                "schema": SCHEMA_VERSION,
                "module": module_label(ctx.run.module),
                "max_iters": iteration_limit(ctx.run.module),
                "inputs": {name: preview(value, limit) for name, value in ctx.input_args.items()},
            }
            link = durable_link(ctx.run)
            if link is not None:
                start["durable"] = link
            return start
        if isinstance(ctx, context.PreIterationContext):
            return {"history_len": _history_len(ctx.history)}
        if isinstance(ctx, context.PreExecutionContext):
            out: dict[str, Any] = {
                "code": preview(ctx.code, self.code_chars),
                "reasoning": preview(ctx.reasoning, limit),
                "history_len": _history_len(ctx.history),
                "skipped": ctx.skipped,
            }
            if ctx.skipped:
                out["result_preview"] = preview(ctx.result, limit)
            return out
        if isinstance(ctx, context.PostExecutionContext):
            return {
                "code": preview(ctx.code, self.code_chars),
                "result_preview": preview(ctx.result, limit),
                "result_type": type(ctx.result).__name__,
                "is_error": is_error_result(ctx.result),
                "history_len": _history_len(ctx.history),
            }
        if isinstance(ctx, context.PostIterationContext):
            return {
                "history_len": _history_len(ctx.history),
                "submitted": ctx.prediction is not None,
                "stop": ctx.stop,
                "stop_reason": (ctx.stop_reason or "middleware") if ctx.stop and ctx.prediction is None else None,
            }
        if isinstance(ctx, context.ToolCallContext):
            return {
                "tool": {"name": ctx.name, "args": _call_preview(ctx.args, ctx.kwargs, limit)},
                "result_preview": preview(ctx.result, limit),
            }
        if isinstance(ctx, context.ExtractContext):
            return {"history_len": _history_len(ctx.history), "prediction": _fields_preview(ctx.prediction, limit)}
        if isinstance(ctx, context.RunEndContext):
            return {
                "iterations": ctx.iterations,
                "forced_extract": ctx.forced_extract,
                "stop_reason": ctx.stop_reason,
                "duration_s": round(ctx.duration_s, 6),
                "prediction": _fields_preview(ctx.prediction, limit),
                "error": None if ctx.error is None else preview(error_text(ctx.error), limit),
            }
        return {}


__all__ = ["JsonlTrace", "usage_of"]
