"""The one LM-usage parser and meter: every built-in and tap that reports tokens or cost reads them from here.

**Parsing.** DSPy records every LM call as an entry of the LM's ``history``: ``usage`` (a dict, or an object with
attributes) and ``cost``. :func:`entry_usage` reads every spelling LiteLLM and DSPy emit: ``prompt_tokens`` or
``input_tokens``, ``completion_tokens`` or ``output_tokens``, ``total_tokens`` (their sum when absent); a cached
response (``response.cache_hit``) costs nothing.

**Attribution: one policy, everywhere.** An LM call belongs to the run current in the context that made it. The
meter is a DSPy callback (:data:`METER`, attached to the LMs a run can use when the run starts): ``on_lm_end`` runs
in the caller's context, so the rlm-events run found there (a context variable, copied into the threads DSPy's
interpreters and, from 3.3 on, ``llm_query_batched`` run tools in) is the call's own, even when concurrent runs
share one LM instance; the call's own ``history`` entry (the one whose ``outputs`` is the object returned) gives
its usage. An LM call made where no run is current cannot be attributed to any run and is counted by none: DSPy
before 3.3 runs ``llm_query_batched`` prompts in threads without the caller's context. Budget, JsonlTrace,
OpenTelemetry, Recorder and the progress display all read the same :class:`Usage`, at ``run.state["usage"]``.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from .context import Run
from .lm_history import lms_of
from .runtime import current_run

logger = logging.getLogger("rlm_events")

STATE_KEY = "usage"
HISTORY_SCAN = 256  # recent history entries searched for a call's own entry (others may interleave)
_LOCK = threading.Lock()  # guards every Usage update; contention is one increment per LM call


def _int(usage: Any, *keys: str) -> int:
    for key in keys:
        value = usage.get(key) if isinstance(usage, dict) else getattr(usage, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value:
            return value
    return 0


def entry_usage(entry: dict[str, Any]) -> tuple[int, int, int, float | None, bool]:
    """``(input_tokens, output_tokens, total_tokens, cost_usd, cached)`` of one LM history entry."""
    cached = bool(getattr(entry.get("response"), "cache_hit", False))
    usage = entry.get("usage") or {}
    tokens_in = _int(usage, "prompt_tokens", "input_tokens")
    tokens_out = _int(usage, "completion_tokens", "output_tokens")
    total = _int(usage, "total_tokens") or tokens_in + tokens_out
    cost = entry.get("cost")
    priced = isinstance(cost, (int, float)) and not isinstance(cost, bool)
    return tokens_in, tokens_out, total, float(cost) if priced else None, cached  # type: ignore[arg-type]


def usage_of(entries: Iterable[dict[str, Any]]) -> tuple[int, int, float | None]:
    """``(input_tokens, output_tokens, cost)`` summed over LM history entries (cost ``None`` if none known)."""
    tokens_in = tokens_out = 0
    cost: float | None = None
    for entry in entries:
        entry_in, entry_out, _, entry_cost, _ = entry_usage(entry)
        tokens_in, tokens_out = tokens_in + entry_in, tokens_out + entry_out
        if entry_cost is not None:
            cost = (cost or 0.0) + entry_cost
    return tokens_in, tokens_out, cost


@dataclass
class Usage:
    """The LM use of one run so far: every LM call made while it ran (the main LM's actions, the extract
    fallback, ``llm_query``/``llm_query_batched`` and sub-agents on ``sub_lm``). Lives at ``run.state["usage"]``."""

    lm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: int = 0
    """The providers' ``total_tokens`` (prompt + completion when absent)."""
    cost_usd: float = 0.0
    tokens_by_model: dict[str, int] = field(default_factory=dict)
    cached_lm_calls: int = 0
    unpriced_lm_calls: int = 0
    unmetered_lm_calls: int = 0
    """Calls whose history entry could not be found (``dspy.settings.disable_history``, ``max_history_size=0``)."""
    largest_call_tokens: int = 0
    """The most tokens one LM call of the run used (a hard Budget's estimate of the next call)."""
    largest_call_cost_usd: float = 0.0
    speculative_lm_calls: int = 0
    """LM calls made ahead by :class:`~rlm_events.builtins.Speculate` (included in the counts above) and settled."""
    speculative_tokens: int = 0
    wasted_lm_calls: int = 0
    """Of those, the calls no real call claimed: their tokens and cost were spent for nothing."""
    wasted_tokens: int = 0
    wasted_cost_usd: float = 0.0

    def add_speculation(self, ledger: Usage, *, wasted: bool) -> None:
        """Account for one settled speculative call whose own LM use is ``ledger`` (claimed, or ``wasted``)."""
        with _LOCK:
            self.speculative_lm_calls += ledger.lm_calls
            self.speculative_tokens += ledger.tokens
            if wasted:
                self.wasted_lm_calls += ledger.lm_calls
                self.wasted_tokens += ledger.tokens
                self.wasted_cost_usd += ledger.cost_usd

    def add_lm_call(self, entry: dict[str, Any] | None, model: str) -> None:
        """Account for one LM call from its DSPy history ``entry`` (``None``: it could not be found)."""
        with _LOCK:
            self.lm_calls += 1
            if entry is None:
                self.unmetered_lm_calls += 1
                return
            tokens_in, tokens_out, total, cost, cached = entry_usage(entry)
            if cached:
                self.cached_lm_calls += 1
                return
            self.prompt_tokens += tokens_in
            self.completion_tokens += tokens_out
            self.tokens += total
            self.tokens_by_model[model] = self.tokens_by_model.get(model, 0) + total
            self.largest_call_tokens = max(self.largest_call_tokens, total)
            if cost is None:
                self.unpriced_lm_calls += 1
            else:
                self.cost_usd += cost
                self.largest_call_cost_usd = max(self.largest_call_cost_usd, cost)

    def record(self) -> dict[str, Any]:
        """``{lm_calls, prompt_tokens, completion_tokens, total_tokens, cost_usd}``: what traces and spans report;
        with ``speculative_lm_calls``, ``speculative_tokens``, ``wasted_lm_calls``, ``wasted_tokens`` and
        ``wasted_cost_usd`` once calls made ahead by Speculate settled."""
        record = {
            "lm_calls": self.lm_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.tokens,
            "cost_usd": round(self.cost_usd, 8),
        }
        if self.speculative_lm_calls:
            record.update(
                speculative_lm_calls=self.speculative_lm_calls,
                speculative_tokens=self.speculative_tokens,
                wasted_lm_calls=self.wasted_lm_calls,
                wasted_tokens=self.wasted_tokens,
                wasted_cost_usd=round(self.wasted_cost_usd, 8),
            )
        return record


def metered(run: Run) -> Usage | None:
    """The :class:`Usage` of ``run``, if it is metered."""
    usage = run.state.get(STATE_KEY)
    return usage if isinstance(usage, Usage) else None


def meter_run(run: Run, usage: Usage | None = None) -> Usage:
    """Meter ``run`` (call it at ``run_start``, in the run's context): attach :data:`METER` to the LMs it can use
    and return its :class:`Usage` (``usage``, when given, becomes it; else the one already there, or a new one)."""
    with _LOCK:
        current = metered(run)
        if usage is not None and current is not None and current is not usage:
            for name in Usage.__dataclass_fields__:  # what was counted before a Budget took over
                setattr(usage, name, getattr(current, name))
        if usage is not None or current is None:
            current = run.state[STATE_KEY] = usage or Usage()
    for lm in lms_of(run.module):
        meter_lm(lm)
    return current


class UsageMeter(BaseCallback):
    """The DSPy callback that feeds each LM call's usage to the :class:`Usage` of the run it belongs to.

    One process-wide instance (:data:`METER`), attached to an LM's ``callbacks`` by :func:`meter_lm`. Outside a
    metered run it does nothing but one context-variable read. It never raises into DSPy.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, tuple[Any, Usage, Usage | None]] = {}

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        run = current_run()
        usage = metered(run) if run is not None else None
        if usage is not None:
            self._pending[call_id] = (instance, usage, SPECULATION.get())

    def on_lm_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is None or exception is not None or outputs is None:
            return
        lm, usage, speculation = pending
        try:
            entry, model = _entry_for(lm, outputs), str(getattr(lm, "model", type(lm).__name__))
            usage.add_lm_call(entry, model)
            if speculation is not None:  # a call Speculate made ahead: its own ledger counts it too
                speculation.add_lm_call(entry, model)
        except Exception:  # metering must never break the LM call it observes
            logger.debug("rlm-events could not meter an LM call", exc_info=True)

    # DSPy 3.1 reports calls of an LM that is a BaseLM but not a dspy.LM (custom LMs, ScriptedLM) to the module
    # hooks; 3.2+ to the LM hooks. Both reach the same accounting.
    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if isinstance(instance, dspy.BaseLM):
            self.on_lm_start(call_id, instance, inputs)

    def on_module_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        self.on_lm_end(call_id, outputs, exception)

    # One shared instance: copies of an LM (lm.copy(), deepcopy) keep sharing it rather than cloning its state.
    def __copy__(self) -> UsageMeter:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> UsageMeter:
        return self

    def __reduce__(self) -> str:
        return "METER"


def _entry_for(lm: Any, outputs: Any) -> dict[str, Any] | None:
    """The history entry DSPy recorded for the call that returned ``outputs`` (the same object), if any."""
    history = getattr(lm, "history", None)
    if not isinstance(history, list):
        return None
    for entry in reversed(history[-HISTORY_SCAN:]):
        if isinstance(entry, dict) and entry.get("outputs") is outputs:
            return entry
    return None


METER = UsageMeter()
SPECULATION: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("rlm_events_speculation", default=None)
"""Set by :class:`~rlm_events.builtins.Speculate` around a call it makes ahead: that call's own ledger."""
_ATTACH_LOCK = threading.Lock()


def meter_lm(lm: Any) -> bool:
    """Attach :data:`METER` to ``lm`` (idempotent, thread-safe); ``False`` if ``lm`` cannot be metered."""
    if not isinstance(lm, dspy.BaseLM):
        return False
    with _ATTACH_LOCK:
        callbacks = getattr(lm, "callbacks", None)
        if not isinstance(callbacks, list):
            return False
        if not any(c is METER for c in callbacks):
            callbacks.append(METER)
    return True


__all__ = ["METER", "SPECULATION", "Usage", "UsageMeter", "entry_usage", "meter_lm", "meter_run", "metered", "usage_of"]
