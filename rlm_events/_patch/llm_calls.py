"""DSPy's `max_llm_calls` counter of a running call: how many sub-LLM calls it has charged, and continuing it from a
count.

A resumed durable run answers its replayed `llm_query` / `llm_query_batched` calls from the record, so DSPy's own
counter (which only counts the calls that reach DSPy's tools) would restart at 0; continuing it from the recorded
count makes the `max_llm_calls + 1`-th call fail exactly as in the uninterrupted run.

DSPy keeps the counter in the closure of the `llm_query` it builds for each call (`_make_llm_tools`); checked against
DSPy 3.1.2, 3.1.3, 3.2.0, 3.2.1, 3.3.0, 3.3.1, 3.4.0 and 3.4.1:

* 3.1.2 to 3.4.0: `state = {"call_count": n}` and its `lock`, closed over by `_check_and_increment`, which
  `llm_query` closes over.
* 3.4.1: an `_LLMCallBudget` closed over as `budget` (`_count` under `_lock`; the sandbox's sub-agent facade charges
  the same one).

Where neither is found (another release, a subclass building its own tools),
[`llm_call_counter()`][rlm_events._patch.llm_calls.llm_call_counter] answers `None` and
[`counts_llm_calls()`][rlm_events._patch.llm_calls.counts_llm_calls] `False`: the caller refuses or falls back (see
`Durable`), it never guesses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..context import Run
from .exposed import current_iteration
from .tools import raw_tool


class LLMCallCounter:
    """One call's `max_llm_calls` counter, as DSPy keeps it (read and written under DSPy's own lock)."""

    def __init__(self, lock: Any, read: Callable[[], int], write: Callable[[int], None]) -> None:
        self._lock, self._read, self._write = lock, read, write

    @property
    def count(self) -> int:
        """The sub-LLM calls charged so far in this call."""
        with self._lock:
            return self._read()

    def continue_from(self, count: int) -> None:
        """Make the counter at least `count` (it never goes back): the calls a resumed run replayed count as they
        did."""
        with self._lock:
            if count > self._read():
                self._write(count)

    def __repr__(self) -> str:
        return f"LLMCallCounter(count={self.count})"


def _closure(fn: Any) -> dict[str, Any]:
    """The variables a function closes over, by name (empty for anything else)."""
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None)
    if code is None or not cells:
        return {}
    found: dict[str, Any] = {}
    for name, cell in zip(code.co_freevars, cells, strict=False):
        try:
            found[name] = cell.cell_contents
        except ValueError:  # an empty cell: not assigned yet
            continue
    return found


def _is_lock(lock: Any) -> bool:
    return hasattr(lock, "__enter__") and hasattr(lock, "__exit__")


def counter_of(llm_query: Any) -> LLMCallCounter | None:
    """The counter DSPy's `llm_query` (or a `tool_call` wrapper of it) charges, or `None` where it is kept otherwise."""
    cells = _closure(raw_tool(llm_query))
    budget: Any = cells.get("budget")  # 3.4.1: an _LLMCallBudget
    if isinstance(getattr(budget, "_count", None), int) and _is_lock(getattr(budget, "_lock", None)):
        return LLMCallCounter(budget._lock, lambda: int(budget._count), lambda n: setattr(budget, "_count", n))
    inner = _closure(cells.get("_check_and_increment"))  # 3.1.2 to 3.4.0: a dict in _make_llm_tools' closure
    state, lock = inner.get("state"), inner.get("lock")
    if isinstance(state, dict) and isinstance(state.get("call_count"), int) and _is_lock(lock):
        return LLMCallCounter(lock, lambda: int(state["call_count"]), lambda n: state.__setitem__("call_count", n))
    return None


def llm_call_counter(run: Run) -> LLMCallCounter | None:
    """The counter of `run`'s call, read from its interpreter's `llm_query`, in an iteration of `run` (`None`
    outside one, or where the release keeps it elsewhere)."""
    found = current_iteration(run)
    tools = getattr(found[0], "tools", None) if found is not None else None
    return counter_of(tools["llm_query"]) if isinstance(tools, dict) and "llm_query" in tools else None


def counts_llm_calls(rlm: Any) -> bool:
    """Whether `rlm`'s class keeps its counter where
    [`llm_call_counter()`][rlm_events._patch.llm_calls.llm_call_counter] finds it: probed on a fresh set of DSPy's tools
    (`_make_llm_tools()` only builds closures; nothing is called)."""
    make = getattr(rlm, "_make_llm_tools", None)
    if not callable(make):
        return False
    try:
        tools = make()
    except Exception:  # a subclass's own signature or checks: not a layout we know
        return False
    return isinstance(tools, dict) and counter_of(tools.get("llm_query")) is not None


__all__ = ["LLMCallCounter", "counter_of", "counts_llm_calls", "llm_call_counter"]
