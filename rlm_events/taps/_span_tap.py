"""The base of the taps that record each call as a span tree ([`OpenTelemetryTap`][rlm_events.taps.OpenTelemetryTap],
[`MlflowTap`][rlm_events.taps.MlflowTap]): registration, the dispatch of stage events to the tree of their call, and
the extract span, on the driver of `rlm_events.taps._spans`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .. import context
from ..installable import Registrations
from ..lm_usage import Usage, meter_run
from ..runtime import iteration_limit
from ..stages import Stage
from ._spans import SpanBackend, SpanForest, SpanTree, action_model
from ._tool_tap import LOOP_STAGES, InstallableTap

N = TypeVar("N")  # a subclass's per-call notes


def limit_attributes(module: Any) -> dict[str, Any]:
    """`rlm.max_iters` of a call's module, where it has one."""
    max_iters = iteration_limit(module)
    return {} if max_iters is None else {"rlm.max_iters": max_iters}


def durable_link(run: context.Run) -> dict[str, Any] | None:
    """[`Durable.link(run)`][rlm_events.durable.Durable.link], without importing `rlm_events.durable` where nothing
    did: no run is durable before it is imported."""
    if "rlm_events.durable" not in sys.modules:
        return None
    from ..durable import Durable

    return Durable.link(run)


def durable_attributes(run: context.Run) -> dict[str, Any]:
    """`rlm.durable.run_id` of a durable run (its id in the store: the original run's, for a resumed run), and the
    run it resumes or forks (`rlm.durable.relation` `resume` or `fork`, `rlm.durable.parent`, and
    `rlm.durable.replayed`, the iterations replayed from the record); nothing for a run no `Durable` made durable."""
    link = durable_link(run)
    if link is None:
        return {}
    return {f"rlm.durable.{key}": value for key, value in link.items() if value is not None}


def code_attributes(ctx: context.PreExecutionContext) -> dict[str, Any]:
    """What an `execute_code` span says of the code when it opens."""
    return {
        "rlm.iteration": ctx.iteration or 0,
        "rlm.code.length": len(ctx.code),
        "rlm.code.lines": len(ctx.code.splitlines()),
        "rlm.skipped": ctx.skipped,
    }


class SpanTap(InstallableTap, Generic[N]):
    """A tap on the loop stages with a `tool_call` and an `extract` middleware (outermost: the tool and extract
    spans are current while they run), keeping one `SpanTree` per call in flight.

    Subclasses start the call's span (`_run_start()`), handle the stages they record (the others are ignored),
    end the call (`_run_end()`), trace tool calls (`_trace_tool()`) and start the extract span
    (`_start_extract()`). A stage of a call whose `run_start` failed is ignored.

    Inline: a span must be current while the stage it covers runs, so that DSPy's own spans (`mlflow.dspy.autolog`)
    nest under it. The tap only starts, annotates and ends spans (bounded work, no I/O); exporting them is the
    backend's (OpenTelemetry's `BatchSpanProcessor`, MLflow's trace export).
    """

    INLINE = True

    def __init__(self, backend: SpanBackend, owner: str, logger: logging.Logger) -> None:
        self._forest: SpanForest[N] = SpanForest(backend, owner, logger)
        # One object each, so uninstall() finds what install() registered.
        self._tool_middleware = self._trace_tool
        self._extract_middleware = self._trace_extract
        self._handlers: dict[Stage, Callable[[SpanTree[N], Any], None]] = {
            Stage.PRE_ITERATION: self._pre_iteration,
            Stage.PRE_EXECUTION: self._pre_execution,
            Stage.POST_EXECUTION: self._post_execution,
            Stage.POST_ITERATION: self._post_iteration,
            Stage.EXTRACT: self._extract,
            Stage.RUN_END: self._run_end,
        }

    def registrations(self) -> Registrations:
        return Registrations(
            middleware=[(Stage.TOOL_CALL, self._tool_middleware), (Stage.EXTRACT, self._extract_middleware)],
            taps=[(LOOP_STAGES, self)],
        )

    def __call__(self, ctx: context.StageContext) -> None:
        """Open, annotate or end the spans `ctx` concerns (the tap entry point)."""
        if isinstance(ctx, context.RunStartContext):
            self._run_start(ctx, meter_run(ctx.run), action_model(ctx.run.module))
            return
        handler = self._handlers.get(ctx.stage)
        if handler is None:
            return
        tree = self._forest.get(ctx.run.id)
        if tree is not None:  # None: run_start failed for this call (and was logged), no span to attach to
            handler(tree, ctx)

    # -- what subclasses record -------------------------------------------------------------------------------

    def _run_start(self, ctx: context.RunStartContext, usage: Usage, model: str | None) -> None:
        """Start the call's span and plant its tree; `usage` is the run's meter, `model` the action's."""
        raise NotImplementedError

    def _pre_iteration(self, tree: SpanTree[N], ctx: context.PreIterationContext) -> None:
        pass

    def _pre_execution(self, tree: SpanTree[N], ctx: context.PreExecutionContext) -> None:
        pass

    def _post_execution(self, tree: SpanTree[N], ctx: context.PostExecutionContext) -> None:
        span = tree.code_span
        if span is not None:  # None: the code's pre_execution was not seen
            self._forest.close_step(tree, outputs=self._code_ran(tree, ctx, span))

    def _code_ran(self, tree: SpanTree[N], ctx: context.PostExecutionContext, span: Any) -> Any:
        """Record what the code did on its `execute_code` span, about to close; returns the span's outputs."""
        raise NotImplementedError

    def _post_iteration(self, tree: SpanTree[N], ctx: context.PostIterationContext) -> None:
        span = tree.iteration
        if span is None:
            return
        submitted = ctx.prediction is not None
        span.set_attributes({"rlm.submitted": submitted, "rlm.stop": ctx.stop})
        self._iteration_ended(tree, ctx, span)
        self._forest.close_iteration(tree, outputs={"submitted": submitted, "stop": ctx.stop})

    def _iteration_ended(self, tree: SpanTree[N], ctx: context.PostIterationContext, span: Any) -> None:
        """Record how the iteration ended on its span, about to close."""

    def _extract(self, tree: SpanTree[N], ctx: context.ExtractContext) -> None:
        """The `extract` stage event (after the extractor ran)."""

    def _run_end(self, tree: SpanTree[N], ctx: context.RunEndContext) -> None:
        """End the call's tree (`SpanForest.finish`)."""
        raise NotImplementedError

    def _trace_tool(self, ctx: context.ToolCallContext, next: Any) -> context.ToolCallContext:
        raise NotImplementedError

    def _start_extract(self, tree: SpanTree[N], ctx: context.ExtractContext) -> Any:
        """The extract span, a child of the call's."""
        raise NotImplementedError

    def _extract_outputs(self, span: Any, done: context.ExtractContext | None) -> Any:
        """Record the extractor's answer on its span (`done` is `None` if it failed); returns the outputs."""
        return None

    # -- the extract middleware -------------------------------------------------------------------------------

    def _trace_extract(self, ctx: context.ExtractContext, next: Any) -> context.ExtractContext:
        tree = self._forest.get(ctx.run.id)
        if tree is None:
            return next(ctx)  # type: ignore[no-any-return]
        mark = tree.tokens()

        def settle(span: Any, done: context.ExtractContext | None, error: BaseException | None) -> Any:
            outputs = self._extract_outputs(span, done)
            self._forest.measured(tree, span, mark)
            return outputs

        return self._forest.around("extract", lambda: self._start_extract(tree, ctx), lambda: next(ctx), settle)


__all__ = ["SpanTap", "code_attributes", "durable_attributes", "limit_attributes"]
