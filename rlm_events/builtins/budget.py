"""`Budget`: stop a run that has spent enough iterations, time, tokens or money; cap tool calls by name."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .. import context
from ..builtin import RLM_BUILTIN_TOOLS, Builtin, check_tool_names, denial_for
from ..errors import UnknownCostError
from ..lm_usage import meter_run
from ..pricing import register_prices
from ..runtime import lms_of
from ..stages import Stage
from .usage import Spend

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

logger = logging.getLogger("rlm_events")

_STATE_KEY = "budget"  # where a run's Spend lives in run.state; read it only through Budget.spent()


def _limit(name: str, value: Any, *, integer: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        kind = "an int" if integer else "a number"
        raise TypeError(f"Budget({name}=...) must be {kind} or None, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"Budget({name}=...) must be positive, got {value!r}")
    return value


class Budget(Builtin):
    """Stops a run when it reaches any limit, and caps how often its code may call each tool.

    `Budget(max_iterations=None, max_seconds=None, max_tokens=None, max_cost_usd=None, max_tool_calls=None, hard=False,
    prices=None)`; `max_tool_calls` maps tool names to a per-run cap, e.g. `{"llm_query": 5}`;
    `prices` gives models no price map prices their price, `{"openai/my-model": (input, output)}` in USD per
    million tokens, through [`rlm_events.register_prices()`][rlm_events.register_prices] (process-wide, at
    construction). Install it with
    `Budget(...).install(events)` (stages `run_start`, `tool_call`, `post_iteration`, `run_end`).

    Guarantees:

    * At the end of the first iteration after which a limit is *reached* (spent ≥ limit), the loop stops through
      DSPy's extract fallback (`ctx.stop = True`) and the answer is extracted from the history so far. An
      iteration that `SUBMIT`-ted successfully is never stopped. The extract call itself is metered too.
    * Once a token, cost or time limit is reached, further tool calls of that run are denied; beyond a per-name
      cap, calls of that tool are denied. A denied call is not made: the code gets a `[Budget] …` text (one per
      prompt for `llm_query_batched`) and the run goes on.
    * Tokens and cost are the `usage` and `cost` DSPy recorded for each LM call of *this* call (main LM,
      extract, `sub_lm`), attributed by context, so one Budget instance is safe across concurrent calls sharing
      one LM (see `rlm_events.builtins.usage`). To meter them it adds a shared callback to the LMs the call
      uses (`lm.callbacks`); calls outside a metered run are ignored by it.
    * What was spent, and why the run stopped, is the [`Spend`][rlm_events.builtins.usage.Spend] at
      `ctx.run.state["budget"]`
      ([`Budget.spent()`][rlm_events.builtins.budget.Budget.spent]), updated as the run goes and final at `run_end`.
    * Calls DSPy answered from its cache (`Spend.cached_lm_calls`) cost nothing and count against no limit.
    * A dollar cap is never a silent no-op. Once an LM call of the run came back with an unknown cost (a model no
      price map prices, or usage the meter could not see), further tool calls are denied, and at the end of that
      iteration the run is stopped by raising [`UnknownCostError`][rlm_events.UnknownCostError], naming the models and
      how to
      price them (`Spend.stopped_by == "cost_usd"`; `run_end` still fires, with the error). An iteration that
      `SUBMIT`-ted, or the extract call, ends the run anyway: it returns, and one WARNING says its cost is unknown.

    Place a [`ToolCallCache`][rlm_events.builtins.cache.ToolCallCache] before the Budget so that cache hits are not
    counted against the caps.

    `hard=True` makes `max_tokens` and `max_cost_usd` caps rather than stopping points:

    * a sub-LLM call (`llm_query`; `llm_query_batched` counts each prompt) starts only if what is left, less
      what calls in flight set aside, covers it, each LM call estimated at the largest LM call of the run so far;
      otherwise the code gets a `[Budget]` denial it can read;
    * after each iteration the loop stops (extract fallback) unless what is left covers another iteration as
      large as the largest so far (its action call and its code's sub-LLM calls).

    Overshoot bound: the run exceeds the cap by at most the extract call's usage plus what its last iteration used
    beyond the largest iteration before it — one LM call's usage when iterations do not grow by more than a call.
    Without `hard` the overshoot is up to one whole iteration plus the extract call.
    """

    STAGES: ClassVar[tuple[Stage, ...]] = (Stage.RUN_START, Stage.TOOL_CALL, Stage.POST_ITERATION, Stage.RUN_END)

    def __init__(
        self,
        *,
        max_iterations: int | None = None,
        max_seconds: float | None = None,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        max_tool_calls: Mapping[str, int] | None = None,
        hard: bool = False,
        prices: Mapping[str, Sequence[float]] | None = None,
    ) -> None:
        self.max_iterations: int | None = _limit("max_iterations", max_iterations, integer=True)
        self.max_seconds: float | None = _limit("max_seconds", max_seconds, integer=False)
        self.max_tokens: int | None = _limit("max_tokens", max_tokens, integer=True)
        self.max_cost_usd: float | None = _limit("max_cost_usd", max_cost_usd, integer=False)
        if max_tool_calls is not None and not isinstance(max_tool_calls, Mapping):
            raise TypeError(f"Budget(max_tool_calls=...) must map tool names to ints, got {max_tool_calls!r}")
        caps = dict(max_tool_calls or {})
        for name, cap in caps.items():
            if not isinstance(name, str) or isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
                raise ValueError(f"Budget(max_tool_calls=...): {name!r}: {cap!r} must be a tool name and an int >= 0")
        self.max_tool_calls: dict[str, int] = caps
        if not isinstance(hard, bool):
            raise TypeError(f"Budget(hard=...) must be True or False, got {hard!r}")
        self.hard = hard
        if prices is not None:
            register_prices(prices)
        self.prices: dict[str, tuple[float, float]] = {m: (float(p[0]), float(p[1])) for m, p in (prices or {}).items()}

    @staticmethod
    def spent(run: context.Run | context.StageContext) -> Spend | None:
        """The [`Spend`][rlm_events.builtins.usage.Spend] of a run (or of a context's run); `None` if no Budget metered
        it. Taps and other
        built-ins read a Budget's per-run state only through this."""
        spend = (run.run if isinstance(run, context.StageContext) else run).state.get(_STATE_KEY)
        return spend if isinstance(spend, Spend) else None

    @staticmethod
    def installed(run: context.Run) -> list[Budget]:
        """The Budgets in the `tool_call` chain of the instrumentation `run` belongs to, in chain order."""
        from ..instrumentation import instrumentation_of

        events = instrumentation_of(run.module)
        if events is None:
            return []
        return [mw for mw in events.plan.chains[Stage.TOOL_CALL] if isinstance(mw, Budget)]

    def admits(self, spend: Spend, name: str, *, pending: int = 0) -> str | None:
        """Whether this Budget would let one more call of tool `name` start now, with `pending` calls of it
        already promised elsewhere: `None` if so, else why not (`"budget"`: a token, time or cost limit is
        reached; `"tool_cap"`: the tool's `max_tool_calls` cap). Reserves nothing."""
        if self._exceeded(spend, include_iterations=False) is not None:
            return "budget"
        cap = self.max_tool_calls.get(name)
        if cap is not None and spend.tool_calls.get(name, 0) + pending >= cap:
            return "tool_cap"
        return None

    def check(self, events: Instrumentation) -> None:
        check_tool_names("Budget(max_tool_calls=...)", self.max_tool_calls, events)

    def __call__(self, ctx: Any, next: Any) -> Any:
        if isinstance(ctx, context.ToolCallContext):
            return self._tool_call(ctx, next)
        if isinstance(ctx, context.PostIterationContext):
            ctx = next(ctx)
            self._after_iteration(ctx)
            return ctx
        if isinstance(ctx, context.RunStartContext):
            self._ledger(ctx.run)
            return next(ctx)
        if isinstance(ctx, context.RunEndContext):
            spend = self._ledger(ctx.run)
            spend.seconds = spend.elapsed()
            if self.max_cost_usd is not None and not spend.cost_known and spend.stopped_by is None:
                logger.warning("rlm-events Budget: run %s finished; %s", ctx.run.id, self._unknown_cost(ctx.run, spend))
            return next(ctx)
        raise self._wrong_stage(ctx)

    def _ledger(self, run: context.Run) -> Spend:
        """This run's Spend; created (and its LMs metered) at run_start, or lazily if run_start was skipped."""
        spend = Budget.spent(run)
        if spend is None:
            spend = run.state.setdefault(_STATE_KEY, Spend())
            meter_run(run, spend)  # the run's one Usage: traces and spans report the same counts
        return spend

    def _tool_call(self, ctx: context.ToolCallContext, next: Any) -> Any:
        spend = self._ledger(ctx.run)
        name = ctx.name
        cap = self.max_tool_calls.get(name)
        exhausted = self._exceeded(spend, include_iterations=False)
        if exhausted is not None:
            message = f"[Budget] {name} was not called: this run's budget is spent ({exhausted[1]})."
        elif self.max_cost_usd is not None and not spend.cost_known:
            message = f"[Budget] {name} was not called: this run's cost is unknown, so its dollar cap cannot hold."
        elif not spend.reserve_tool(name, cap):
            message = (
                f"[Budget] {name} was not called: this run may call it at most {cap} time(s). "
                "Continue with the results you already have."
            )
        elif self.hard and name in RLM_BUILTIN_TOOLS:
            return self._hard_sub_call(ctx, next, spend)
        else:
            return next(ctx)
        spend.count_denied(name)
        ctx.result = denial_for(name, ctx.args, ctx.kwargs, message)
        return ctx

    def _hard_sub_call(self, ctx: context.ToolCallContext, next: Any, spend: Spend) -> Any:
        """A sub-LLM call starts only when what is left covers it (each prompt estimated at the run's largest LM
        call so far), counting what calls in flight set aside; else the code gets a `[Budget]` denial."""
        calls = len(prompts) if ctx.name == "llm_query_batched" and isinstance(prompts := _prompts(ctx), list) else 1
        tokens, cost = calls * spend.largest_call_tokens, calls * spend.largest_call_cost_usd
        if not spend.reserve(tokens, cost, self.max_tokens, self.max_cost_usd):
            spend.count_denied(ctx.name)
            left = self._left(spend)
            message = (
                f"[Budget] {ctx.name} was not called: this run's hard budget cannot cover {calls} more LM call(s) "
                f"(about {tokens:,} tokens each time at most{left}). Finish with what you have, or SUBMIT."
            )
            ctx.result = denial_for(ctx.name, ctx.args, ctx.kwargs, message)
            return ctx
        try:
            return next(ctx)
        finally:
            spend.release(tokens, cost)

    def _left(self, spend: Spend) -> str:
        """What is left under the token and cost caps (`; left: 1,200 tokens, $0.05`; empty without them)."""
        caps = ((self.max_tokens, spend.tokens, "{:,} tokens"), (self.max_cost_usd, spend.cost_usd, "${:.4g}"))
        parts = [fmt.format(max(limit - used, 0)) for limit, used, fmt in caps if limit is not None]
        return "; left: " + ", ".join(parts) if parts else ""

    def _after_iteration(self, ctx: context.PostIterationContext) -> None:
        spend = self._ledger(ctx.run)
        spend.iterations = (ctx.iteration or 0) + 1
        spend.seconds = spend.elapsed()
        spend.end_iteration()
        if ctx.prediction is not None or ctx.stop:
            return  # finishing anyway
        if self.max_cost_usd is not None and not spend.cost_known:
            message = self._unknown_cost(ctx.run, spend)
            spend.stopped_by, spend.reason = "cost_usd", "cost_usd: unknown; " + message
            raise UnknownCostError(message, _unpriced_models(ctx.run))
        exceeded = self._exceeded(spend, include_iterations=True) or (self._no_room(spend) if self.hard else None)
        if exceeded is not None:
            spend.stopped_by, spend.reason = exceeded
            ctx.stop, ctx.stop_reason = True, "budget"

    def _exceeded(self, spend: Spend, *, include_iterations: bool) -> tuple[str, str] | None:
        checks = (
            ("iterations", spend.iterations if include_iterations else 0, self.max_iterations, "{:,}"),
            ("seconds", spend.elapsed(), self.max_seconds, "{:.3g}"),
            ("tokens", spend.tokens, self.max_tokens, "{:,}"),
            ("cost_usd", spend.cost_usd, self.max_cost_usd, "${:.4g}"),
        )
        for kind, value, limit, fmt in checks:
            if limit is not None and value >= limit:
                return kind, f"{kind}: {fmt.format(value)} spent, limit {fmt.format(limit)}"
        return None

    def _no_room(self, spend: Spend) -> tuple[str, str] | None:
        """Hard mode: what is left cannot cover another iteration as large as the largest so far."""
        checks = (
            ("tokens", spend.tokens, spend.largest_iteration_tokens, self.max_tokens, "{:,}", "used"),
            ("cost_usd", spend.cost_usd, spend.largest_iteration_cost_usd, self.max_cost_usd, "${:.4g}", "cost"),
        )
        for kind, value, largest, limit, fmt, verb in checks:
            if limit is not None and value + largest > limit:
                return kind, (
                    f"{kind}: {fmt.format(value)} spent, limit {fmt.format(limit)}; the largest iteration {verb} "
                    f"{fmt.format(largest)} (hard)"
                )
        return None

    def _unknown_cost(self, run: context.Run, spend: Spend) -> str:
        """Why the run's cost is unknown, and what to do about it."""
        cap = f"Budget(max_cost_usd={self.max_cost_usd!r})"
        models = _unpriced_models(run) if spend.unpriced_lm_calls else ()
        if models:
            named = ", ".join(repr(m) for m in models)
            table = ", ".join(f"{m!r}: (input_usd, output_usd)" for m in models)
            return (
                f"{cap} cannot cap this run: no price is known for {named} ({spend.unpriced_lm_calls} unpriced LM "
                f"call(s)). Give its price in USD per million input and output tokens: "
                f"Budget(max_cost_usd=..., prices={{{table}}}) or rlm_events.register_prices({{{table}}})."
            )
        parts = []
        if spend.unpriced_lm_calls:
            parts.append(f"{spend.unpriced_lm_calls} LM call(s) came back without a price")
        if spend.unmetered_lm_calls:
            parts.append(
                f"{spend.unmetered_lm_calls} LM call(s) came back without usage the meter could see (an answer "
                "without `usage`, or DSPy's history disabled)"
            )
        return f"{cap} cannot cap this run: its cost is unknown: {'; '.join(parts)}."

    def __repr__(self) -> str:
        limits = {
            "max_iterations": self.max_iterations,
            "max_seconds": self.max_seconds,
            "max_tokens": self.max_tokens,
            "max_cost_usd": self.max_cost_usd,
            "max_tool_calls": self.max_tool_calls or None,
            "hard": self.hard or None,
            "prices": self.prices or None,
        }
        return "Budget({})".format(", ".join(f"{k}={v!r}" for k, v in limits.items() if v is not None))


def _unpriced_models(run: context.Run) -> tuple[str, ...]:
    """The models of `run`'s LMs whose recent calls DSPy recorded with a usage but no cost (DSPy keeps no record
    of which call of a run was unpriced: the LMs the run can use are searched, newest entries first)."""
    found: dict[str, None] = {}
    for lm in lms_of(run.module):
        for entry in lm.history[-64:]:
            if (
                isinstance(entry, dict)
                and entry.get("usage")
                and entry.get("cost") is None
                and not getattr(entry.get("response"), "cache_hit", False)
            ):
                found[str(entry.get("model") or getattr(lm, "model", "?"))] = None
    return tuple(found)


def _prompts(ctx: context.ToolCallContext) -> Any:
    return ctx.args[0] if ctx.args else ctx.kwargs.get("prompts")


__all__ = ["Budget", "Spend"]
