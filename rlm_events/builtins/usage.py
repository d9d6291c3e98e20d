"""Per-call LM usage: what each LM call of one RLM call cost, read from what DSPy itself recorded.

How usage is attributed, and why this way. DSPy 3.4 offers three mechanisms; only one is right per call:

* ``dspy.settings.track_usage`` / ``dspy.utils.usage_tracker.track_usage()`` sums *tokens only* (no cost) into a
  tracker held in a context variable, and yields it only when the block ends; a ``with track_usage()`` around a
  batch of concurrent calls puts all of them in one tracker. Not per call, not live, no cost.
* ``Prediction.get_lm_usage()`` is the same tracker's total, after the call returned. Not live.
* ``BaseCallback.on_lm_start`` / ``on_lm_end`` run for every LM call *in the caller's context*, before and after
  the call, with the LM instance. **This is what we use.** The LM call happens inside one RLM call, so the
  rlm-events run current in that context (a context variable set by the instrumented ``forward``/``aforward`` and
  copied into the threads DSPy's interpreters and ``llm_query_batched`` run tools in) tells which call it belongs
  to, even when many calls share one LM concurrently. ``on_lm_end`` then finds the call's own ``lm.history``
  entry (the entry whose ``outputs`` is the very object returned) and reads the ``usage`` and ``cost`` DSPy
  recorded: real provider counts, and LiteLLM's USD price, not an estimate.

Fallbacks: a call whose entry cannot be found (``dspy.settings.disable_history``, ``max_history_size=0``) counts in
``Spend.unmetered_lm_calls``; a call without a price counts in ``Spend.unpriced_lm_calls``; cached responses count
in ``Spend.cached_lm_calls`` and cost nothing. LMs that are not ``dspy.BaseLM`` instances cannot be metered.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import dspy
from dspy.utils.callback import BaseCallback

from ..context import Run
from ..lm_history import lms_of
from ..runtime import current_run

logger = logging.getLogger("rlm_events")

STATE_KEY = "budget"
HISTORY_SCAN = 256  # recent history entries searched for a call's own entry (others may interleave)
_LOCK = threading.Lock()  # guards every Spend update; contention is one increment per LM or tool call


@dataclass
class Spend:
    """What one RLM call has spent so far, and why its :class:`~rlm_events.builtins.Budget` stopped it.

    Lives at ``ctx.run.state["budget"]`` (see :meth:`Budget.spent`). Counts cover every LM call made while the
    call ran: the main LM's actions, the extract fallback, and ``llm_query``/``llm_query_batched``/sub-agents on
    ``sub_lm``. ``tokens`` is the providers' ``total_tokens`` (prompt + completion when absent).
    """

    iterations: int = 0
    seconds: float = 0.0
    lm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: int = 0
    cost_usd: float = 0.0
    tokens_by_model: dict[str, int] = field(default_factory=dict)
    cached_lm_calls: int = 0
    unpriced_lm_calls: int = 0
    unmetered_lm_calls: int = 0
    tool_calls: dict[str, int] = field(default_factory=dict)
    denied_tool_calls: dict[str, int] = field(default_factory=dict)
    stopped_by: str | None = None
    """``"iterations"``, ``"seconds"``, ``"tokens"`` or ``"cost_usd"``: the limit that ended the run, if any."""
    reason: str | None = None
    """The same, in words: ``"tokens: 1,532 spent, limit 1,000"``."""
    started: float = field(default_factory=time.monotonic, repr=False)

    def elapsed(self) -> float:
        """Seconds since the call started."""
        return time.monotonic() - self.started

    def add_lm_call(self, entry: dict[str, Any] | None, model: str) -> None:
        """Account for one LM call from its DSPy history ``entry`` (``None``: it could not be found)."""
        with _LOCK:
            self.lm_calls += 1
            if entry is None:
                self.unmetered_lm_calls += 1
                return
            if getattr(entry.get("response"), "cache_hit", False):
                self.cached_lm_calls += 1
                return
            usage = entry.get("usage") or {}
            prompt, completion = _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")
            total = _count(usage, "total_tokens") or prompt + completion
            self.prompt_tokens += prompt
            self.completion_tokens += completion
            self.tokens += total
            self.tokens_by_model[model] = self.tokens_by_model.get(model, 0) + total
            cost = entry.get("cost")
            if isinstance(cost, (int, float)) and not isinstance(cost, bool):
                self.cost_usd += float(cost)
            else:
                self.unpriced_lm_calls += 1

    def reserve_tool(self, name: str, cap: int | None) -> bool:
        """Count one call of tool ``name`` unless that would exceed ``cap``; whether it was counted (atomic, so
        concurrent tool calls of one run cannot overshoot the cap)."""
        with _LOCK:
            used = self.tool_calls.get(name, 0)
            if cap is not None and used >= cap:
                return False
            self.tool_calls[name] = used + 1
            return True

    def count_denied(self, name: str) -> None:
        with _LOCK:
            self.denied_tool_calls[name] = self.denied_tool_calls.get(name, 0) + 1


def _count(usage: Any, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else getattr(usage, key, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def spend_of(run: Run) -> Spend | None:
    """The :class:`Spend` of ``run``, if a Budget is metering it."""
    spend = run.state.get(STATE_KEY)
    return spend if isinstance(spend, Spend) else None


class UsageMeter(BaseCallback):
    """The DSPy callback that feeds each LM call's usage to the :class:`Spend` of the run it belongs to.

    One process-wide instance (:data:`METER`), attached to an LM's ``callbacks`` by :func:`meter_lm`. Outside a
    metered run it does nothing but one context-variable read. It never raises into DSPy.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, tuple[Any, Spend]] = {}

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        run = current_run()
        spend = spend_of(run) if run is not None else None
        if spend is not None:
            self._pending[call_id] = (instance, spend)

    def on_lm_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is None or exception is not None or outputs is None:
            return
        lm, spend = pending
        try:
            spend.add_lm_call(_entry_for(lm, outputs), str(getattr(lm, "model", type(lm).__name__)))
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


__all__ = ["METER", "Spend", "UsageMeter", "current_run", "lms_of", "meter_lm", "spend_of"]
