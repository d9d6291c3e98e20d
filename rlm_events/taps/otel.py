"""OpenTelemetry spans for instrumented `dspy.RLM` calls (optional extra `otel`).

```pycon
>>> OpenTelemetryTap(tracer_provider).install(events)  # doctest: +SKIP

```

Span tree of one call: the tree [`MlflowTap`][rlm_events.taps.MlflowTap] records, with names and attributes after the
OpenTelemetry GenAI semantic conventions where they apply (`rlm.*` attributes are ours):

```text
invoke_agent RLM(text -> answer)     gen_ai.operation.name=invoke_agent, gen_ai.agent.name, gen_ai.request.model,
│                                    gen_ai.provider.name (+ deprecated gen_ai.system), gen_ai.usage.input_tokens,
│                                    gen_ai.usage.output_tokens, rlm.run.id, rlm.max_iters, rlm.iterations,
│                                    rlm.forced_extract, rlm.stop_reason, rlm.lm_calls, rlm.cost_usd (or
│                                    rlm.cost_known=false), rlm.cached_lm_calls, rlm.saved_cost_usd, error.type
├── iteration 1                      rlm.iteration (0-based), rlm.submitted, rlm.stop, gen_ai.usage.*
│   ├── generate_action              the LM writes the code: gen_ai.request.model, gen_ai.usage.*
│   └── execute_code                 rlm.code.length, rlm.code.lines, rlm.skipped, rlm.error (the code's result
│       │                            is an error), rlm.output.length, gen_ai.usage.* (its sub-LM calls)
│       └── execute_tool llm_query   gen_ai.operation.name=execute_tool, gen_ai.tool.name, gen_ai.tool.type,
│                                    rlm.iteration, error.type
└── extract                          the extract fallback, gen_ai.usage.*
```

`rlm.stop_reason` is `submit`, `max_iters`, `budget`, `middleware` or `error` (as on the MLflow root).
A durable run's call span also has `rlm.durable.run_id`, and a resumed or forked run's `rlm.durable.relation`,
`rlm.durable.parent` and `rlm.durable.replayed` (as on the MLflow root: a resumed run's spans carry the original
run id).

Guarantees:

* The call span's parent is the span current where the RLM was called, so it nests in your traces. Per-call
  state is kept by run id, never in shared globals: concurrent calls (threads or asyncio tasks) get separate,
  correctly parented trees, and tool calls arriving on interpreter threads find their `execute_code` span.
* Spans are current (OpenTelemetry's context) while what they stand for runs: the call span for the whole call,
  an iteration from `pre_iteration` to `post_iteration`, `generate_action` while the LM writes the code,
  `execute_code` while it runs, a tool span while its tool runs, `extract` while the extractor runs. So spans
  other instrumentation creates meanwhile (an instrumented LM client) nest where they happened.
* Every span ends, failed calls included: on `run_end` a failed call's span gets status ERROR, `error.type`
  and the recorded exception; spans left open by the failure end with status ERROR too. A tool call that raises
  gets the same on its span.
* LM usage comes from the run's one meter ([`rlm_events.lm_usage`][rlm_events.lm_usage]), which attributes each LM call
  to the run
  that made it, concurrent runs on one LM instance included: an iteration span counts the LM calls made during it
  (its action call and its code's sub-LLM calls), the call's span all of them. Calls DSPy's cache answered are
  not in the token counts. `rlm.cost_usd` is set only while the cost is known; an unknown cost (a call no price
  map prices, or whose usage could not be seen) sets `rlm.cost_known=false` and `rlm.unpriced_lm_calls` /
  `rlm.unmetered_lm_calls` instead, never `0`; cached calls add `rlm.cached_lm_calls` and
  `rlm.saved_cost_usd`.
* Code and outputs are content: set `capture_content=True` to add `rlm.code`, `rlm.output` and the tool
  arguments and results (`gen_ai.tool.call.arguments` / `gen_ai.tool.call.result`), cut to `max_chars`.
* A failure inside the tap is logged and never reaches the call.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import context
from ..lm_history import module_label
from ..lm_usage import Usage
from ._cost import cost_attributes
from ._otel_spans import OtelSpans
from ._span_tap import SpanTap, code_attributes, durable_attributes, limit_attributes
from ._spans import SpanTree, provider_of
from ._stop import stop_reason
from ._text import is_error_result, preview

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

logger = logging.getLogger("rlm_events.taps.otel")

INSTRUMENTATION_NAME = "rlm_events"


class _Notes:
    """What the tap remembers of one call besides its spans."""

    __slots__ = ("model", "stopped")

    def __init__(self, model: str | None) -> None:
        self.model = model
        self.stopped = False  # a post_iteration had stop set


class OpenTelemetryTap(SpanTap[_Notes]):
    """Emits OpenTelemetry spans for every call of the instrumented RLMs (see the module docstring).

    Args:
        tracer_provider: where spans go; the global provider (`opentelemetry.trace.get_tracer_provider()`) if
            `None`.
        capture_content: also record code, outputs and tool arguments/results (opt-in: they may hold user data).
        max_chars: content attributes are cut to this many characters.

    Raises `ImportError` naming the `otel` extra when OpenTelemetry is not installed.
    """

    def __init__(
        self, tracer_provider: TracerProvider | None = None, *, capture_content: bool = False, max_chars: int = 4000
    ) -> None:
        from .. import __version__

        self._spans = OtelSpans(tracer_provider, INSTRUMENTATION_NAME, __version__, owner="OpenTelemetryTap")
        super().__init__(self._spans, "OpenTelemetryTap", logger)
        self.tracer = self._spans.tracer
        self.capture_content = capture_content
        self.max_chars = max_chars

    # -- the loop stages --------------------------------------------------------------------------------------

    def _run_start(self, ctx: context.RunStartContext, usage: Usage, model: str | None) -> None:
        agent = module_label(ctx.run.module)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "rlm.run.id": ctx.run.id,
            **limit_attributes(ctx.run.module),
            **durable_attributes(ctx.run),
        }
        if model:
            attributes["gen_ai.request.model"] = model
            provider = provider_of(model)
            if provider:
                attributes["gen_ai.provider.name"] = provider
                attributes["gen_ai.system"] = provider  # the attribute's name before semconv 1.37
        span = self._forest.start_root(ctx.run.started_at, f"invoke_agent {agent}", attributes)
        self._forest.plant(ctx.run.id, span, usage, _Notes(model))

    def _pre_iteration(self, tree: SpanTree[_Notes], ctx: context.PreIterationContext) -> None:
        index = ctx.iteration or 0
        attributes: dict[str, Any] = {"rlm.run.id": ctx.run.id, "rlm.iteration": index}
        self._forest.open_iteration(tree, f"iteration {index + 1}", attributes)
        if tree.notes.model:
            attributes = {**attributes, "gen_ai.request.model": tree.notes.model}
        self._forest.open_step(tree, "generate_action", "generate_action", attributes)

    def _pre_execution(self, tree: SpanTree[_Notes], ctx: context.PreExecutionContext) -> None:
        if tree.step_kind == "generate_action":
            self._forest.close_step(tree)
        attributes = {"rlm.run.id": ctx.run.id, **code_attributes(ctx)}
        if self.capture_content:
            attributes["rlm.code"] = preview(ctx.code, self.max_chars)
        self._forest.open_step(tree, "execute_code", "execute_code", attributes)

    def _code_ran(self, tree: SpanTree[_Notes], ctx: context.PostExecutionContext, span: Any) -> None:
        output = "" if ctx.result is None else str(ctx.result)
        attributes: dict[str, Any] = {
            "rlm.error": is_error_result(ctx.result),
            "rlm.output.length": len(output),
            "rlm.code.length": len(ctx.code),  # as recorded: middleware may have changed it
        }
        if self.capture_content:
            attributes["rlm.output"] = preview(output, self.max_chars)
        span.set_attributes(attributes)

    def _iteration_ended(self, tree: SpanTree[_Notes], ctx: context.PostIterationContext, span: Any) -> None:
        tree.notes.stopped = tree.notes.stopped or ctx.stop

    def _run_end(self, tree: SpanTree[_Notes], ctx: context.RunEndContext) -> None:
        def annotate() -> None:
            usage = tree.usage
            tree.root.set_attributes(
                {
                    "rlm.iterations": ctx.iterations,
                    "rlm.forced_extract": ctx.forced_extract,
                    "rlm.stop_reason": stop_reason(ctx, tree.notes.stopped),
                    "gen_ai.usage.input_tokens": usage.prompt_tokens,
                    "gen_ai.usage.output_tokens": usage.completion_tokens,
                    "rlm.lm_calls": usage.lm_calls,
                    **cost_attributes(usage),  # no rlm.cost_usd while unknown (see taps._cost)
                }
            )

        self._forest.finish(tree, ctx.error, annotate)

    # -- middleware: spans current while the tool or the extractor runs -------------------------------------

    def _start_tool_span(self, ctx: context.ToolCallContext) -> Any:
        tree = self._forest.get(ctx.run.id)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": ctx.name,
            "gen_ai.tool.type": "function",
            "rlm.run.id": ctx.run.id,
        }
        if ctx.iteration is not None:
            attributes["rlm.iteration"] = ctx.iteration
        if self.capture_content:
            arguments = [*ctx.args, *(f"{k}={v!r}" for k, v in ctx.kwargs.items())]
            attributes["gen_ai.tool.call.arguments"] = preview(arguments, self.max_chars)
        parent = tree.tool_parent() if tree is not None else None  # None: the span current here
        return self._spans.start("tool", f"execute_tool {ctx.name}", parent, attributes)

    def _trace_tool(self, ctx: context.ToolCallContext, next: Any) -> context.ToolCallContext:
        def settle(span: Any, done: context.ToolCallContext | None, error: BaseException | None) -> None:
            if self.capture_content and done is not None:
                span.set_attribute("gen_ai.tool.call.result", preview(done.result, self.max_chars))

        return self._forest.around(f"tool {ctx.name}", lambda: self._start_tool_span(ctx), lambda: next(ctx), settle)

    def _start_extract(self, tree: SpanTree[_Notes], ctx: context.ExtractContext) -> Any:
        return self._spans.start("extract", "extract", tree.root, {"rlm.run.id": ctx.run.id})

    def _extract_outputs(self, span: Any, done: context.ExtractContext | None) -> None:
        if self.capture_content and done is not None and done.prediction is not None:
            fields = {k: v for k, v in done.prediction.items() if k != "trajectory"}
            span.set_attribute("rlm.output", preview(fields, self.max_chars))


__all__ = ["INSTRUMENTATION_NAME", "OpenTelemetryTap"]
