"""MLflow traces of instrumented `dspy.RLM` calls, as the loop they are (optional extra `mlflow`).

```pycon
>>> mlflow.dspy.autolog()  # optional: DSPy's own spans then nest in the loop  # doctest: +SKIP
>>> MlflowTap().install(events)  # doctest: +SKIP

```

The trace of one call:

```text
RLM.forward                     AGENT  rlm.stop_reason, rlm.iterations, mlflow.chat.tokenUsage, rlm.cost_usd
├── iteration 1                 CHAIN  rlm.iteration (0-based), mlflow.chat.tokenUsage, rlm.submitted, rlm.stop
│   ├── generate_action         LLM    the LM writes the code: outputs reasoning and code (as the LM wrote it)
│   │   └── Predict.forward …          autolog's predictor, adapter and LM spans
│   └── execute_code            TOOL   inputs the code that ran, outputs its output; guard refusals as events
│       └── llm_query           TOOL   one per tool call (llm_query, llm_query_batched, your tools)
│           └── LM.__call__ …          autolog's sub-LM spans
├── iteration 2 …
└── extract                     LLM    DSPy's extract fallback (max_iters reached, or a stop)
```

* **Root.** With `mlflow.dspy.autolog()` on, the root is autolog's own `RLM.forward` span (made an AGENT span);
  without it, the tap makes that span itself, a child of the span current where the RLM is called (if any), so the
  call nests in your traces either way. `rlm.stop_reason` says why the loop ended: `submit`, `max_iters`,
  `budget` (a [`Budget`][rlm_events.builtins.Budget] limit; `rlm.budget.stopped_by` and
  `rlm.budget.reason` say which), `middleware` (a middleware set `stop`; `rlm.stop.by` names it) or
  `error` (the span's status is ERROR and the exception is recorded).
* **Nesting.** The iteration, `generate_action` and `execute_code` spans are made *current* (MLflow's tracing
  context) from the stage that opens them to the stage that closes them, and each tool span while its tool runs,
  so every span DSPy, autolog or your code creates meanwhile nests in its place: the action's predictor under
  `generate_action`, a tool's sub-LM calls under the tool, the threads of `llm_query_batched` too (DSPy 3.3+
  runs them in copies of the caller's context; before 3.3 they start traces of their own). Per-call state is kept
  by run id: concurrent calls (threads or asyncio tasks) each get their own trace.
* **Usage.** `mlflow.chat.tokenUsage` (MLflow's token-usage attribute) on the root, every iteration, every
  `generate_action`, `execute_code` with sub-LM calls and `extract`, from the run's one meter
  ([`rlm_events.lm_usage`][rlm_events.lm_usage]): an iteration counts its action and its code's sub-LM calls. MLflow
  adds up a trace's
  usage from the outermost spans that have it, so the trace's total is the run's. Calls DSPy's cache answered are
  not in the token counts. On the root, `rlm.lm_calls`; `rlm.cost_usd` only while the cost is known (else
  `rlm.cost_known=false` and `rlm.unpriced_lm_calls` / `rlm.unmetered_lm_calls`, never `0`); with cached
  calls, `rlm.cached_lm_calls` and `rlm.saved_cost_usd`.
* **Events.** A [`CodeGuard`][rlm_events.builtins.CodeGuard] refusal is a `guard_refusal` event on `execute_code`;
  a budget stop a `budget_stop` event on the iteration it ended. A middleware that changed the code, the result
  or stopped the loop is named (`rlm.code.changed_by`, `rlm.result.changed_by`, `rlm.stop.by`; and a
  `middleware_changed` event): `install()` places observers between the middleware of those stages
  (`rlm_events.taps._changes`), so the names are exact for middleware registered before the tap and grouped
  for those registered after it.
* **Durable runs.** The root of a run a [`Durable`][rlm_events.durable.Durable] made durable has
  `rlm.durable.run_id` (its id in the store: a resumed run's is the original run's), and for a resumed or forked
  run `rlm.durable.relation` (`resume` or `fork`), `rlm.durable.parent` and `rlm.durable.replayed` (the iterations
  replayed from the record); other runs have none of them.
* **Content.** Inputs and outputs (code, outputs, tool arguments and results, the answer) are recorded, as
  autolog records them, each string cut to `max_chars`; `capture_content=False` keeps only their sizes.
* The tap never breaks the call: a failure inside it is logged and the call goes on.

Which MLflow: the tap needs MLflow's tracing SDK only, `mlflow-tracing` (the `mlflow` extra, about 40 MB), which
logs to any MLflow tracking server or Databricks; the full `mlflow` package (about 590 MB, it depends on the SDK)
adds local stores (`sqlite:///mlruns.db`) and `mlflow ui`. Both provide `import mlflow`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import context
from ..builtins.budget import Budget
from ..guard import CodeGuard
from ..lm_history import module_label
from ..lm_usage import Usage
from ..stages import Stage
from ._changes import ChangeWitnesses, StageChanges
from ._cost import cost_attributes
from ._mlflow_spans import MlflowSpans, recorded, sizes
from ._span_tap import SpanTap, code_attributes, durable_attributes, limit_attributes
from ._spans import SpanTree
from ._stop import STOP_REASONS, stop_reason
from ._text import is_error_result, preview, safe_repr

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

logger = logging.getLogger("rlm_events.taps.mlflow")


class _Notes:
    """What the tap remembers of one call besides its spans."""

    __slots__ = ("changed_by", "extracting", "guard_seen", "model", "stopped_by")

    def __init__(self, model: str | None) -> None:
        self.model = model
        self.guard_seen = 0  # the guard's refusals of the call already reported
        self.stopped_by: list[str] = []  # middleware that set stop
        self.extracting = False
        self.changed_by: dict[tuple[int, str], list[str]] = {}  # (id(span), field) -> middleware, per open span


class MlflowTap(SpanTap[_Notes]):
    """Records every call of the instrumented RLMs as an MLflow trace of its loop (see the module docstring).

    Args:
        capture_content: record inputs and outputs (code, outputs, tool arguments and results, the answer);
            `False` records their sizes only.
        max_chars: each recorded string is cut to this many characters.
        span_names: other names for the spans this tap names (`{"execute_code": "rlm/execute_code"}`: the names
            of `rlm_events.hooks`' compatibility mode); the rest keep theirs.

    Traces go where MLflow sends them (`mlflow.set_tracking_uri`, `mlflow.set_experiment`). Install with
    `tap.install(events)`: besides the tap on the loop stages it adds `tool_call` and `extract` middleware
    (outermost, so the tool and extract spans are current while they run) and the observers that name the
    middleware that changed code, results or stopped the loop.

    Raises `ImportError` naming the `mlflow` extra when MLflow is not installed.
    """

    def __init__(
        self, *, capture_content: bool = True, max_chars: int = 4000, span_names: dict[str, str] | None = None
    ) -> None:
        self._spans = MlflowSpans(span_names)
        from mlflow.entities import SpanEvent

        if max_chars < 1:
            raise ValueError(f"MlflowTap(max_chars=...) must be at least 1, got {max_chars!r}")
        super().__init__(self._spans, "MlflowTap", logger)
        self._SpanEvent: Any = SpanEvent
        self.capture_content = capture_content
        self.max_chars = max_chars
        self._witnesses = ChangeWitnesses("MlflowTap")

    # -- registration ---------------------------------------------------------------------------------------

    def install(self, events: Instrumentation) -> MlflowTap:
        """Register on `events`: the tool and extract middleware outermost, observers between the middleware of
        `pre_execution`, `post_execution` and `post_iteration` (every other registration kept, in order),
        then the tap. One plan change: a call starting meanwhile sees all of it or none."""
        self.check(events)
        old, new = self._witnesses.layout(
            events, first={Stage.TOOL_CALL: [self._tool_middleware], Stage.EXTRACT: [self._extract_middleware]}
        )
        events.replace(old, new)
        for stages, fn in self.registrations().taps:
            events.tap(stages, fn)
        return self

    def uninstall(self, events: Instrumentation) -> None:
        super().uninstall(events)
        for witness in self._witnesses.all():
            events.remove_all(witness)

    # -- what is recorded -----------------------------------------------------------------------------------

    def _io(self, value: dict[str, Any]) -> dict[str, Any]:
        return {k: recorded(v, self.max_chars) for k, v in value.items()} if self.capture_content else sizes(value)

    def _prediction_outputs(self, prediction: Any) -> Any:
        if prediction is None:
            return None
        try:
            fields = {k: v for k, v in prediction.items() if k != "trajectory"}
        except Exception:
            return recorded(prediction, self.max_chars)
        return self._io(fields)

    def _event(self, span: Any, name: str, attributes: dict[str, Any]) -> None:
        span.add_event(self._SpanEvent(name, attributes=attributes))

    # -- the tap --------------------------------------------------------------------------------------------

    def __call__(self, ctx: context.StageContext) -> None:
        """Open, annotate or close the spans `ctx` concerns (the tap entry point); never raises."""
        try:
            super().__call__(ctx)
        except Exception:
            logger.exception("MlflowTap failed at stage %s (run %s); the call goes on", ctx.stage.value, ctx.run.id)

    def _run_start(self, ctx: context.RunStartContext, usage: Usage, model: str | None) -> None:
        module = ctx.run.module
        attributes: dict[str, Any] = {
            "rlm.run.id": ctx.run.id,
            "rlm.agent": module_label(module),
            **limit_attributes(module),
            **durable_attributes(ctx.run),
        }
        if model:
            attributes["rlm.model"] = model
        root = self._spans.autolog_root(module)
        own = root is None
        if own:
            name, inputs = f"{type(module).__name__}.forward", self._io(dict(ctx.input_args))
            root = self._forest.start_root(ctx.run.started_at, name, attributes, inputs)
        else:
            root.set_span_type(self._spans.types["run"])
            root.set_attributes(attributes)
        self._forest.plant(ctx.run.id, root, usage, _Notes(model), own_root=own)

    def _pre_iteration(self, tree: SpanTree[_Notes], ctx: context.PreIterationContext) -> None:
        index = ctx.iteration or 0
        tree.notes.changed_by.clear()  # names of the spans closed so far
        self._forest.open_iteration(
            tree,
            f"iteration {index + 1}",
            {"rlm.run.id": ctx.run.id, "rlm.iteration": index},
            inputs={"iteration": index + 1, "history_entries": len(ctx.history.entries)},
        )
        inputs = {"variables": [v.name for v in ctx.variables]}
        if ctx.extra_vars:
            inputs["extra_vars"] = sorted(ctx.extra_vars)
        model = self._spans.model_attributes(tree.notes.model)
        self._forest.open_step(tree, "generate_action", "generate_action", model, inputs)

    def _changes(self, ctx: context.StageContext, stage: Stage) -> StageChanges | None:
        return self._witnesses.changes(ctx.run.state, stage)

    def _name_changes(
        self, tree: SpanTree[_Notes], span: Any, changes: StageChanges | None, fields: tuple[str, ...]
    ) -> None:
        """Add to `rlm.<field>.changed_by` on `span` and one `middleware_changed` event per middleware."""
        if changes is None or not changes.by:
            return
        for field in fields:
            names = changes.changed_by(field)
            if names:
                known = tree.notes.changed_by.setdefault((id(span), field), [])
                known += names
                span.set_attribute(f"rlm.{field}.changed_by", list(known))
        for name, changed in changes.by:
            self._event(span, "middleware_changed", {"middleware": name, "fields": list(changed)})

    def _pre_execution(self, tree: SpanTree[_Notes], ctx: context.PreExecutionContext) -> None:
        changes = self._changes(ctx, Stage.PRE_EXECUTION)
        written = changes.original.get("code") if changes is not None else None
        written = written if isinstance(written, str) else ctx.code
        if tree.step_kind == "generate_action":
            self._forest.close_step(tree, outputs=self._io({"reasoning": ctx.reasoning, "code": written}))
        tree.notes.changed_by.clear()  # names of the spans closed so far
        inputs = self._io({"code": ctx.code})
        span = self._forest.open_step(tree, "execute_code", "execute_code", code_attributes(ctx), inputs)
        self._name_changes(tree, span, changes, ("code", "result"))
        self._guard_events(tree, ctx, span)

    def _guard_events(self, tree: SpanTree[_Notes], ctx: context.StageContext, span: Any) -> None:
        refusals = CodeGuard.refusals(ctx.run)
        for refusal in refusals[tree.notes.guard_seen :]:
            attributes = {
                "rlm.iteration": refusal.get("iteration"),
                "violations": [str(v) for v in refusal.get("violations", [])],
                "code": preview(refusal.get("code", ""), self.max_chars),
            }
            self._event(span, "guard_refusal", attributes)
        tree.notes.guard_seen = len(refusals)

    def _code_ran(self, tree: SpanTree[_Notes], ctx: context.PostExecutionContext, span: Any) -> Any:
        output = "" if ctx.result is None else ctx.result if isinstance(ctx.result, str) else safe_repr(ctx.result)
        error = is_error_result(ctx.result)
        span.set_attributes({"rlm.error": error, "rlm.output.length": len(output), "rlm.code.length": len(ctx.code)})
        self._name_changes(tree, span, self._changes(ctx, Stage.POST_EXECUTION), ("code", "result"))
        if error:
            self._spans.fail(span)  # the code's result is an error: the step failed, the call goes on
        return self._io({"output": output})

    def _iteration_ended(self, tree: SpanTree[_Notes], ctx: context.PostIterationContext, span: Any) -> None:
        changes = self._changes(ctx, Stage.POST_ITERATION)
        self._name_changes(tree, span, changes, ("prediction",))
        spend = Budget.spent(ctx.run)
        budget_stop = spend.stopped_by if spend is not None and ctx.stop else None
        if budget_stop:
            attributes = {"stopped_by": str(budget_stop), "reason": str(spend.reason or "") if spend else ""}
            self._event(span, "budget_stop", attributes)
        if ctx.stop and changes is not None:
            stoppers = changes.changed_by("stop")
            if stoppers:
                span.set_attribute("rlm.stop.by", stoppers)
                tree.notes.stopped_by = stoppers
        elif ctx.stop and not budget_stop:
            tree.notes.stopped_by = ["(a middleware)"]

    def _extract(self, tree: SpanTree[_Notes], ctx: context.ExtractContext) -> None:
        """Without its extract middleware (the tap registered by `events.tap(tap)`): a span after the fact."""
        if tree.notes.extracting:
            return
        self._forest.close_iteration(tree)
        span = self._spans.start("extract", "extract", tree.root, self._spans.model_attributes(tree.notes.model))
        self._forest.measured(tree, span, tree.iteration_mark)
        self._spans.end(span, self._prediction_outputs(ctx.prediction))

    def _run_end(self, tree: SpanTree[_Notes], ctx: context.RunEndContext) -> None:
        def annotate() -> None:
            reason = stop_reason(ctx, bool(tree.notes.stopped_by))
            usage = tree.usage
            attributes: dict[str, Any] = {
                "rlm.stop_reason": reason,
                "rlm.iterations": ctx.iterations,
                "rlm.forced_extract": ctx.forced_extract,
                "rlm.lm_calls": usage.lm_calls,
                **cost_attributes(usage),  # no rlm.cost_usd while unknown (see taps._cost)
            }
            spend = Budget.spent(ctx.run)
            if spend is not None and spend.stopped_by:
                attributes["rlm.budget.stopped_by"] = str(spend.stopped_by)
                attributes["rlm.budget.reason"] = str(spend.reason or "")
            if reason == "middleware" and tree.notes.stopped_by:
                attributes["rlm.stop.by"] = tree.notes.stopped_by
            refusals = CodeGuard.refusals(ctx.run)
            if refusals:
                attributes["rlm.guard.refusals"] = len(refusals)
            tree.root.set_attributes(attributes)
            self._spans.set_usage(tree.root, (0, 0, 0), tree.tokens())

        self._forest.finish(tree, ctx.error, annotate, lambda: self._prediction_outputs(ctx.prediction))

    # -- middleware: spans current while the tool or the extractor runs -------------------------------------

    def _trace_tool(self, ctx: context.ToolCallContext, next: Any) -> context.ToolCallContext:
        tree = self._forest.get(ctx.run.id)
        if tree is None:
            return next(ctx)  # type: ignore[no-any-return]

        def start() -> Any:
            inputs: dict[str, Any] = {"args": list(ctx.args)} if ctx.args else {}
            inputs.update(ctx.kwargs)
            iteration = ctx.iteration if ctx.iteration is not None else -1
            attributes = {"rlm.tool.name": ctx.name, "rlm.iteration": iteration}
            return self._spans.start("tool", ctx.name, tree.tool_parent(), attributes, inputs=self._io(inputs))

        def settle(span: Any, done: context.ToolCallContext | None, error: BaseException | None) -> Any:
            return None if done is None else self._io({"result": done.result})["result"]

        return self._forest.around(f"tool {ctx.name}", start, lambda: next(ctx), settle)

    def _start_extract(self, tree: SpanTree[_Notes], ctx: context.ExtractContext) -> Any:
        tree.notes.extracting = True  # post_iteration closed the last iteration: the extract span is the root's
        inputs = self._io({"history_entries": len(ctx.history.entries)})
        return self._spans.start(
            "extract", "extract", tree.root, self._spans.model_attributes(tree.notes.model), inputs
        )

    def _extract_outputs(self, span: Any, done: context.ExtractContext | None) -> Any:
        return None if done is None else self._prediction_outputs(done.prediction)

    def __repr__(self) -> str:
        return f"MlflowTap(capture_content={self.capture_content!r}, max_chars={self.max_chars!r})"


__all__ = ["STOP_REASONS", "MlflowTap"]
