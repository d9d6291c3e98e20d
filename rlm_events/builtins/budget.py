"""``Budget``: stop a run that has spent enough iterations, time, tokens or money; cap tool calls by name."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..context import (
    PostIterationContext,
    Run,
    RunEndContext,
    RunStartContext,
    StageContext,
    ToolCallContext,
)
from ..lm_usage import meter_run
from ..stages import Stage
from ._base import Builtin, check_tool_names, denial_for
from .usage import STATE_KEY, Spend, spend_of

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation


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

    ``Budget(max_iterations=None, max_seconds=None, max_tokens=None, max_cost_usd=None, max_tool_calls=None)``;
    ``max_tool_calls`` maps tool names to a per-run cap, e.g. ``{"llm_query": 5}``. Install it with
    ``Budget(...).install(events)`` (stages ``run_start``, ``tool_call``, ``post_iteration``, ``run_end``).

    Guarantees:

    * At the end of the first iteration after which a limit is *reached* (spent ≥ limit), the loop stops through
      DSPy's extract fallback (``ctx.stop = True``) and the answer is extracted from the history so far. An
      iteration that ``SUBMIT``-ted successfully is never stopped. The extract call itself is metered too.
    * Once a token, cost or time limit is reached, further tool calls of that run are denied; beyond a per-name
      cap, calls of that tool are denied. A denied call is not made: the code gets a ``[Budget] …`` text (one per
      prompt for ``llm_query_batched``) and the run goes on.
    * Tokens and cost are the ``usage`` and ``cost`` DSPy recorded for each LM call of *this* call (main LM,
      extract, ``sub_lm``), attributed by context, so one Budget instance is safe across concurrent calls sharing
      one LM (see :mod:`rlm_events.builtins.usage`). To meter them it adds a shared callback to the LMs the call
      uses (``lm.callbacks``); calls outside a metered run are ignored by it.
    * What was spent, and why the run stopped, is the :class:`Spend` at ``ctx.run.state["budget"]``
      (:meth:`Budget.spent`), updated as the run goes and final at ``run_end``.

    Place a :class:`ToolCallCache` before the Budget so that cache hits are not counted against the caps.
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

    @staticmethod
    def spent(run: Run | StageContext) -> Spend | None:
        """The :class:`Spend` of a run (or of a context's run); ``None`` if no Budget metered it."""
        return spend_of(run.run if isinstance(run, StageContext) else run)

    def check(self, events: Instrumentation) -> None:
        check_tool_names("Budget(max_tool_calls=...)", self.max_tool_calls, events)

    def __call__(self, ctx: Any, next: Any) -> Any:
        if isinstance(ctx, ToolCallContext):
            return self._tool_call(ctx, next)
        if isinstance(ctx, PostIterationContext):
            ctx = next(ctx)
            self._after_iteration(ctx)
            return ctx
        if isinstance(ctx, RunStartContext):
            self._ledger(ctx.run)
            return next(ctx)
        if isinstance(ctx, RunEndContext):
            spend = self._ledger(ctx.run)
            spend.seconds = spend.elapsed()
            return next(ctx)
        raise self._wrong_stage(ctx)

    def _ledger(self, run: Run) -> Spend:
        """This run's Spend; created (and its LMs metered) at run_start, or lazily if run_start was skipped."""
        spend = spend_of(run)
        if spend is None:
            spend = run.state.setdefault(STATE_KEY, Spend())
            meter_run(run, spend)  # the run's one Usage: traces and spans report the same counts
        return spend

    def _tool_call(self, ctx: ToolCallContext, next: Any) -> Any:
        spend = self._ledger(ctx.run)
        name = ctx.name
        cap = self.max_tool_calls.get(name)
        exhausted = self._exceeded(spend, include_iterations=False)
        if exhausted is not None:
            message = f"[Budget] {name} was not called: this run's budget is spent ({exhausted[1]})."
        elif not spend.reserve_tool(name, cap):
            message = (
                f"[Budget] {name} was not called: this run may call it at most {cap} time(s). "
                "Continue with the results you already have."
            )
        else:
            return next(ctx)
        spend.count_denied(name)
        ctx.result = denial_for(name, ctx.args, ctx.kwargs, message)
        return ctx

    def _after_iteration(self, ctx: PostIterationContext) -> None:
        spend = self._ledger(ctx.run)
        spend.iterations = (ctx.iteration or 0) + 1
        spend.seconds = spend.elapsed()
        if ctx.prediction is not None or ctx.stop:
            return  # finishing anyway
        exceeded = self._exceeded(spend, include_iterations=True)
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

    def __repr__(self) -> str:
        limits = {
            "max_iterations": self.max_iterations,
            "max_seconds": self.max_seconds,
            "max_tokens": self.max_tokens,
            "max_cost_usd": self.max_cost_usd,
            "max_tool_calls": self.max_tool_calls or None,
        }
        return "Budget({})".format(", ".join(f"{k}={v!r}" for k, v in limits.items() if v is not None))


__all__ = ["Budget", "Spend"]
