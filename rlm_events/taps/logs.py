"""Standard `logging` records for instrumented `dspy.RLM` calls.

```pycon
>>> LoggingTap().install(events)  # doctest: +SKIP

```

What is logged (`level` is the constructor's, INFO by default; iterations are shown 1-based, like DSPy's
prompts, while `rlm_iteration` keeps the contexts' 0-based number):

| stage | level | message |
| --- | --- | --- |
| `run_start` | `level` | `rlm run <id> started: RLM(text -> answer), inputs: text` |
| `pre_execution` | DEBUG | `rlm run <id> iteration 2/6 code:` and the code |
| `post_execution` | DEBUG | `rlm run <id> iteration 2/6 result:` and the result (cut to `max_chars`) |
| `post_iteration` | `level` | `rlm run <id> iteration 2/6: 3 lines of code -> output (42 chars) in 12 ms` |
| `tool_call` | `level` | `rlm run <id> iteration 2/6 tool llm_query('Summarise…') -> 'The text…'` |
| `tool_call` | DEBUG | the tool's full arguments and result (cut to `max_chars`) |
| `extract` | `level` | `rlm run <id> extract fallback produced: answer` |
| `run_end` | `level` | `rlm run <id> finished in 1.20 s after 3 iterations` |
| `run_end` | ERROR | `rlm run <id> failed after 0.20 s and 1 iteration: ValueError: …` (no traceback: the caller gets the exception) |

Every record carries the run id in its message and as `extra` attributes: `rlm_run_id`, `rlm_stage` and
`rlm_iteration` (`None` on run-level stages), so handlers and JSON formatters can filter and group by call.
Messages are only built when the logger is enabled for their level.
"""  # noqa: E501

from __future__ import annotations

import logging
import threading
from typing import Any

from .. import context
from ..delivery import event_time
from ..lm_history import module_label
from ..runtime import iteration_limit
from ..stages import Stage
from ._text import error_text, is_error_result, preview, safe_repr
from ._tool_tap import InstallableTap

DEFAULT_LOGGER = "rlm_events.runs"


def _short(value: Any, limit: int) -> str:
    """`repr`-like preview of at most about `limit` characters; never raises."""
    text = safe_repr(value)
    return text if len(text) <= limit else f"{text[: max(limit - 1, 0)]}…"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class LoggingTap(InstallableTap):
    """A tap that writes each call's progress to a standard `logging.Logger` (see the module docstring).

    Args:
        logger: where to log; `logging.getLogger("rlm_events.runs")` by default.
        level: the level of the summary records (run start/end, iterations, tool calls, extract).
        max_chars: DEBUG records cut code, results and tool values to this many characters.

    Thread-safe; its per-call state (when each iteration started) is dropped at `run_end`.
    """

    def __init__(self, logger: logging.Logger | None = None, level: int = logging.INFO, *, max_chars: int = 2000):
        if not isinstance(level, int) or isinstance(level, bool):
            raise TypeError(f"level must be a logging level number such as logging.INFO, got {level!r}")
        if max_chars < 1:
            raise ValueError(f"max_chars must be positive, got {max_chars}")
        self.logger = logger if logger is not None else logging.getLogger(DEFAULT_LOGGER)
        self.level = level
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._iteration_started: dict[tuple[str, int], float] = {}

    def __repr__(self) -> str:
        return f"<LoggingTap {self.logger.name} {logging.getLevelName(self.level)}>"

    # -- the tap --------------------------------------------------------------------------------------------

    def __call__(self, ctx: context.StageContext) -> None:
        """Log `ctx` (the tap entry point)."""
        if isinstance(ctx, context.RunStartContext):
            self._log(
                self.level, ctx, "started: %s, inputs: %s", module_label(ctx.run.module), ", ".join(ctx.input_args)
            )
        elif ctx.stage is Stage.PRE_ITERATION and ctx.iteration is not None:
            with self._lock:
                self._iteration_started[(ctx.run.id, ctx.iteration)] = event_time().monotonic
        elif isinstance(ctx, context.PreExecutionContext):
            skipped = " (skipped by middleware)" if ctx.skipped else ""
            self._log(logging.DEBUG, ctx, "code%s:\n%s", skipped, preview(ctx.code, self.max_chars))
        elif isinstance(ctx, context.PostExecutionContext):
            self._log(logging.DEBUG, ctx, "result:\n%s", preview(str(ctx.result), self.max_chars))
        elif isinstance(ctx, context.PostIterationContext):
            self._iteration_summary(ctx)
        elif isinstance(ctx, context.ToolCallContext):
            self._tool_call(ctx)
        elif isinstance(ctx, context.ExtractContext):
            fields = [k for k in (ctx.prediction.keys() if ctx.prediction is not None else []) if k != "trajectory"]
            self._log(self.level, ctx, "extract fallback produced: %s", ", ".join(fields) or "nothing")
        elif isinstance(ctx, context.RunEndContext):
            self._run_end(ctx)

    # -- records --------------------------------------------------------------------------------------------

    def _log(self, level: int, ctx: context.StageContext, message: str, *args: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        where = f"rlm run {ctx.run.id}"
        if ctx.iteration is not None:
            max_iters = iteration_limit(ctx.run.module)
            where += f" iteration {ctx.iteration + 1}" + (f"/{max_iters}" if isinstance(max_iters, int) else "")
        # "rlm run <id> iteration 2/6: …" for the summary, "rlm run <id> iteration 2/6 code: …" for the rest.
        separator = "" if message.startswith(":") else " "
        self.logger.log(
            level,
            "%s" + separator + message,
            where,
            *args,
            extra={"rlm_run_id": ctx.run.id, "rlm_stage": ctx.stage.value, "rlm_iteration": ctx.iteration},
        )

    def _iteration_summary(self, ctx: context.PostIterationContext) -> None:
        with self._lock:
            started = self._iteration_started.pop((ctx.run.id, ctx.iteration or 0), None)
        if not self.logger.isEnabledFor(self.level):
            return
        lines = len(ctx.code.splitlines())
        if ctx.prediction is not None:
            outcome = "submitted the answer"
        elif is_error_result(ctx.result):
            first = str(ctx.result).splitlines()[0] if str(ctx.result) else "[Error]"
            outcome = f"error: {preview(first, 120)}"
        else:
            outcome = f"output ({_plural(len(str(ctx.result or '')), 'char')})"
        if ctx.stop:
            outcome += "; a middleware stopped the loop"
        took = "" if started is None else f" in {(event_time().monotonic - started) * 1000:.0f} ms"
        self._log(self.level, ctx, ": %s -> %s%s", _plural(lines, "line") + " of code", outcome, took)

    def _tool_call(self, ctx: context.ToolCallContext) -> None:
        if self.logger.isEnabledFor(self.level):
            self._log(self.level, ctx, "tool %s(%s) -> %s", ctx.name, self._arguments(ctx, 80), _short(ctx.result, 80))
        if self.logger.isEnabledFor(logging.DEBUG):
            self._log(
                logging.DEBUG,
                ctx,
                "tool %s arguments: %s\nresult: %s",
                ctx.name,
                self._arguments(ctx, self.max_chars),
                _short(ctx.result, self.max_chars),
            )

    @staticmethod
    def _arguments(ctx: context.ToolCallContext, limit: int) -> str:
        parts = [_short(a, limit) for a in ctx.args] + [f"{k}={_short(v, limit)}" for k, v in ctx.kwargs.items()]
        return preview(", ".join(parts), limit)

    def _run_end(self, ctx: context.RunEndContext) -> None:
        with self._lock:
            for key in [k for k in self._iteration_started if k[0] == ctx.run.id]:
                del self._iteration_started[key]
        iterations = _plural(ctx.iterations, "iteration")
        if ctx.error is not None:
            error = preview(error_text(ctx.error), 500)
            self._log(logging.ERROR, ctx, "failed after %.2f s and %s: %s", ctx.duration_s, iterations, error)
            return
        via = " (answer from the extract fallback)" if ctx.forced_extract else ""
        self._log(self.level, ctx, "finished in %.2f s after %s%s", ctx.duration_s, iterations, via)


__all__ = ["DEFAULT_LOGGER", "LoggingTap"]
