"""A progress display for interactive runs of instrumented `dspy.RLM` calls.

```pycon
>>> events.tap(ProgressTap())  # or ProgressTap().install(events)  # doctest: +SKIP

```

On a terminal, with the optional `rich` extra installed (`pip install 'rlm-events[rich]'`), it shows a live
table with one row per running call: iteration n/max, the stage that fired last, elapsed time and tokens. Anywhere
else (a pipe, a log file, CI, tests) it degrades to plain text: one line per finished iteration and one per
finished call, so logs stay readable. Like every tap it only observes; a display failure never reaches the run.

Cost, from the run's meter ([`rlm_events.lm_usage`][rlm_events.lm_usage]): `$0.0123` when known and not zero;
`cost unknown`
(never `$0`) once a call could not be priced or metered; `N cached, saved $0.0040` once DSPy's cache answered
calls (they cost nothing and are not in the tokens).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO

from .._optional import missing_extra
from ..context import PostExecutionContext, PostIterationContext, RunEndContext, StageContext
from ..delivery import defer
from ..lm_usage import meter_run
from ..runtime import iteration_limit
from ..trace.writer import usage_of
from ._text import is_error_result
from ._tool_tap import InstallableTap

_RICH_MISSING = missing_extra("ProgressTap(live=True)", "rich", "rich", hint="or use live=False for plain lines")


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class _CallProgress:
    """What the display knows about one running call."""

    __slots__ = (
        "cached",
        "cost_usd",
        "error_in_iteration",
        "iteration",
        "max_iters",
        "saved_cost_usd",
        "stage",
        "started",
        "tokens",
    )

    def __init__(self, max_iters: int | None) -> None:
        self.started = time.monotonic()
        self.max_iters = max_iters
        self.iteration = 0  # 1-based number of the iteration running or last finished; 0 before the first
        self.stage = "run_start"
        self.tokens: int | None = None
        self.cost_usd: float | None = 0.0  # None: unknown
        self.cached = 0
        self.saved_cost_usd = 0.0
        self.error_in_iteration = False

    @property
    def elapsed(self) -> float:
        """Seconds from the call's start to now."""
        return time.monotonic() - self.started

    def of_max(self) -> str:
        return f"{self.iteration}/{self.max_iters}" if self.max_iters else str(self.iteration)

    def tokens_text(self, so_far: bool = True) -> str:
        """The call's tokens and cost, totals since it started: labelled so after an iteration."""
        if self.tokens is None:
            return ""
        text = f"{self.tokens:,} tokens" + (f", {cost}" if (cost := self.cost_text()) else "")
        if self.cached:
            text += f", {self.cached:,} cached (saved ${self.saved_cost_usd:.4f})"
        return f" | {text} total so far" if so_far else f" | {text}"

    def cost_text(self) -> str:
        """`$0.0123`; `cost unknown` when it is; empty when it is zero (a free or scripted LM)."""
        if self.cost_usd is None:
            return "cost unknown"
        return f"${self.cost_usd:.4f}" if self.cost_usd else ""


class ProgressTap(InstallableTap):
    """A tap showing each running call's iteration n/max, current stage, elapsed time, tokens and cost.

    Inline, for what it knows (the stage, the tokens and cost so far are read at the event); what it shows is written
    on the tap delivery worker (`rlm_events.delivery`), so a slow console never stalls the run;
    `rlm_events.flush()` waits for what it has still to show.

    Args:
        out: where to write (default: `sys.stdout` at the time of each write).
        live: `True` for the live `rich` view (`ImportError` naming the extra if `rich` is missing),
            `False` for plain lines, `None` (default) for the live view when `out` is a terminal and
            `rich` is installed, plain lines otherwise.
    """

    def __init__(self, out: TextIO | None = None, *, live: bool | None = None) -> None:
        if live and not _rich_available():
            raise ImportError(_RICH_MISSING)
        self._out = out
        self._live_wanted = live
        # Lock order: _display_lock, then rich's own lock (refresh), then _state_lock. rich's refresh thread takes
        # its lock and then _state_lock (to draw the table), so the tap never holds _state_lock while calling rich.
        self._display_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._calls: dict[str, _CallProgress] = {}
        self._live: Any = None  # a rich.live.Live while calls run in live mode

    @property
    def out(self) -> TextIO:
        return self._out if self._out is not None else sys.stdout

    @property
    def live(self) -> bool:
        """Whether this tap draws the live `rich` view (rather than plain lines)."""
        if self._live_wanted is not None:
            return self._live_wanted
        isatty = getattr(self.out, "isatty", None)
        return bool(callable(isatty) and isatty()) and _rich_available()

    # -- the tap --------------------------------------------------------------------------------------------

    INLINE = True

    def __call__(self, ctx: StageContext) -> None:
        """Update what the display knows of the call now (bounded, no I/O); show it on the delivery worker."""
        with self._state_lock:
            call = self._update(ctx)
            if isinstance(ctx, RunEndContext):
                del self._calls[ctx.run.id]
            running = bool(self._calls)
            line = self._line(ctx, call, self.live)
        defer(self._show, (line, running), closing=isinstance(ctx, RunEndContext))

    def _show(self, shown: tuple[str | None, bool]) -> None:
        line, running = shown
        with self._display_lock:
            if self.live and running and self._live is None:
                self._start_live()
            if line is not None:
                self._emit(line)
            if self._live is not None:
                if running:
                    self._live.refresh()
                else:
                    self._live.stop()
                    self._live = None

    def _update(self, ctx: StageContext) -> _CallProgress:
        call = self._calls.get(ctx.run.id)
        if call is None:  # run_start, or a display installed mid-call
            call = self._calls[ctx.run.id] = _CallProgress(iteration_limit(ctx.run.module))
            meter_run(ctx.run)
        call.stage = ctx.stage.value
        if ctx.iteration is not None:
            call.iteration = ctx.iteration + 1
        if isinstance(ctx, PostExecutionContext):
            call.error_in_iteration = is_error_result(ctx.result)
        usage = usage_of(ctx.run)
        if usage is not None:
            call.tokens, call.cost_usd = usage["total_tokens"], usage["cost_usd"]
            call.cached, call.saved_cost_usd = usage.get("cached_lm_calls", 0), usage.get("saved_cost_usd", 0.0)
        return call

    @staticmethod
    def _line(ctx: StageContext, call: _CallProgress, live: bool) -> str | None:
        """The line that `ctx` ends: a finished iteration (plain mode only) or a finished call; else `None`."""
        tag = f"[{ctx.run.id[:8]}]"
        if isinstance(ctx, PostIterationContext) and not live:  # the live view shows iterations itself
            outcome = "submitted" if ctx.prediction is not None else "error" if call.error_in_iteration else "ok"
            if ctx.stop and ctx.prediction is None:
                outcome += f", stopped ({ctx.stop_reason or 'middleware'})"
            return f"{tag} iteration {call.of_max()} {outcome} | {call.elapsed:.2f} s{call.tokens_text()}"
        if isinstance(ctx, RunEndContext):
            if ctx.error is not None:
                outcome = f"failed: {type(ctx.error).__name__}: {ctx.error}"
            else:
                ended = {"submit": "SUBMIT", "max_iters": "the iteration limit", "budget": "a budget stop"}
                outcome = f"finished by {ended.get(ctx.stop_reason, 'a middleware stop')}"
                if ctx.forced_extract:
                    outcome += " (answer from the extract fallback)"
            iterations = f"{ctx.iterations} iteration{'' if ctx.iterations == 1 else 's'}"
            return f"{tag} {outcome} | {iterations} | {ctx.duration_s:.2f} s{call.tokens_text(so_far=False)}"
        return None

    # -- output ---------------------------------------------------------------------------------------------

    def _emit(self, line: str) -> None:
        if self._live is not None:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=self.out, flush=True)

    def _start_live(self) -> None:
        try:
            from rich.console import Console
            from rich.live import Live
        except ImportError as exc:  # rich went away after __init__ checked it
            raise ImportError(_RICH_MISSING) from exc
        console = Console(file=self.out)
        self._live = Live(get_renderable=self._table, console=console, refresh_per_second=8, transient=True)
        self._live.start()

    def _table(self) -> Any:
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold")
        for column in ("run", "iteration", "", "stage", "elapsed", "tokens", "cost"):
            table.add_column(column, justify="right" if column in ("elapsed", "tokens", "cost") else "left")
        with self._state_lock:
            calls = list(self._calls.items())
        for run_id, call in calls:
            bar = ProgressBar(total=call.max_iters or None, completed=call.iteration, width=20)
            tokens = "" if call.tokens is None else f"{call.tokens:,}"
            cost = call.cost_text() + (f" ({call.cached:,} cached)" if call.cached else "")
            table.add_row(run_id[:8], call.of_max(), bar, call.stage, f"{call.elapsed:.1f} s", tokens, cost)
        return table


__all__ = ["ProgressTap"]
