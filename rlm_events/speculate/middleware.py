"""`Speculate`: make the sub-LLM calls (and pure tool calls) an iteration's code is about to make ahead of it,
concurrently, and hand each result to the real call that asks for exactly that call.

LM-written code makes its calls one after another (`for c in chunks: out.append(llm_query(...))`); what the
user waits for is the sum of them. At `pre_execution` a shadow planner (`rlm_events.speculate.planner`)
works out, without running the code, which calls of `llm_query`, `llm_query_batched` and the tools marked
pure the code will make and with which arguments; they are dispatched on a thread pool, in the run's context (so
the usage meter, the Budget and `dspy.context` see them as the run's). At `tool_call` the real call claims a
dispatched result whose name and arguments match exactly; anything else makes the real call
(`rlm_events.speculate.dispatch`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING, Any, ClassVar

import dspy

from .. import context
from .._ast import LIMITS, Limits
from ..builtin import Builtin, check_int
from ..lm_usage import meter_run
from ..runtime import interpreter_class, stream_actions
from ..stages import Stage
from . import repl as repl_io
from .dispatch import LLM_TOOLS, claim
from .iteration import Planning
from .ledger import Live
from .spans import tracer_for
from .stats import SpeculateStats
from .streamed import ActionStream

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

logger = logging.getLogger("rlm_events")

# Where a run's SpeculateStats and its live speculation (Live) are kept in run.state: the stats are read only through
# Speculate.stats(), the live state only by Speculate itself.
_STATS_KEY = "speculate"
_LIVE_KEY = "rlm_events.speculate:live"

_UNREADABLE = (
    "Speculate cannot read the REPL state of {owner}'s interpreter: {reason}. It reads variables from "
    "rlm_events.inprocess.InProcessInterpreter (its namespace, in process), dspy.LocalInterpreter (a checked "
    "read-only expression) and rlm_events.sandbox.SandboxedInterpreter (a read-only request of its worker). Use "
    "another interpreter, or Speculate(..., repl_state=False) to plan from the code's literals and the input "
    "variables only."
)


class Speculate(Builtin):
    """Runs the sub-LLM and pure tool calls an iteration's code is about to make ahead of it, concurrently; the
    real calls claim the results. Results are those of the real calls: only an exact match is claimed.

    `Speculate(pure=(), *, llm=True, max_in_flight=16, max_per_iteration=32, timeout=30.0, repl_state=True,
    past_unknown_calls=True, stream=True, tracer_provider=None)`;
    install it with `Speculate(...).install(events)` (stages `run_start`, `pre_execution`, `tool_call`,
    `post_execution`, `run_end`). Install it last, so that every other `tool_call` middleware (a Budget, a
    cache, a trace) sees each real call exactly as without it: middleware installed after it do not see claimed
    calls.

    Args:
        pure: tools that may be called ahead (functions, `dspy.Tool` objects or names). A pure tool's result must
            depend only on its arguments, and calling it must change nothing. No other user tool is ever called
            ahead, so none is ever called twice. Each must be a tool of the RLM (checked at install time).
        llm: speculate `llm_query` and `llm_query_batched` (the default).
        max_in_flight: calls of one run running ahead at once (the rest wait their turn).
        max_per_iteration: calls dispatched per iteration (`llm_query_batched` counts each prompt).
        timeout: seconds a real call waits for its call made ahead to finish; after that it makes the call itself.
        repl_state: read the REPL's current variables to compute arguments (a loop over a list an earlier
            iteration built). Needs an interpreter whose variables can be read without side effects:
            [`InProcessInterpreter`][rlm_events.inprocess.InProcessInterpreter] (its namespace, in this process) or
            `dspy.LocalInterpreter` (a read-only probe expression, see
            `ProbeReader`) or [`SandboxedInterpreter`][rlm_events.sandbox.SandboxedInterpreter] (a read-only request
            of its worker, see `SandboxReader`); any other interpreter is refused at install
            time. `False` plans from the code's literals and the execution's input variables only.
        past_unknown_calls: call pure tools ahead even when the code first calls something the planner cannot follow
            (a function of its own, an unmarked tool, a library function not known to be side-effect free). Such a
            call cannot change a pure tool's result, only whether the arguments the planner computed are those the
            code will pass: a misprediction wastes the call made ahead (`stats.past_unknown_wasted`), never changes
            a result. `False` keeps the conservative order: no pure tool is called ahead past such a call.
            `llm_query`/`llm_query_batched` are planned past them either way. Calls of known side-effect-free
            library functions (`t0 = time.perf_counter()`, `json.dumps(...)`; see
            `rlm_events.speculate.library`) are followed in both modes.
        stream: when the main LM can stream (a `dspy.LM` through DSPy's adapters; see `rlm_events._patch.streaming`),
            stream `generate_action`'s call internally and dispatch each call as soon as its statement is written,
            while the LM goes on writing (`rlm_events.speculate.streamed`). The action, its history entry and its
            usage are those of the non-streamed call. Where it cannot stream (another LM or predictor, a cache hit,
            an error mid-stream: the call is then made again without streaming), the code is planned when complete,
            as with `False`; said once per RLM at INFO (`stats.stream`). Sync and async calls (`acall`) alike.
        tracer_provider: where the OpenTelemetry span of each call made ahead goes (the global provider if
            `None`; nothing without OpenTelemetry installed).

    Guarantees:

    * **Safety.** Only `llm_query`, `llm_query_batched` and the tools in `pure` are called ahead. Planning
      runs nothing of the code: the shadow evaluates its AST over plain-data copies (see
      `rlm_events.speculate.planner`). A tool not marked pure is never called ahead. With
      `past_unknown_calls=False`, a pure tool called after an unmarked tool or a function of the code is not called
      ahead either.
    * **Identical results.** A real call gets a result made ahead only when its tool name, positional and keyword
      arguments (after the interpreter's normalisation: through JSON, bound as the interpreter binds them) equal
      the dispatched call's exactly (as JSON: types, order and dict order included), and that call succeeded.
      Each dispatched call serves at most one real call. Anything else makes the real call.
    * **Accounting.** Calls made ahead run in the run's context: the one usage meter attributes their LM calls to
      the run, so Budget, traces and spans count their tokens, claimed or not;
      [`Speculate.stats()`][rlm_events.speculate.middleware.Speculate.stats]
      ([`SpeculateStats`][rlm_events.speculate.stats.SpeculateStats]) and the run's `Usage` (`speculative_*`,
      `wasted_*`) say which were claimed
      and which wasted. A Budget whose limit is reached refuses dispatches; a per-tool cap refuses dispatches
      past it; a hard Budget reserves each sub-LLM dispatch as it reserves a real call, and refuses it when the
      reservation fails. DSPy's `max_llm_calls` counts calls made ahead, claimed or not, as the LM calls they are;
      none is dispatched past it, and near it a wasted call leaves the code one call fewer.
    * **Never degrades silently.** A REPL it cannot read at run time (an interpreter factory it could not check at
      install time) is logged once per RLM, and the run plans without REPL state (`stats.repl` says so).
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
        past_unknown_calls: bool = True,
        stream: bool = True,
        tracer_provider: Any = None,
        limits: Limits = LIMITS,
    ) -> None:
        if isinstance(pure, (str, bytes)) or callable(pure):
            raise TypeError(f"Speculate(pure=...) takes a collection of tools; use [{pure!r}]")
        self.pure: tuple[Any, ...] = tuple(pure)
        self.pure_names = frozenset(_tool_name(item) for item in self.pure)
        check_int("Speculate", "max_in_flight", max_in_flight, 1)
        check_int("Speculate", "max_per_iteration", max_per_iteration, 1)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"Speculate(timeout=...) must be a positive number of seconds, got {timeout!r}")
        flags = {"llm": llm, "repl_state": repl_state, "past_unknown_calls": past_unknown_calls, "stream": stream}
        for name, flag in flags.items():
            if not isinstance(flag, bool):
                raise TypeError(f"Speculate({name}=...) must be True or False, got {flag!r}")
        self.llm, self.repl_state, self.past_unknown_calls, self.stream = llm, repl_state, past_unknown_calls, stream
        self.max_in_flight, self.max_per_iteration, self.timeout = max_in_flight, max_per_iteration, float(timeout)
        self.limits = limits
        self.tracer = tracer_for(tracer_provider)
        self.speculable = (LLM_TOOLS if llm else frozenset()) | self.pure_names
        names = "|".join(re.escape(n) for n in sorted(self.speculable)) or r"(?!)"
        self._mentions = re.compile(rf"\b(?:{names})\b")
        self._warned: set[tuple[int, str]] = set()

    # -- install-time checks

    def check(self, events: Instrumentation) -> None:
        for module in events.modules:
            self._check_pure(module)
            if self.repl_state:
                cls = interpreter_class(module)
                reason = repl_io.unsupported_reason(cls) if cls is not None else None
                if reason is not None:
                    raise ValueError(_UNREADABLE.format(owner=type(module).__name__, reason=reason))

    def _check_pure(self, module: Any) -> None:
        tools = dict(getattr(module, "tools", None) or {})
        listing = ", ".join(sorted(tools)) or "none"
        for item in self.pure:
            name = _tool_name(item)
            if name in LLM_TOOLS:
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
                mismatch = f"{item!r} is not the function of this RLM's tool {name!r}"
                raise ValueError(f"Speculate(pure=...): {mismatch}. Tools of this RLM: {listing}")

    # -- the stages

    def __call__(self, ctx: Any, next: Any) -> Any:
        stages: dict[Stage, Callable[[Any, Any], Any]] = {
            Stage.TOOL_CALL: self._tool_call,
            Stage.PRE_EXECUTION: self._pre_execution,
            Stage.POST_EXECUTION: self._post_execution,
            Stage.RUN_START: self._run_start,
            Stage.RUN_END: self._run_end,
        }
        handler = stages.get(getattr(ctx, "stage", None))  # type: ignore[arg-type]
        if handler is None:
            raise self._wrong_stage(ctx)
        return handler(ctx, next)

    def _pre_execution(self, ctx: context.PreExecutionContext, next: Any) -> Any:
        ctx = next(ctx)  # plan on the code that will run: after every other middleware changed or refused it
        if not ctx.skipped:
            self._guarded(self._speculate, ctx)
        return ctx

    def _post_execution(self, ctx: context.PostExecutionContext, next: Any) -> Any:
        live = _live_of(ctx.run)
        if live is not None:
            self._guarded(live.expire)
        return next(ctx)

    def _run_start(self, ctx: context.RunStartContext, next: Any) -> Any:
        self._live(ctx.run)
        meter_run(ctx.run)  # so that calls made ahead are metered even without a Budget or trace
        if self.stream:
            run = ctx.run
            stream_actions(run, lambda iteration: self._open_stream(run, iteration))
        return next(ctx)

    def _run_end(self, ctx: context.RunEndContext, next: Any) -> Any:
        stream_actions(ctx.run, None)
        self._guarded(self._finish, ctx.run)
        return next(ctx)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # speculation must never break the run it speeds up
            logger.warning("rlm-events: Speculate failed; the run goes on without it", exc_info=True)

    def _live(self, run: context.Run) -> Live:
        live = _live_of(run)
        if live is None:
            stats = run.state.setdefault(_STATS_KEY, SpeculateStats())
            live = run.state[_LIVE_KEY] = Live(run, stats, self.max_in_flight)
        return live

    @staticmethod
    def stats(run: context.Run | context.StageContext) -> SpeculateStats | None:
        """The [`SpeculateStats`][rlm_events.speculate.stats.SpeculateStats] of a run (or of a context's run); `None` if
        no Speculate ran in it. Taps
        and other built-ins read Speculate's per-run state only through this."""
        stats = (run.run if isinstance(run, context.StageContext) else run).state.get(_STATS_KEY)
        return stats if isinstance(stats, SpeculateStats) else None

    # -- pre_execution: plan and dispatch

    def _speculate(self, ctx: context.PreExecutionContext) -> None:
        live = self._live(ctx.run)
        iteration = ctx.iteration or 0
        live.expire(iteration)
        planning = None
        opened = live.streams.pop(iteration, None)
        if opened is not None:
            stream, planning = opened
            live.stats.streamed_chunks += stream.chunks
            if stream.chunks and not stream.fell_back_because and not live.stats.stream:
                live.stats.stream = "streamed"
        if not self._mentions.search(ctx.code):
            return
        planning = planning or self._planning(live, ctx.run, iteration)
        if planning is not None:
            planning.dispatch(planning.plan(ctx.code))

    def _planning(self, live: Live, run: context.Run, iteration: int) -> Planning | None:
        """How to plan and dispatch the calls of iteration `iteration`'s code (`None`: nothing can be)."""
        found = repl_io.iteration_of(run)
        if found is None:
            self._warn_once(run, "iteration", "could not find this iteration's REPL; nothing is speculated")
            return None
        repl, variables = found
        tools = repl_io.raw_tools(repl, self.speculable)
        if not tools:
            return None
        return Planning(self, live, run, iteration, repl, variables, tools, self._reader(live, run, repl))

    def _open_stream(self, run: context.Run, iteration: int) -> ActionStream | None:
        """The sink of iteration `iteration`'s action while the LM writes it (see `rlm_events.speculate.streamed`)."""
        live = _live_of(run)
        if live is None:
            return None
        try:
            live.expire(iteration)
            planning = self._planning(live, run, iteration)
        except Exception:  # speculation must never break the run it speeds up
            logger.warning("rlm-events: Speculate failed; the run goes on without it", exc_info=True)
            return None
        if planning is None:
            return None
        stream = ActionStream(
            lambda code: planning.plan(code, streamed=True),
            lambda calls: planning.dispatch(calls, streamed=True),
            lambda why: self._fell_back(run, why),
        )
        live.streams[iteration] = (stream, planning)
        return stream

    def _fell_back(self, run: context.Run, reason: str) -> None:
        live = _live_of(run)
        if live is not None:
            live.stats.stream = f"fallback: {reason}"
        self._warn_once(run, "stream", f"planning when the code is complete: {reason}", level=logging.INFO)

    def _reader(self, live: Live, run: context.Run, repl: Any) -> Any:
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

    def _tool_call(self, ctx: context.ToolCallContext, next: Any) -> Any:
        live = _live_of(ctx.run)
        if live is None or ctx.name not in self.speculable:
            return next(ctx)
        return claim(live, ctx, next, self.timeout)

    # -- run_end

    def _finish(self, run: context.Run) -> None:
        live = _live_of(run)
        if live is None:
            return
        live.expire()
        running = [d.future for d in live.all if d.future is not None and not d.future.done()]
        if running:
            wait_futures(running, timeout=self.timeout)  # their tokens belong to this run: count them before it ends
        live.stats.running_at_end = sum(1 for d in live.all if d.future is not None and not d.future.done())
        if live.executor is not None:
            live.executor.shutdown(wait=False, cancel_futures=True)

    def _warn_once(self, run: context.Run, what: str, message: str, level: int = logging.WARNING) -> None:
        key = (id(run.module), what)
        if key not in self._warned:
            self._warned.add(key)
            logger.log(level, "rlm-events: Speculate on %s: %s", type(run.module).__qualname__, message)

    def __repr__(self) -> str:
        pure = [_tool_name(p) for p in self.pure]
        options = {
            "pure": pure or None,
            "llm": None if self.llm else False,
            "max_in_flight": self.max_in_flight,
            "max_per_iteration": self.max_per_iteration,
            "timeout": self.timeout,
            "repl_state": None if self.repl_state else False,
            "past_unknown_calls": None if self.past_unknown_calls else False,
            "stream": None if self.stream else False,
        }
        return "Speculate({})".format(", ".join(f"{k}={v!r}" for k, v in options.items() if v is not None))


# -- helpers --------------------------------------------------------------------------------------------------


def _live_of(run: context.Run) -> Live | None:
    live = run.state.get(_LIVE_KEY)
    return live if isinstance(live, Live) else None


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


__all__ = ["Speculate"]
