"""Which LM calls belong to which run: the LMs a call can use, and the entries DSPy appends to their `history`.

DSPy records every LM call as an entry (`messages`, `outputs`, `usage`, `cost`) in the LM's `history`
list. The built-ins, the taps and record/replay read usage from there; this module is the one place that knows
how to find those LMs and how to take the entries appended since a point without copying the whole history.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Any

import dspy

from ._patch import own_lms


def module_label(module: Any) -> str:
    """`"RLM(text -> answer)"`: the class name and, when it has one, the string signature."""
    signature = getattr(getattr(module, "signature", None), "signature", None)
    name = type(module).__name__
    return f"{name}({signature})" if isinstance(signature, str) else name


# -- which LM history entries belong to which run -------------------------------------------------------------


def lms_of(module: Any) -> list[Any]:
    """The distinct LMs a call of `module` can use, resolved now (call it in the run's context).

    `dspy.settings.lm`, the module's `sub_lm`, the LM a PredictRLM was built with, and its predictors' own
    `lm`; only objects with a `history` list (DSPy's `BaseLM`) count.
    """
    candidates = [dspy.settings.lm, getattr(module, "sub_lm", None), *own_lms(module)]
    with contextlib.suppress(Exception):  # not a dspy.Module after all: the LMs above are all we know
        candidates += [getattr(p, "lm", None) for p in module.predictors()]
    found: dict[int, Any] = {}
    for lm in candidates:
        if lm is not None and isinstance(getattr(lm, "history", None), list):
            found.setdefault(id(lm), lm)
    return list(found.values())


class HistoryCursor:
    """The newest entry of one LM's history already handed out to one run."""

    __slots__ = ("last", "lm")

    def __init__(self, lm: Any) -> None:
        self.lm = lm
        history = lm.history
        self.last: Any = history[-1] if history else None

    def take(self) -> list[dict[str, Any]]:
        # Scan the live list from the end down to the marker: the new entries are few, so a take costs them
        # only, whatever the history's length. Entries appended meanwhile are left for the next take. A marker
        # DSPy trimmed away (max_history_size) or a cleared history means everything present is new.
        history = self.lm.history
        new: list[Any] = []
        for i in range(len(history) - 1, -1, -1):
            try:
                entry = history[i]
            except IndexError:  # trimmed while we looked
                break
            if entry is self.last:
                break
            new.append(entry)
        if new:
            self.last = new[0]
        new.reverse()
        return [e for e in new if isinstance(e, dict)]


class _Watched:
    __slots__ = ("cursors", "dirty")

    def __init__(self, cursors: list[HistoryCursor]) -> None:
        self.cursors = cursors
        self.dirty = False


class LMHistoryWatch:
    """Attributes the entries DSPy appends to LMs' `history` lists to the runs that made them. Thread-safe.

    `start()` remembers the newest entry of each LM a run can use; each `take()` returns the entries
    appended since the run's previous take. A window is *ambiguous* -- `take()` returns `None` -- when, at
    any moment during it, another run started on this watch used one of the same LM instances: their entries
    interleave in one list and cannot be told apart. Runs this watch never saw cannot be detected.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: dict[str, _Watched] = {}
        self._active: dict[int, set[str]] = {}  # id(lm) -> runs using it now

    def start(self, run_id: str, lms: Iterable[Any]) -> None:
        """Begin watching `lms` for `run_id`."""
        with self._lock:
            watched = _Watched([HistoryCursor(lm) for lm in lms])
            self._runs[run_id] = watched
            for cursor in watched.cursors:
                users = self._active.setdefault(id(cursor.lm), set())
                if users:
                    watched.dirty = True
                    for other in users:
                        self._runs[other].dirty = True
                users.add(run_id)

    def take(self, run_id: str) -> list[dict[str, Any]] | None:
        """The entries appended since the last take for `run_id` (oldest first), or `None` if ambiguous.

        Unknown runs get `[]`.
        """
        with self._lock:
            watched = self._runs.get(run_id)
            if watched is None:
                return []
            entries = [e for cursor in watched.cursors for e in cursor.take()]
            shared_now = any(self._active.get(id(c.lm), set()) - {run_id} for c in watched.cursors)
            ambiguous = watched.dirty or shared_now
            watched.dirty = shared_now  # stays ambiguous while the other run is still going
            return None if ambiguous else entries

    def end(self, run_id: str) -> list[dict[str, Any]] | None:
        """A last `take()`, then forget `run_id` (even if the take fails: a run left "active" would make
        every later run on its LMs look ambiguous)."""
        try:
            return self.take(run_id)
        finally:
            with self._lock:
                watched = self._runs.pop(run_id, None)
                for cursor in watched.cursors if watched else ():
                    users = self._active.get(id(cursor.lm))
                    if users is not None:
                        users.discard(run_id)
                        if not users:
                            del self._active[id(cursor.lm)]


__all__ = ["HistoryCursor", "LMHistoryWatch", "lms_of", "module_label"]
