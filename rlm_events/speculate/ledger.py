"""The dispatch ledger of one run's speculation: every call made ahead (`Dispatch`), how it ended, and
what it cost (`Live`).

Every dispatched call ends as exactly one of `claimed`, `wasted` or `cancelled`; its LM use is counted once
it has both finished and been decided (`Live.settle()`), on
[`SpeculateStats`][rlm_events.speculate.stats.SpeculateStats] and on the run's usage.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from ..context import Run
from ..lm_usage import Usage, metered
from .spans import end_span
from .stats import SpeculateStats


class Dispatch:
    """One call made ahead: what it is, its future, and its own LM ledger."""

    __slots__ = (
        "after_unknown",
        "args",
        "future",
        "iteration",
        "key",
        "kwargs",
        "ledger",
        "name",
        "outcome",
        "reserved",
        "settled",
        "span",
        "weight",
    )

    def __init__(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], key: str, iteration: int) -> None:
        self.name, self.args, self.kwargs, self.key, self.iteration = name, args, kwargs, key, iteration
        self.ledger = Usage()
        self.future: Future[Any] | None = None
        self.outcome: str | None = None  # claimed, wasted, cancelled
        self.settled = False
        self.reserved: tuple[Any, int, float] | None = None  # (spend, tokens, cost) a hard Budget set aside
        self.span: Any = None  # its OpenTelemetry span, when OpenTelemetry is installed
        self.weight = 0  # the LM calls it counts against DSPy's max_llm_calls (0 for a pure tool)
        self.after_unknown = False  # planned past a call the planner could not follow


class Live:
    """One run's speculation: its executor, its dispatched calls by key, its stats."""

    def __init__(self, run: Run, stats: SpeculateStats, max_in_flight: int) -> None:
        self.run, self.stats, self.max_in_flight = run, stats, max_in_flight
        self.lock = threading.Lock()
        self.pending: dict[str, deque[Dispatch]] = {}
        self.all: list[Dispatch] = []
        self.executor: ThreadPoolExecutor | None = None
        self.readers: dict[int, Any] = {}
        self.llm_counted = 0  # sub-LLM calls DSPy's max_llm_calls counted: made ahead, and made by the code
        self.streams: dict[int, Any] = {}  # iteration -> its ActionStream, while the LM writes its code
        self.ahead: dict[int, Counter[str]] = {}  # iteration -> keys dispatched while the LM wrote its code
        self.sent: dict[int, int] = {}  # iteration -> LM calls dispatched for it (max_per_iteration)

    def pool(self) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="rlm-speculate")
        return self.executor

    def take(self, key: str) -> Dispatch | None:
        with self.lock:
            queue = self.pending.get(key)
            if not queue:
                return None
            dispatch = queue.popleft()
            if not queue:
                del self.pending[key]
            return dispatch

    def decide(self, dispatch: Dispatch, outcome: str) -> None:
        with self.lock:
            if dispatch.outcome is None:
                dispatch.outcome = outcome
                setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
                if outcome == "cancelled":  # it never ran: DSPy did not count it
                    self.llm_counted -= dispatch.weight
        if outcome == "cancelled":
            end_span(dispatch)
        self.settle(dispatch)

    def settle(self, dispatch: Dispatch) -> None:
        """Count a dispatched call's LM use once it both finished and was claimed or given up."""
        future = dispatch.future
        with self.lock:
            if dispatch.settled or dispatch.outcome not in ("claimed", "wasted") or future is None:
                return
            if not future.done():
                return
            dispatch.settled = True
            ledger, wasted = dispatch.ledger, dispatch.outcome == "wasted"
            if wasted and dispatch.after_unknown:
                self.stats.past_unknown_wasted += 1
        self.stats.spent.add_speculation(ledger, wasted=wasted)
        usage = metered(self.run)
        if usage is not None:
            usage.add_speculation(ledger, wasted=wasted)
        end_span(dispatch)

    def finished(self, dispatch: Dispatch) -> None:
        """The dispatched call ended (or was cancelled): give back what a hard Budget set aside; settle it."""
        reserved, dispatch.reserved = dispatch.reserved, None
        if reserved is not None:
            spend, tokens, cost = reserved
            spend.release(tokens, cost)
        if dispatch.future is not None and not dispatch.future.cancelled():
            with self.lock:
                self.stats.speculated += 1
        self.settle(dispatch)

    def expire(self, iteration: int | None = None) -> list[Dispatch]:
        """Give up the calls dispatched for iterations before `iteration` (all, if `None`) that nobody
        claimed: not started ones are cancelled, running ones are wasted once they finish."""
        with self.lock:
            expired = [
                d for queue in self.pending.values() for d in queue if iteration is None or d.iteration < iteration
            ]
            for queue in self.pending.values():
                kept = [d for d in queue if d not in expired]
                queue.clear()
                queue.extend(kept)
            self.pending = {k: q for k, q in self.pending.items() if q}
        for dispatch in expired:
            future = dispatch.future
            self.decide(dispatch, "cancelled" if future is not None and future.cancel() else "wasted")
        return expired


__all__ = ["Dispatch", "Live"]
