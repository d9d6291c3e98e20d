"""The one LM-usage parser and meter: every built-in and tap that reports tokens or cost reads them from here.

**Parsing.** DSPy records every LM call as an entry of the LM's `history`: `usage` (a dict, or an object with
attributes) and `cost`. [`entry_usage()`][rlm_events.lm_usage.entry_usage] reads every spelling LiteLLM and DSPy emit:
`prompt_tokens` or
`input_tokens`, `completion_tokens` or `output_tokens`, `total_tokens` (their sum when absent).

**What is billed.** The meter counts what the provider billed and the client could see, per LM call:

* *A call DSPy's cache answered* (memory or disk) made no request: it is counted in `cached_lm_calls`, costs
  nothing, consumes no budget, and the cost DSPy kept for it is added to `saved_cost_usd`. DSPy up to 3.3 (and
  3.4 for cache records in the LiteLLM format) marks the cached response `cache_hit=True` and empties its usage;
  DSPy 3.4's own cache records keep the entry's `cost` but give it an empty `usage` while the restored response
  still carries the usage it was billed with, and no `cache_hit` attribute: either marks a hit
  ([`entry_cached()`][rlm_events.lm_usage.entry_cached]). A cached answer that carried no usage is counted as unmetered.
* *A call whose usage cannot be seen* is counted in `lm_calls` and `unmetered_lm_calls` (its tokens in no
  total, so the run's cost is unknown: `Usage.cost_known`), and logged once per run: no history entry
  (`dspy.settings.disable_history`, `max_history_size=0`), an answer without `usage`, a call streamed
  (`dspy.streamify`) through LiteLLM without `dspy.settings.track_usage` (DSPy then does not ask the provider
  for `stream_options.include_usage` and LiteLLM's `stream_chunk_builder` *estimates* the usage with a local
  tokenizer: the estimate is kept apart, in `estimated_tokens`), and a streamed call that failed inside DSPy
  after the provider answered (DSPy 3.4 sends the request before it streams the chunks to the listener, and a
  call made in a worker thread, e.g. by `llm_query_batched`, fails there).
* *Retries* (LiteLLM's or DSPy's `num_retries`) happen inside one LM call: the call is counted once, with the
  usage of the attempt that answered; attempts that failed (429, 5xx, timeouts) were billed nothing.
* A call that failed with a provider error is not counted.

**Attribution: one policy, everywhere.** An LM call belongs to the run current in the context that made it. The
meter is a DSPy callback ([`METER`][rlm_events.lm_usage.METER], attached to the LMs a run can use when the run starts):
`on_lm_end` runs
in the caller's context, so the rlm-events run found there (a context variable, copied into the threads DSPy's
interpreters and, from 3.3 on, `llm_query_batched` run tools in) is the call's own, even when concurrent runs
share one LM instance; the call's own `history` entry (the one whose `outputs` is the object returned) gives
its usage. An LM call made where no run is current cannot be attributed to any run and is counted by none: DSPy
before 3.3 runs `llm_query_batched` prompts in threads without the caller's context. Budget, JsonlTrace,
OpenTelemetry, Recorder and the progress display all read the same [`Usage`][rlm_events.lm_usage.Usage], at
`run.state["usage"]`.
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

from .context import Run, StageContext
from .lm_history import lms_of
from .pricing import response_cost
from .runtime import assembled_by_litellm, current_run, failed_after_answer, stream_mode

logger = logging.getLogger("rlm_events")

_STATE_KEY = "usage"  # where metered(run) finds the run's Usage; read it only through metered()
HISTORY_SCAN = 256  # recent history entries searched for a call's own entry (others may interleave)
_LOCK = threading.Lock()  # guards every Usage update; contention is one increment per LM call


def _int(usage: Any, *keys: str) -> int:
    for key in keys:
        value = usage.get(key) if isinstance(usage, dict) else getattr(usage, key, None)
        if isinstance(value, int) and not isinstance(value, bool) and value:
            return value
    return 0


_TOKEN_KEYS = ("prompt_tokens", "input_tokens", "completion_tokens", "output_tokens", "total_tokens")


def reports_usage(usage: Any) -> bool:
    """Whether `usage` (a dict or an object) reports a token count. All zeros is no report: LiteLLM fills the
    usage of an answer that had none with zeros, and a billed call has at least one token."""
    return usage is not None and any(_int(usage, key) for key in _TOKEN_KEYS)


def entry_cached(entry: dict[str, Any]) -> bool:
    """Whether DSPy's cache answered the call of this history entry (see the module's docstring)."""
    response = entry.get("response")
    responses = response if isinstance(response, (tuple, list)) else (response,)
    if any(getattr(r, "cache_hit", False) is True for r in responses):
        return True
    # DSPy 3.4's cache: the entry's usage emptied, the restored response's own usage kept.
    return not reports_usage(entry.get("usage")) and any(reports_usage(getattr(r, "usage", None)) for r in responses)


def entry_usage(entry: dict[str, Any]) -> tuple[int, int, int, float | None, bool]:
    """`(input_tokens, output_tokens, total_tokens, cost_usd, cached)` of one LM history entry."""
    cached = entry_cached(entry)
    usage = entry.get("usage") or {}
    tokens_in = _int(usage, "prompt_tokens", "input_tokens")
    tokens_out = _int(usage, "completion_tokens", "output_tokens")
    total = _int(usage, "total_tokens") or tokens_in + tokens_out
    cost = entry.get("cost")
    priced = isinstance(cost, (int, float)) and not isinstance(cost, bool)
    return tokens_in, tokens_out, total, float(cost) if priced else None, cached  # type: ignore[arg-type]


def usage_of(entries: Iterable[dict[str, Any]]) -> tuple[int, int, float | None]:
    """`(input_tokens, output_tokens, cost)` summed over LM history entries (cost `None` if none known)."""
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
    fallback, `llm_query`/`llm_query_batched` and sub-agents on `sub_lm`). Lives at `run.state["usage"]`."""

    lm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens: int = 0
    """The providers' `total_tokens` (prompt + completion when absent)."""
    cost_usd: float = 0.0
    tokens_by_model: dict[str, int] = field(default_factory=dict)
    cached_lm_calls: int = 0
    """Calls DSPy answered from its cache: no request was made, they cost nothing and consume no budget."""
    saved_cost_usd: float = 0.0
    """What the cached calls cost when they were first paid for (DSPy keeps that cost on a cache hit)."""
    unpriced_lm_calls: int = 0
    """Paid calls whose cost LiteLLM could not price: while any, the run's cost is unknown (`cost_known`)."""
    unmetered_lm_calls: int = 0
    """Calls whose usage could not be seen (their tokens are in no total): no history entry
    (`dspy.settings.disable_history`, `max_history_size=0`), an answer without `usage`, a streamed call whose
    usage LiteLLM estimated, a streamed call that failed after the provider answered (see the module's docstring)."""
    estimated_tokens: int = 0
    """Tokens LiteLLM estimated for unmetered streamed calls (its local tokenizer, not the provider's count)."""
    unmetered_logged: bool = field(default=False, repr=False, compare=False)
    """Whether the run's first unmetered call was logged (once per run)."""
    largest_call_tokens: int = 0
    """The most tokens one LM call of the run used (a hard Budget's estimate of the next call)."""
    largest_call_cost_usd: float = 0.0
    speculative_lm_calls: int = 0
    """LM calls made ahead by [`Speculate`][rlm_events.builtins.Speculate] (included in the counts above) and
    settled."""
    speculative_tokens: int = 0
    wasted_lm_calls: int = 0
    """Of those, the calls no real call claimed: their tokens and cost were spent for nothing."""
    wasted_tokens: int = 0
    wasted_cost_usd: float = 0.0

    @property
    def cost_known(self) -> bool:
        """Whether [`cost_usd`][rlm_events.lm_usage.Usage.cost_usd] is the run's whole cost: no paid call was
        unpriced or unmetered."""
        return not (self.unpriced_lm_calls or self.unmetered_lm_calls)

    def cost_gaps(self) -> dict[str, int]:
        """Why [`cost_usd`][rlm_events.lm_usage.Usage.cost_usd] is not the whole cost: `unpriced_lm_calls` and
        `unmetered_lm_calls`, those that
        are not 0 (empty while [`cost_known`][rlm_events.lm_usage.Usage.cost_known])."""
        counts = (("unpriced_lm_calls", self.unpriced_lm_calls), ("unmetered_lm_calls", self.unmetered_lm_calls))
        return {name: count for name, count in counts if count}

    def add_speculation(self, ledger: Usage, *, wasted: bool) -> None:
        """Account for one settled speculative call whose own LM use is `ledger` (claimed, or `wasted`)."""
        with _LOCK:
            self.speculative_lm_calls += ledger.lm_calls
            self.speculative_tokens += ledger.tokens
            if wasted:
                self.wasted_lm_calls += ledger.lm_calls
                self.wasted_tokens += ledger.tokens
                self.wasted_cost_usd += ledger.cost_usd

    def add_lm_call(self, entry: dict[str, Any] | None, model: str, *, estimated: bool = False) -> str | None:
        """Account for one LM call from its DSPy history `entry` (`None`: it could not be found);
        `estimated`: its usage, if not cached, is LiteLLM's estimate of a stream's. Returns why the call is
        unmetered, if it is."""
        with _LOCK:
            self.lm_calls += 1
            if entry is None:
                self.unmetered_lm_calls += 1
                return "DSPy recorded no history entry for it"
            tokens_in, tokens_out, total, cost, cached = entry_usage(entry)
            if cached:
                self.cached_lm_calls += 1
                self.saved_cost_usd += cost or 0.0
                return None
            if estimated:
                self.unmetered_lm_calls += 1
                self.estimated_tokens += total
                return (
                    "it was streamed without dspy.settings.track_usage, so the provider sent no usage and LiteLLM "
                    "estimated it (dspy.configure(track_usage=True) asks for the real one)"
                )
            if not reports_usage(entry.get("usage")):
                self.unmetered_lm_calls += 1
                return "the provider's answer carried no usage"
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
            return None

    def add_unseen_call(self) -> None:
        """Account for one LM call that may have been billed but returned nothing to read (see the module)."""
        with _LOCK:
            self.lm_calls += 1
            self.unmetered_lm_calls += 1

    def log_unmetered(self, model: str, reason: str) -> None:
        """Log the run's first unmetered call (once per run: the count is in the run's usage records)."""
        with _LOCK:
            if self.unmetered_logged:
                return
            self.unmetered_logged = True
        logger.warning(
            "rlm-events: an LM call of %s could not be metered: %s. It is counted in unmetered_lm_calls and the "
            "run's cost is unknown (logged once per run).",
            model,
            reason,
        )

    def record(self) -> dict[str, Any]:
        """`{lm_calls, prompt_tokens, completion_tokens, total_tokens, cost_usd}`: what traces and spans report
        (`cost_usd` is `None` while the cost is unknown: see [`cost_known`][rlm_events.lm_usage.Usage.cost_known]); with
        `cached_lm_calls` and
        `saved_cost_usd` once DSPy's cache answered a call; `unpriced_lm_calls` / `unmetered_lm_calls` when
        any; `speculative_lm_calls`, `speculative_tokens`, `wasted_lm_calls`, `wasted_tokens` and
        `wasted_cost_usd` once calls made ahead by Speculate settled."""
        record: dict[str, Any] = {
            "lm_calls": self.lm_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.tokens,
            "cost_usd": round(self.cost_usd, 8) if self.cost_known else None,
        }
        if self.cached_lm_calls:
            record.update(cached_lm_calls=self.cached_lm_calls, saved_cost_usd=round(self.saved_cost_usd, 8))
        record.update(self.cost_gaps())
        if self.estimated_tokens:
            record["estimated_tokens"] = self.estimated_tokens
        if self.speculative_lm_calls:
            record.update(
                speculative_lm_calls=self.speculative_lm_calls,
                speculative_tokens=self.speculative_tokens,
                wasted_lm_calls=self.wasted_lm_calls,
                wasted_tokens=self.wasted_tokens,
                wasted_cost_usd=round(self.wasted_cost_usd, 8),
            )
        return record


def metered(run: Run | StageContext) -> Usage | None:
    """The [`Usage`][rlm_events.lm_usage.Usage] of a run (or of a context's run), if it is metered: how taps and
    built-ins read it."""
    if isinstance(run, StageContext):
        run = run.run
    usage = run.state.get(_STATE_KEY)
    return usage if isinstance(usage, Usage) else None


def meter_run(run: Run, usage: Usage | None = None) -> Usage:
    """Meter `run` (call it at `run_start`, in the run's context): attach [`METER`][rlm_events.lm_usage.METER] to the
    LMs it can use
    and return its [`Usage`][rlm_events.lm_usage.Usage] (`usage`, when given, becomes it; else the one already there,
    or a new one)."""
    with _LOCK:
        current = metered(run)
        if usage is not None and current is not None and current is not usage:
            for name in Usage.__dataclass_fields__:  # what was counted before a Budget took over
                setattr(usage, name, getattr(current, name))
        if usage is not None or current is None:
            current = run.state[_STATE_KEY] = usage or Usage()
    for lm in lms_of(run.module):
        meter_lm(lm)
    return current


class UsageMeter(BaseCallback):
    """The DSPy callback that feeds each LM call's usage to the [`Usage`][rlm_events.lm_usage.Usage] of the run it
    belongs to.

    One process-wide instance ([`METER`][rlm_events.lm_usage.METER]), attached to an LM's `callbacks` by
    [`meter_lm()`][rlm_events.lm_usage.meter_lm]. Outside a
    metered run it does nothing but one context-variable read. It never raises into DSPy.
    """

    def __init__(self) -> None:
        super().__init__()
        self._pending: dict[str, tuple[Any, Usage, Usage | None, str | None]] = {}

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        run = current_run()
        usage = metered(run) if run is not None else None
        if usage is not None:
            self._pending[call_id] = (instance, usage, SPECULATION.get(), stream_mode())

    def on_lm_end(self, call_id: str, outputs: Any | None, exception: Exception | None = None) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is None:
            return
        lm, usage, speculation, streaming = pending
        try:
            model = str(getattr(lm, "model", type(lm).__name__))
            if exception is not None or outputs is None:
                if streaming is not None and failed_after_answer(exception):
                    usage.add_unseen_call()
                    if speculation is not None:
                        speculation.add_unseen_call()
                    usage.log_unmetered(model, "a streamed call failed inside DSPy after the provider answered")
                return
            entry = _entry_for(lm, outputs)
            if streaming == "usage" and entry is not None and entry.get("cost") is None and assembled_by_litellm(entry):
                entry = {**entry, "cost": response_cost(entry.get("response"))}  # see pricing.response_cost
            estimated = streaming == "estimated" and entry is not None and assembled_by_litellm(entry)
            reason = usage.add_lm_call(entry, model, estimated=estimated)
            if speculation is not None:  # a call Speculate made ahead: its own ledger counts it too
                speculation.add_lm_call(entry, model, estimated=estimated)
            if reason is not None:
                usage.log_unmetered(model, reason)
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
    """The history entry DSPy recorded for the call that returned `outputs` (the same object), if any."""
    history = getattr(lm, "history", None)
    if not isinstance(history, list):
        return None
    for entry in reversed(history[-HISTORY_SCAN:]):
        if isinstance(entry, dict) and entry.get("outputs") is outputs:
            return entry
    return None


METER = UsageMeter()
SPECULATION: contextvars.ContextVar[Usage | None] = contextvars.ContextVar("rlm_events_speculation", default=None)
"""Set by [`Speculate`][rlm_events.builtins.Speculate] around a call it makes ahead: that call's own ledger."""
_ATTACH_LOCK = threading.Lock()


def meter_lm(lm: Any) -> bool:
    """Attach [`METER`][rlm_events.lm_usage.METER] to `lm` (idempotent, thread-safe); `False` if `lm` cannot be
    metered."""
    if not isinstance(lm, dspy.BaseLM):
        return False
    with _ATTACH_LOCK:
        callbacks = getattr(lm, "callbacks", None)
        if not isinstance(callbacks, list):
            return False
        if not any(c is METER for c in callbacks):
            callbacks.append(METER)
    return True


__all__ = [
    "METER",
    "SPECULATION",
    "Usage",
    "UsageMeter",
    "entry_cached",
    "entry_usage",
    "meter_lm",
    "meter_run",
    "metered",
    "reports_usage",
    "usage_of",
]
