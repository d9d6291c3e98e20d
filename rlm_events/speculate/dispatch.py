"""Calls made ahead, from dispatch to claim.

* `dispatch_calls()`: the predicted calls of one iteration that may start (per-iteration cap, arguments the
  interpreter would pass, DSPy's `max_llm_calls`, the run's Budgets) start on the run's pool, each in a copy of
  the run's context (so the usage meter, the Budget and `dspy.context` see them as the run's).
* `claim()`: at `tool_call`, the real call takes the result of a dispatched call whose name and arguments
  match exactly; anything else makes the real call.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import sys
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import CancelledError
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ..builtin import RLM_BUILTIN_TOOLS
from ..context import Run, ToolCallContext
from ..lm_usage import SPECULATION
from ..runtime import llm_call_counter
from . import repl as repl_io
from .budget_gate import BudgetGate
from .ledger import Dispatch, Live
from .planner import Predicted
from .spans import mark_span, span_current, start_span

LLM_TOOLS = frozenset(RLM_BUILTIN_TOOLS)
"""The sub-LLM tools every `dspy.RLM` gives its code."""


def lm_calls(call: Predicted) -> int:
    """The LM calls `call` makes (`llm_query_batched` makes one per prompt)."""
    if call.name != "llm_query_batched":
        return 1
    prompts = call.args[0] if call.args else call.kwargs.get("prompts")
    return len(prompts) if isinstance(prompts, (list, tuple)) else 1


def recorded_results(run: Run, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """How many calls of `name` with these arguments a resumed durable run's record answers in this iteration."""
    if "rlm_events.durable" not in sys.modules:  # no run is durable before rlm_events.durable is imported
        return 0
    from ..durable import Durable

    return Durable.recorded_results(run, name, args, kwargs)


def count_llm_calls_from_dspy(live: Live, run: Run) -> None:
    """Bring `live.llm_counted` up to DSPy's own `max_llm_calls` counter where rlm-events can read it: DSPy also
    counts calls Speculate never sees (a resumed durable run's calls answered from the record, which DSPy's counter
    continues from; DSPy 3.4.1's sub-agent facade), and a call made ahead that DSPy would refuse is never started.
    Speculate's own count is never lowered: it also holds calls dispatched that have not reached DSPy yet."""
    counter = llm_call_counter(run)
    if counter is None:
        return
    charged = counter.count
    with live.lock:
        live.llm_counted = max(live.llm_counted, charged)


def dispatch_calls(
    live: Live,
    run: Run,
    iteration: int,
    predicted: list[Predicted],
    repl: Any,
    tools: dict[str, Callable[..., Any]],
    repl_tools: dict[str, Callable[..., Any]],
    *,
    max_per_iteration: int,
    tracer: Any,
    streamed: bool = False,
) -> None:
    """Start the calls of `predicted` that may start; count the others on `live.stats.refused` by reason.

    `streamed`: planned from the code while the LM writes it; the calls of the whole code's planning that were
    started so for this iteration are not started again (`live.ahead`)."""
    normalize = repl_io.normalizer_for(repl)
    gate = BudgetGate(run)
    stats = live.stats
    limit = getattr(run.module, "max_llm_calls", None)
    if isinstance(limit, int):
        count_llm_calls_from_dspy(live, run)
    sent = live.sent.get(iteration, 0)
    ahead = live.ahead.setdefault(iteration, Counter())
    per_tool: dict[str, int] = {}
    answered: Counter[Any] = Counter()  # calls the durable record answers, met in this pass
    for call in predicted:
        weight = lm_calls(call) if call.name in LLM_TOOLS else 1
        if sent + weight > max_per_iteration:
            stats.refuse("per_iteration")
            continue
        try:
            args, kwargs = normalize(repl_tools.get(call.name, tools[call.name]), call.args, call.kwargs)
        except Exception:
            stats.refuse("arguments")
            continue
        key = repl_io.call_key(call.name, args, kwargs)
        if key is None:
            stats.refuse("arguments")
            continue
        if not streamed and ahead[key] > 0:
            ahead[key] -= 1  # started while the LM wrote the code
            continue
        if answered[key] < recorded_results(run, call.name, args, kwargs):
            answered[key] += 1  # a resumed durable run's committed result answers it: made ahead, paid for nothing
            stats.refuse("recorded")
            continue
        dispatch = Dispatch(call.name, args, kwargs, key, iteration)
        dispatch.after_unknown = call.after_unknown
        if call.name in LLM_TOOLS:
            # DSPy's max_llm_calls counts calls made ahead: never dispatch one it would refuse.
            if isinstance(limit, int) and live.llm_counted + weight > limit:
                stats.refuse("max_llm_calls")
                continue
            dispatch.weight = weight
        refusal = gate.refusal(dispatch, weight, per_tool)
        if refusal is not None:
            stats.refuse(refusal)
            continue
        sent += weight
        live.sent[iteration] = sent
        per_tool[call.name] = per_tool.get(call.name, 0) + 1
        if streamed:
            ahead[key] += 1
            stats.dispatched_streaming += 1
        submit(live, dispatch, tools[call.name], tracer)


def submit(live: Live, dispatch: Dispatch, fn: Callable[..., Any], tracer: Any) -> None:
    """Record `dispatch` on the ledger and start it on the run's pool."""
    context = contextvars.copy_context()  # the run's: the meter, dspy.context and current_run() see it
    with live.lock:
        live.pending.setdefault(dispatch.key, deque()).append(dispatch)
        live.all.append(dispatch)
        live.stats.dispatched += 1
        live.stats.past_unknown += dispatch.after_unknown
        live.llm_counted += dispatch.weight
    if tracer is not None:
        dispatch.span = start_span(tracer, dispatch, live.run)
    future = live.pool().submit(context.run, call_ahead, dispatch, fn)
    dispatch.future = future
    future.add_done_callback(lambda _: live.finished(dispatch))


def call_ahead(dispatch: Dispatch, fn: Callable[..., Any]) -> Any:
    """Run in a worker thread, in a copy of the run's context: the real tool, its LM calls on the dispatch's
    ledger as well as on the run's."""
    token = SPECULATION.set(dispatch.ledger)
    current = span_current(dispatch.span)
    try:
        result = fn(*dispatch.args, **dispatch.kwargs)
        if inspect.isawaitable(result):
            result = asyncio.run(_awaited(result))
        return result
    finally:
        if current is not None:
            current()
        SPECULATION.reset(token)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def claim(live: Live, ctx: ToolCallContext, next: Any, timeout: float) -> Any:
    """The `tool_call` of a speculable tool: the result of the dispatched call that matches it exactly (waiting
    up to `timeout` seconds for it to finish), else the real call."""
    key = repl_io.call_key(ctx.name, ctx.args, ctx.kwargs) if live.pending else None
    dispatch = live.take(key) if key is not None else None

    def real() -> Any:  # the code makes the call itself
        if ctx.name in LLM_TOOLS:
            calls = lm_calls(Predicted(ctx.name, tuple(ctx.args), dict(ctx.kwargs)))
            with live.lock:
                live.llm_counted += calls
        return next(ctx)

    if dispatch is None:
        with live.lock:
            live.stats.missed += 1
        return real()
    future = dispatch.future
    assert future is not None
    if future.cancel():  # not started yet: making the call now is as quick, and nothing was spent
        live.decide(dispatch, "cancelled")
        return real()
    started = time.perf_counter()
    try:
        result = future.result(timeout=timeout)
    except CancelledError:
        live.decide(dispatch, "cancelled")
        return real()
    except Exception as exc:  # it timed out or failed: the real call is made instead
        with live.lock:
            if isinstance(exc, FutureTimeout):
                live.stats.timeouts += 1
            else:
                live.stats.failed += 1
        live.decide(dispatch, "wasted")
        return real()
    finally:
        with live.lock:
            live.stats.waited_seconds += time.perf_counter() - started
    live.decide(dispatch, "claimed")
    mark_span(dispatch)
    ctx.result = result
    return ctx


__all__ = [
    "LLM_TOOLS",
    "call_ahead",
    "claim",
    "count_llm_calls_from_dspy",
    "dispatch_calls",
    "lm_calls",
    "submit",
]
