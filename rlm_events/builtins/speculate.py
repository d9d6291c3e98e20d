"""``Speculate``: make the sub-LLM calls (and pure tool calls) an iteration's code is about to make ahead of it,
concurrently, and hand each result to the real call that asks for exactly that call.

LM-written code makes its calls one after another (``for c in chunks: out.append(llm_query(...))``); what the
user waits for is the sum of them. At ``pre_execution`` a shadow planner (:mod:`rlm_events.builtins._shadow`)
works out, without running the code, which calls of ``llm_query``, ``llm_query_batched`` and the tools marked
pure the code will make and with which arguments; they are dispatched on a thread pool, in the run's context (so
the usage meter, the Budget and ``dspy.context`` see them as the run's). At ``tool_call`` the real call claims a
dispatched result whose name and arguments match exactly; anything else makes the real call.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import dspy

from ..context import (
    PostExecutionContext,
    PreExecutionContext,
    Run,
    RunEndContext,
    RunStartContext,
    ToolCallContext,
)
from ..lm_usage import SPECULATION, Usage, meter_run, metered
from ..stages import Stage
from ..testing import _AST_LOCK
from . import _speculate_repl as repl_io
from ._base import RLM_BUILTIN_TOOLS, Builtin
from ._shadow import LIMITS, UNKNOWN, Limits, Planner, Predicted
from .usage import spend_of

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

logger = logging.getLogger("rlm_events")

STATE_KEY = "speculate"
_LIVE_KEY = "rlm_events.speculate:live"
_LLM_TOOLS = frozenset(RLM_BUILTIN_TOOLS)


@dataclass
class SpeculateStats:
    """What speculation did in one run: ``ctx.run.state["speculate"]`` (final at ``run_end``).

    Every dispatched call ends as exactly one of ``claimed``, ``wasted`` or ``cancelled`` (it had not started when
    its real call came, or when the iteration ended: the real call was made instead, and it cost nothing);
    ``speculated`` counts the ones that started. ``missed`` counts real calls of speculable tools
    that no dispatched call matched; ``refused`` predictions that were not dispatched, by reason (``per_iteration``,
    ``budget``, ``tool_cap``, ``max_llm_calls``, ``arguments``). LM use of the calls made ahead is also on the run's
    :class:`~rlm_events.lm_usage.Usage` (``speculative_*`` and ``wasted_*``), which traces and spans report.
    """

    planned: int = 0
    dispatched: int = 0
    speculated: int = 0
    claimed: int = 0
    wasted: int = 0
    cancelled: int = 0
    missed: int = 0
    timeouts: int = 0
    failed: int = 0
    refused: dict[str, int] = field(default_factory=dict)
    lm_calls: int = 0
    """LM calls the dispatched calls made (a batched call makes one per prompt)."""
    tokens: int = 0
    claimed_tokens: int = 0
    wasted_lm_calls: int = 0
    wasted_tokens: int = 0
    wasted_cost_usd: float = 0.0
    repl: str = ""
    """How the shadow read the REPL's variables: ``namespace``, ``probe``, ``off`` or ``unavailable: <why>``."""
    repl_reads: int = 0
    planning_seconds: float = 0.0
    waited_seconds: float = 0.0
    """Time real calls spent waiting for a dispatched call to finish before claiming it."""
    running_at_end: int = 0
    """Wasted calls still running when the run ended (after waiting up to ``timeout``): their LM use is added to the
    run's counts when they finish."""

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1


class _Dispatch:
    """One call made ahead: what it is, its future, and its own LM ledger."""

    __slots__ = (
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


class _Live:
    """One run's speculation: its executor, its dispatched calls by key, its stats."""

    def __init__(self, run: Run, stats: SpeculateStats, max_in_flight: int) -> None:
        self.run, self.stats, self.max_in_flight = run, stats, max_in_flight
        self.lock = threading.Lock()
        self.pending: dict[str, deque[_Dispatch]] = {}
        self.all: list[_Dispatch] = []
        self.executor: ThreadPoolExecutor | None = None
        self.readers: dict[int, Any] = {}
        self.llm_counted = 0  # sub-LLM calls DSPy's max_llm_calls counted: made ahead, and made by the code

    def pool(self) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="rlm-speculate")
        return self.executor

    def take(self, key: str) -> _Dispatch | None:
        with self.lock:
            queue = self.pending.get(key)
            if not queue:
                return None
            dispatch = queue.popleft()
            if not queue:
                del self.pending[key]
            return dispatch

    def decide(self, dispatch: _Dispatch, outcome: str) -> None:
        with self.lock:
            if dispatch.outcome is None:
                dispatch.outcome = outcome
                setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)
                if outcome == "cancelled":  # it never ran: DSPy did not count it
                    self.llm_counted -= dispatch.weight
        if outcome == "cancelled":
            _end_span(dispatch)
        self.settle(dispatch)

    def settle(self, dispatch: _Dispatch) -> None:
        """Count a dispatched call's LM use once it both finished and was claimed or given up."""
        future = dispatch.future
        with self.lock:
            if dispatch.settled or dispatch.outcome not in ("claimed", "wasted") or future is None:
                return
            if not future.done():
                return
            dispatch.settled = True
            ledger, stats, wasted = dispatch.ledger, self.stats, dispatch.outcome == "wasted"
            stats.lm_calls += ledger.lm_calls
            stats.tokens += ledger.tokens
            if wasted:
                stats.wasted_lm_calls += ledger.lm_calls
                stats.wasted_tokens += ledger.tokens
                stats.wasted_cost_usd += ledger.cost_usd
            else:
                stats.claimed_tokens += ledger.tokens
        usage = metered(self.run)
        if usage is not None:
            usage.add_speculation(ledger, wasted=wasted)
        _end_span(dispatch)

    def finished(self, dispatch: _Dispatch) -> None:
        """The dispatched call ended (or was cancelled): give back what a hard Budget set aside; settle it."""
        reserved, dispatch.reserved = dispatch.reserved, None
        if reserved is not None:
            spend, tokens, cost = reserved
            spend.release(tokens, cost)
        if dispatch.future is not None and not dispatch.future.cancelled():
            with self.lock:
                self.stats.speculated += 1
        self.settle(dispatch)

    def expire(self, iteration: int | None = None) -> list[_Dispatch]:
        """Give up the calls dispatched for iterations before ``iteration`` (all, if ``None``) that nobody
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


class Speculate(Builtin):
    """Runs the sub-LLM and pure tool calls an iteration's code is about to make ahead of it, concurrently; the
    real calls claim the results. Results are those of the real calls: only an exact match is claimed.

    ``Speculate(pure=(), *, llm=True, max_in_flight=16, max_per_iteration=32, timeout=30.0, repl_state=True,
    tracer_provider=None)``;
    install it with ``Speculate(...).install(events)`` (stages ``run_start``, ``pre_execution``, ``tool_call``,
    ``post_execution``, ``run_end``). Install it last, so that every other ``tool_call`` middleware (a Budget, a
    cache, a trace) sees each real call exactly as without it: middleware installed after it do not see claimed
    calls.

    Args:
        pure: tools that may be called ahead (functions, ``dspy.Tool`` objects or names). A pure tool's result must
            depend only on its arguments, and calling it must change nothing. No other user tool is ever called
            ahead, so none is ever called twice. Each must be a tool of the RLM (checked at install time).
        llm: speculate ``llm_query`` and ``llm_query_batched`` (the default).
        max_in_flight: calls of one run running ahead at once (the rest wait their turn).
        max_per_iteration: calls dispatched per iteration (``llm_query_batched`` counts each prompt).
        timeout: seconds a real call waits for its call made ahead to finish; after that it makes the call itself.
        repl_state: read the REPL's current variables to compute arguments (a loop over a list an earlier
            iteration built). Needs an interpreter whose variables can be read without side effects:
            :class:`~rlm_events.testing.InProcessInterpreter` (its namespace, in this process) or
            ``dspy.LocalInterpreter`` (a read-only probe expression, see
            :class:`~rlm_events.builtins._speculate_repl.ProbeReader`); any other interpreter is refused at install
            time. ``False`` plans from the code's literals and the execution's input variables only.
        tracer_provider: where the OpenTelemetry span of each call made ahead goes (the global provider if
            ``None``; nothing without OpenTelemetry installed).

    Guarantees:

    * **Safety.** Only ``llm_query``, ``llm_query_batched`` and the tools in ``pure`` are called ahead. Planning
      runs nothing of the code: the shadow evaluates its AST over plain-data copies (see
      :mod:`rlm_events.builtins._shadow`). A pure tool called after an unmarked tool or a function of the code is
      not called ahead (the unmarked one may change what it reads).
    * **Identical results.** A real call gets a result made ahead only when its tool name, positional and keyword
      arguments (after the interpreter's normalisation: through JSON, bound as the interpreter binds them) equal
      the dispatched call's exactly (as JSON: types, order and dict order included), and that call succeeded.
      Each dispatched call serves at most one real call. Anything else makes the real call.
    * **Accounting.** Calls made ahead run in the run's context: the one usage meter attributes their LM calls to
      the run, so Budget, traces and spans count their tokens, claimed or not; ``run.state["speculate"]``
      (:class:`SpeculateStats`) and the run's ``Usage`` (``speculative_*``, ``wasted_*``) say which were claimed
      and which wasted. A Budget whose limit is reached refuses dispatches; a per-tool cap refuses dispatches
      past it; a hard Budget reserves each sub-LLM dispatch as it reserves a real call, and refuses it when the
      reservation fails. DSPy's ``max_llm_calls`` counts calls made ahead, claimed or not, as the LM calls they are;
      none is dispatched past it, and near it a wasted call leaves the code one call fewer.
    * **Never degrades silently.** A REPL it cannot read at run time (an interpreter factory it could not check at
      install time) is logged once per RLM, and the run plans without REPL state (``stats.repl`` says so).
      Speculation never fails the run: an error of its own is logged and the run goes on without it.
    """

    STAGES: ClassVar[tuple[Stage, ...]] = (
        Stage.RUN_START,
        Stage.PRE_EXECUTION,
        Stage.TOOL_CALL,
        Stage.POST_EXECUTION,
        Stage.RUN_END,
    )

    def __init__(
        self,
        pure: Iterable[Any] = (),
        *,
        llm: bool = True,
        max_in_flight: int = 16,
        max_per_iteration: int = 32,
        timeout: float = 30.0,
        repl_state: bool = True,
        tracer_provider: Any = None,
        limits: Limits = LIMITS,
    ) -> None:
        if isinstance(pure, (str, bytes)) or callable(pure):
            raise TypeError(f"Speculate(pure=...) takes a collection of tools; use [{pure!r}]")
        self.pure: tuple[Any, ...] = tuple(pure)
        self.pure_names = frozenset(_tool_name(item) for item in self.pure)
        for name in ("max_in_flight", "max_per_iteration"):
            value = locals()[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Speculate({name}=...) must be an int >= 1, got {value!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"Speculate(timeout=...) must be a positive number of seconds, got {timeout!r}")
        for name, flag in (("llm", llm), ("repl_state", repl_state)):
            if not isinstance(flag, bool):
                raise TypeError(f"Speculate({name}=...) must be True or False, got {flag!r}")
        self.llm, self.repl_state = llm, repl_state
        self.max_in_flight, self.max_per_iteration, self.timeout = max_in_flight, max_per_iteration, float(timeout)
        self.limits = limits
        self.tracer = _tracer(tracer_provider)
        self.speculable = (_LLM_TOOLS if llm else frozenset()) | self.pure_names
        names = "|".join(re.escape(n) for n in sorted(self.speculable)) or r"(?!)"
        self._mentions = re.compile(rf"\b(?:{names})\b")
        self._warned: set[tuple[int, str]] = set()

    # -- install-time checks

    def check(self, events: Instrumentation) -> None:
        for module in events.modules:
            self._check_pure(module)
            if self.repl_state:
                cls = repl_io.interpreter_class(module)
                reason = repl_io.unsupported_reason(cls) if cls is not None else None
                if reason is not None:
                    raise ValueError(
                        f"Speculate cannot read the REPL state of {type(module).__name__}'s interpreter: {reason}. "
                        "It reads variables from rlm_events.testing.InProcessInterpreter (its namespace, in "
                        "process) and dspy.LocalInterpreter (a checked read-only expression). Use another "
                        "interpreter, or Speculate(..., repl_state=False) to plan from the code's literals and the "
                        "input variables only."
                    )

    def _check_pure(self, module: Any) -> None:
        tools = dict(getattr(module, "tools", None) or {})
        listing = ", ".join(sorted(tools)) or "none"
        for item in self.pure:
            name = _tool_name(item)
            if name in _LLM_TOOLS:
                continue
            tool = tools.get(name)
            if tool is None:
                raise ValueError(
                    f"Speculate(pure=...): {item!r} is not a tool of this RLM. Tools of this RLM: {listing} "
                    "(llm_query and llm_query_batched are speculated unless llm=False)"
                )
            given = item.func if isinstance(item, dspy.Tool) else item
            actual = tool.func if isinstance(tool, dspy.Tool) else tool
            if callable(given) and not isinstance(item, str) and given is not actual:
                raise ValueError(
                    f"Speculate(pure=...): {item!r} is not the function of this RLM's tool {name!r}. Tools of this "
                    f"RLM: {listing}"
                )

    # -- the stages

    def __call__(self, ctx: Any, next: Any) -> Any:
        if isinstance(ctx, ToolCallContext):
            return self._tool_call(ctx, next)
        if isinstance(ctx, PreExecutionContext):
            ctx = next(ctx)  # plan on the code that will run: after every other middleware changed or refused it
            if not ctx.skipped:
                self._guarded(self._speculate, ctx)
            return ctx
        if isinstance(ctx, PostExecutionContext):
            live = ctx.run.state.get(_LIVE_KEY)
            if isinstance(live, _Live):
                self._guarded(live.expire)
            return next(ctx)
        if isinstance(ctx, RunStartContext):
            self._live(ctx.run)
            meter_run(ctx.run)  # so that calls made ahead are metered even without a Budget or trace
            return next(ctx)
        if isinstance(ctx, RunEndContext):
            self._guarded(self._finish, ctx.run)
            return next(ctx)
        raise self._wrong_stage(ctx)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # speculation must never break the run it speeds up
            logger.warning("rlm-events: Speculate failed; the run goes on without it", exc_info=True)

    def _live(self, run: Run) -> _Live:
        live = run.state.get(_LIVE_KEY)
        if not isinstance(live, _Live):
            stats = run.state.setdefault(STATE_KEY, SpeculateStats())
            live = run.state[_LIVE_KEY] = _Live(run, stats, self.max_in_flight)
        return live

    @staticmethod
    def stats(run: Run | Any) -> SpeculateStats | None:
        """The :class:`SpeculateStats` of a run (or of a context's run)."""
        state = getattr(getattr(run, "run", run), "state", {})
        stats = state.get(STATE_KEY)
        return stats if isinstance(stats, SpeculateStats) else None

    # -- pre_execution: plan and dispatch

    def _speculate(self, ctx: PreExecutionContext) -> None:
        live = self._live(ctx.run)
        iteration = ctx.iteration or 0
        live.expire(iteration)
        if not self._mentions.search(ctx.code):
            return
        found = repl_io.iteration_of(ctx.run)
        if found is None:
            self._warn_once(ctx.run, "iteration", "could not find this iteration's REPL; nothing is speculated")
            return
        repl, variables = found
        tools = repl_io.raw_tools(repl, self.speculable)
        repl_tools = dict(vars(repl).get("tools") or {}) if hasattr(repl, "__dict__") else {}
        if not tools:
            return
        started = time.perf_counter()
        try:
            with _AST_LOCK:
                tree = ast_parse(ctx.code)
        except (SyntaxError, ValueError):
            return
        predicted = self._plan(live, ctx.run, tree, repl, variables, frozenset(tools), frozenset(repl_tools))
        live.stats.planning_seconds += time.perf_counter() - started
        live.stats.planned += len(predicted)
        if predicted:
            self._dispatch(live, ctx.run, iteration, predicted, repl, tools, repl_tools)

    def _reader(self, live: _Live, run: Run, repl: Any) -> Any:
        if not self.repl_state:
            live.stats.repl = "off"
            return None
        reader = live.readers.get(id(repl))
        if reader is None:
            reader = live.readers[id(repl)] = repl_io.reader_for(repl)
            if isinstance(reader, str):
                self._warn_once(
                    run,
                    "repl",
                    f"cannot read the REPL's variables ({reader}); planning from literals and input variables only",
                )
        if isinstance(reader, str):
            live.stats.repl = f"unavailable: {reader}"
            return None
        live.stats.repl = reader.kind
        return reader

    def _plan(
        self,
        live: _Live,
        run: Run,
        tree: Any,
        repl: Any,
        variables: dict[str, Any],
        speculable: frozenset[str],
        tools: frozenset[str],
    ) -> list[Predicted]:
        reader = self._reader(live, run, repl)

        def planned(values: Any, absent: Any) -> Any:
            return Planner(speculable=speculable, tools=tools, values=values, absent=absent, limits=self.limits).run(
                tree
            )

        if isinstance(reader, repl_io.NamespaceReader):
            values, absent = reader.values(variables, self.limits)
            return planned(values, absent).calls  # type: ignore[no-any-return]
        if not isinstance(reader, repl_io.ProbeReader):
            return planned(repl_io.Values(variables, {}, self.limits), None).calls  # type: ignore[no-any-return]
        read: dict[str, Any] = {}
        asked: set[str] = set()
        absent_known: frozenset[str] | None = None
        for _ in range(3):  # each read can reveal names that were hidden behind unknown values
            values = repl_io.Values(variables, read, self.limits)
            plan = planned(values, repl_io.Absent(values, absent_known) if absent_known is not None else None)
            wanted = {n for n in plan.needs if n not in asked and n not in variables}
            if not wanted or not reader.started():
                return plan.calls  # type: ignore[no-any-return]
            wanted |= {n for n in plan.assumed_builtins if n not in asked}
            got, bound = reader.read(sorted(wanted), self.limits)
            live.stats.repl_reads += 1
            asked |= wanted
            read.update(got)
            read.update({name: UNKNOWN for name in bound if name not in got})
            absent_known = frozenset(asked - set(read))
        return plan.calls  # type: ignore[no-any-return]

    def _dispatch(
        self,
        live: _Live,
        run: Run,
        iteration: int,
        predicted: list[Predicted],
        repl: Any,
        tools: dict[str, Callable[..., Any]],
        repl_tools: dict[str, Callable[..., Any]],
    ) -> None:
        normalize = repl_io.normalizer_for(repl)
        budgets = _budgets_of(run)
        spend = spend_of(run)
        stats = live.stats
        limit = getattr(run.module, "max_llm_calls", None)
        sent = 0
        per_tool: dict[str, int] = {}
        for call in predicted:
            weight = _lm_calls(call) if call.name in _LLM_TOOLS else 1
            if sent + weight > self.max_per_iteration:
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
            dispatch = _Dispatch(call.name, args, kwargs, key, iteration)
            if call.name in _LLM_TOOLS:
                # DSPy's max_llm_calls counts calls made ahead: never dispatch one it would refuse.
                if isinstance(limit, int) and live.llm_counted + weight > limit:
                    stats.refuse("max_llm_calls")
                    continue
                dispatch.weight = weight
            refusal = _budget_refusal(budgets, spend, dispatch, weight, per_tool)
            if refusal is not None:
                stats.refuse(refusal)
                continue
            sent += weight
            per_tool[call.name] = per_tool.get(call.name, 0) + 1
            self._submit(live, dispatch, tools[call.name])

    def _submit(self, live: _Live, dispatch: _Dispatch, fn: Callable[..., Any]) -> None:
        context = contextvars.copy_context()  # the run's: the meter, dspy.context and current_run() see it
        with live.lock:
            live.pending.setdefault(dispatch.key, deque()).append(dispatch)
            live.all.append(dispatch)
            live.stats.dispatched += 1
            live.llm_counted += dispatch.weight
        if self.tracer is not None:
            dispatch.span = _start_span(self.tracer, dispatch, live.run)
        future = live.pool().submit(context.run, _call_ahead, dispatch, fn)
        dispatch.future = future
        future.add_done_callback(lambda _: live.finished(dispatch))

    # -- tool_call: claim

    def _tool_call(self, ctx: ToolCallContext, next: Any) -> Any:
        live = ctx.run.state.get(_LIVE_KEY)
        if not isinstance(live, _Live) or ctx.name not in self.speculable:
            return next(ctx)
        key = repl_io.call_key(ctx.name, ctx.args, ctx.kwargs) if live.pending else None
        dispatch = live.take(key) if key is not None else None

        def real() -> Any:  # the code makes the call itself
            if ctx.name in _LLM_TOOLS:
                calls = _lm_calls(Predicted(ctx.name, tuple(ctx.args), dict(ctx.kwargs)))
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
            result = future.result(timeout=self.timeout)
        except FutureTimeout:
            with live.lock:
                live.stats.timeouts += 1
            live.decide(dispatch, "wasted")
            return real()
        except CancelledError:
            live.decide(dispatch, "cancelled")
            return real()
        except Exception:
            with live.lock:
                live.stats.failed += 1
            live.decide(dispatch, "wasted")
            return real()
        finally:
            with live.lock:
                live.stats.waited_seconds += time.perf_counter() - started
        live.decide(dispatch, "claimed")
        _mark_span(dispatch)
        ctx.result = result
        return ctx

    # -- run_end

    def _finish(self, run: Run) -> None:
        live = run.state.get(_LIVE_KEY)
        if not isinstance(live, _Live):
            return
        live.expire()
        running = [d.future for d in live.all if d.future is not None and not d.future.done()]
        if running:
            wait_futures(running, timeout=self.timeout)  # their tokens belong to this run: count them before it ends
        live.stats.running_at_end = sum(1 for d in live.all if d.future is not None and not d.future.done())
        if live.executor is not None:
            live.executor.shutdown(wait=False, cancel_futures=True)

    def _warn_once(self, run: Run, what: str, message: str) -> None:
        key = (id(run.module), what)
        if key not in self._warned:
            self._warned.add(key)
            logger.warning("rlm-events: Speculate on %s: %s", type(run.module).__qualname__, message)

    def __repr__(self) -> str:
        pure = [_tool_name(p) for p in self.pure]
        options = {
            "pure": pure or None,
            "llm": None if self.llm else False,
            "max_in_flight": self.max_in_flight,
            "max_per_iteration": self.max_per_iteration,
            "timeout": self.timeout,
            "repl_state": None if self.repl_state else False,
        }
        return "Speculate({})".format(", ".join(f"{k}={v!r}" for k, v in options.items() if v is not None))


# -- helpers --------------------------------------------------------------------------------------------------


def ast_parse(code: str) -> Any:
    import ast

    return ast.parse(code, mode="exec")


def _tool_name(item: Any) -> str:
    if isinstance(item, str):
        if not item.isidentifier():
            raise ValueError(f"Speculate(pure=...): {item!r} is not a tool name")
        return item
    if isinstance(item, dspy.Tool):
        return str(item.name)
    name = getattr(item, "__name__", None)
    if callable(item) and isinstance(name, str):
        return name
    raise TypeError(f"Speculate(pure=...) takes tools (functions, dspy.Tool or names), got {item!r}")


def _lm_calls(call: Predicted) -> int:
    if call.name != "llm_query_batched":
        return 1
    prompts = call.args[0] if call.args else call.kwargs.get("prompts")
    return len(prompts) if isinstance(prompts, (list, tuple)) else 1


def _call_ahead(dispatch: _Dispatch, fn: Callable[..., Any]) -> Any:
    """Run in a worker thread, in a copy of the run's context: the real tool, its LM calls on the dispatch's
    ledger as well as on the run's."""
    token = SPECULATION.set(dispatch.ledger)
    current = _span_current(dispatch.span)
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


def _budgets_of(run: Run) -> list[Any]:
    from ..instrumentation import instrumentation_of
    from .budget import Budget

    events = instrumentation_of(run.module)
    if events is None:
        return []
    return [mw for mw in events.plan.chains[Stage.TOOL_CALL] if isinstance(mw, Budget)]


def _budget_refusal(
    budgets: list[Any], spend: Any, dispatch: _Dispatch, weight: int, per_tool: dict[str, int]
) -> str | None:
    """Why a Budget would not let ``dispatch`` start (``None``: it may; a hard Budget's reservation is held)."""
    if not budgets or spend is None:
        return None
    for budget in budgets:
        if budget._exceeded(spend, include_iterations=False) is not None:
            return "budget"
        cap = budget.max_tool_calls.get(dispatch.name)
        if cap is not None and spend.tool_calls.get(dispatch.name, 0) + per_tool.get(dispatch.name, 0) >= cap:
            return "tool_cap"
    hard = next((b for b in budgets if b.hard), None)
    if hard is not None and dispatch.name in _LLM_TOOLS:  # reserved as the hard Budget reserves a real call
        tokens, cost = weight * spend.largest_call_tokens, weight * spend.largest_call_cost_usd
        if not spend.reserve(tokens, cost, hard.max_tokens, hard.max_cost_usd):
            return "budget"
        dispatch.reserved = (spend, tokens, cost)
    return None


def _tracer(provider: Any) -> Any:
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return (provider or trace).get_tracer("rlm_events.speculate")  # the global provider: a proxy until one is set


def _start_span(tracer: Any, dispatch: _Dispatch, run: Run) -> Any:
    """A span for one call made ahead, child of the span current at pre_execution; ended when it settles, with
    ``rlm.speculate.outcome`` (claimed, wasted or cancelled) and the LM use it cost."""
    try:
        return tracer.start_span(
            f"speculate {dispatch.name}",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": dispatch.name,
                "rlm.run.id": run.id,
                "rlm.iteration": dispatch.iteration,
                "rlm.speculative": True,
            },
        )
    except Exception:
        logger.debug("rlm-events: Speculate could not start a span", exc_info=True)
        return None


def _span_current(span: Any) -> Callable[[], None] | None:
    """Make ``span`` current in this thread (so spans made inside the call nest under it); returns the undo."""
    if span is None:
        return None
    from opentelemetry import context, trace

    token = context.attach(trace.set_span_in_context(span))
    return lambda: context.detach(token)


def _end_span(dispatch: _Dispatch) -> None:
    span, dispatch.span = dispatch.span, None
    if span is None:
        return
    try:
        span.set_attribute("rlm.speculate.outcome", dispatch.outcome or "unknown")
        ledger = dispatch.ledger
        if ledger.lm_calls:
            span.set_attribute("gen_ai.usage.input_tokens", ledger.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", ledger.completion_tokens)
        future = dispatch.future
        error = future.exception() if future is not None and future.done() and not future.cancelled() else None
        if error is not None:
            span.set_attribute("error.type", type(error).__qualname__)
        span.end()
    except Exception:
        logger.debug("rlm-events: Speculate could not end a span", exc_info=True)


def _mark_span(dispatch: _Dispatch) -> None:
    """Mark the span current at the claim (an OpenTelemetryTap's tool span) as served by a call made ahead."""
    try:
        from opentelemetry import trace
    except ImportError:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("rlm.speculate.claimed", True)
        span.set_attribute("rlm.speculate.tokens", dispatch.ledger.tokens)


__all__ = ["Speculate", "SpeculateStats"]
