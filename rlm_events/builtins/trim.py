"""`HistoryTrimmer`: keep long runs inside the prompt budget by shortening old REPL outputs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from dspy.primitives.repl_types import REPLEntry, REPLHistory

from ..builtin import Builtin, check_int
from ..context import PreIterationContext
from ..stages import Stage

Mode = Literal["preview", "drop"]
_STATE_KEY = "history_trimmer"  # where a run's TrimStats live in run.state (documented, read by no other module)
_MARK = "[HistoryTrimmer:"  # every marker starts so: a trimmed output is recognised and never trimmed again


@dataclass
class TrimStats:
    """What a [`HistoryTrimmer`][rlm_events.builtins.trim.HistoryTrimmer] did in one run
    (`ctx.run.state["history_trimmer"]`)."""

    trimmed_entries: int = 0
    chars_removed: int = 0


class HistoryTrimmer(Builtin):
    """A `pre_iteration` middleware that shortens the outputs of all but the last `keep_last` entries.

    `mode="preview"` (default) keeps a head and a tail of an output longer than `max_chars` around a marker
    `… [HistoryTrimmer: 12,000 of 12,400 chars omitted] …`; the result is at most `max_chars` long.
    `mode="drop"` replaces such an output with a one-line marker giving its length. Reasoning and code are kept
    verbatim, so the LM still sees every step it took.

    Guarantees: the last `keep_last` entries are untouched; an output is shortened once (markers are recognised),
    so trimming is idempotent; the history is replaced through `model_copy` (DSPy's `REPLHistory` is
    immutable), and because the loop carries the changed history forward, later iterations, the extract fallback
    and the returned `trajectory` all see the shortened outputs. Totals are kept in
    `ctx.run.state["history_trimmer"]` ([`TrimStats`][rlm_events.builtins.trim.TrimStats]).
    """

    STAGES: ClassVar[tuple[Stage, ...]] = (Stage.PRE_ITERATION,)

    def __init__(self, keep_last: int = 3, *, max_chars: int = 400, mode: Mode = "preview") -> None:
        check_int("HistoryTrimmer", "keep_last", keep_last, 0)
        check_int("HistoryTrimmer", "max_chars", max_chars, 80)
        if mode not in ("preview", "drop"):
            raise ValueError(f"HistoryTrimmer(mode=...) must be 'preview' or 'drop', got {mode!r}")
        self.keep_last, self.max_chars, self.mode = keep_last, max_chars, mode

    def __call__(self, ctx: Any, next: Any) -> Any:
        if not isinstance(ctx, PreIterationContext):
            raise self._wrong_stage(ctx)
        ctx.history = self.trim(ctx.history, stats=ctx.run.state.setdefault(_STATE_KEY, TrimStats()))
        return next(ctx)

    def trim(self, history: REPLHistory, *, stats: TrimStats | None = None) -> REPLHistory:
        """`history` with the older outputs shortened (the same object when nothing changed)."""
        entries = list(history.entries)
        older = len(entries) - self.keep_last
        changed = False
        for i in range(max(older, 0)):
            entry = entries[i]
            output = self.shorten(entry.output)
            if output is not entry.output:
                entries[i] = REPLEntry(reasoning=entry.reasoning, code=entry.code, output=output)
                changed = True
                if stats is not None:
                    stats.trimmed_entries += 1
                    stats.chars_removed += len(entry.output) - len(output)
        return history.model_copy(update={"entries": entries}) if changed else history

    def shorten(self, output: str) -> str:
        """`output` itself when short enough or already shortened, else its preview or drop marker."""
        if len(output) <= self.max_chars or _MARK in output:
            return output
        if self.mode == "drop":
            return f"{_MARK} output of {len(output):,} chars dropped]"
        # Size the marker first, so head + marker + tail fits in max_chars exactly.
        kept = self.max_chars - len(_marker(len(output), len(output))) - 2
        head = kept // 2 + kept % 2
        tail = kept // 2
        marker = _marker(len(output) - head - tail, len(output))
        return f"{output[:head]}\n{marker}\n{output[len(output) - tail :] if tail else ''}"

    def __repr__(self) -> str:
        return f"HistoryTrimmer(keep_last={self.keep_last}, max_chars={self.max_chars}, mode={self.mode!r})"


def _marker(omitted: int, total: int) -> str:
    return f"… {_MARK} {omitted:,} of {total:,} chars omitted] …"


__all__ = ["HistoryTrimmer", "TrimStats"]
