"""OpenTelemetry spans for instrumented ``dspy.RLM`` calls (optional extra ``otel``).

>>> OpenTelemetryTap(tracer_provider).install(events)  # doctest: +SKIP

Span tree of one call (names / attributes follow the OpenTelemetry GenAI semantic conventions where they apply;
``rlm.*`` attributes are ours)::

    invoke_agent RLM(text -> answer)     gen_ai.operation.name=invoke_agent, gen_ai.agent.name, gen_ai.request.model,
    │                                    gen_ai.provider.name (+ deprecated gen_ai.system), gen_ai.usage.input_tokens,
    │                                    gen_ai.usage.output_tokens, rlm.run.id, rlm.max_iters, rlm.iterations,
    │                                    rlm.forced_extract, rlm.cost_usd, error.type
    ├── rlm.iteration                    rlm.iteration (0-based), rlm.code.length, rlm.code.lines, rlm.skipped,
    │   │                                rlm.error (the code's result is an error), rlm.output.length,
    │   │                                rlm.submitted, rlm.stop, gen_ai.request.model, gen_ai.usage.*
    │   └── execute_tool llm_query       gen_ai.operation.name=execute_tool, gen_ai.tool.name, gen_ai.tool.type,
    │                                    rlm.iteration, error.type
    └── rlm.extract                      the extract fallback (from the last iteration's end), gen_ai.usage.*

Guarantees:

* The call span's parent is the span current where the RLM was called, so it nests in your traces. Per-call
  state is kept by run id, never in shared globals: concurrent calls (threads or asyncio tasks) get separate,
  correctly parented trees, and tool calls arriving on interpreter threads find their iteration's span.
* Every span ends, failed calls included: on ``run_end`` a failed call's span gets status ERROR, ``error.type``
  and the recorded exception; an iteration left open by the failure ends with status ERROR too. A tool call that
  raises gets the same on its span.
* Tool spans are current while the tool runs, so spans other instrumentation creates inside a tool (an
  instrumented LM client under ``llm_query``) nest under them. The call and iteration spans are not made current
  (taps observe the loop; they cannot wrap it).
* LM usage comes from the run's one meter (:mod:`rlm_events.lm_usage`), which attributes each LM call to the run
  that made it, concurrent runs on one LM instance included: an iteration span counts the LM calls made during it
  (its action call and its code's sub-LLM calls), the call's span all of them.
* Code and outputs are content: set ``capture_content=True`` to add ``rlm.code``, ``rlm.output`` and the tool
  arguments and results (``gen_ai.tool.call.arguments`` / ``gen_ai.tool.call.result``), cut to ``max_chars``.
* A failure inside the tap is logged and never reaches the call.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import dspy

from ..context import (
    ExtractContext,
    PostExecutionContext,
    PostIterationContext,
    PreExecutionContext,
    PreIterationContext,
    RunEndContext,
    RunStartContext,
    StageContext,
    ToolCallContext,
)
from ..lm_history import module_label
from ..lm_usage import Usage, meter_run
from ..runtime import iteration_limit
from ._text import is_error_result, preview
from ._tool_tap import ToolAwareTap

if TYPE_CHECKING:
    from opentelemetry.trace import Span, TracerProvider

logger = logging.getLogger("rlm_events.taps.otel")

INSTRUMENTATION_NAME = "rlm_events"


def _require_otel() -> Any:
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ImportError(
            "OpenTelemetryTap needs OpenTelemetry, from the optional extra 'otel': pip install 'rlm-events[otel]'"
        ) from exc
    return trace


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _epoch_ns(moment: datetime) -> int:
    """Nanoseconds since the epoch, in exact integer arithmetic (``timestamp() * 1e9`` rounds)."""
    if moment.tzinfo is None:
        moment = moment.astimezone()  # naive: local time, as datetime.timestamp() assumes
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1000


def _provider(model: str | None) -> str | None:
    """``openai`` for ``openai/gpt-4o-mini`` (LiteLLM's provider prefix); ``None`` when the model has none."""
    if model and "/" in model:
        return model.split("/", 1)[0] or None
    return None


def _error_description(error: BaseException) -> str:
    try:
        message = str(error)
    except Exception:
        message = ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class _RunSpans:
    """The open spans and LM usage of one call."""

    __slots__ = ("iterations", "last_event_ns", "model", "reported", "run_span", "usage")

    def __init__(self, run_span: Span, model: str | None, usage: Usage) -> None:
        self.run_span = run_span
        self.model = model
        self.iterations: dict[int, Span] = {}
        self.last_event_ns = time.time_ns()
        self.usage = usage  # the run's one meter (rlm_events.lm_usage)
        self.reported = (0, 0)  # input and output tokens already put on iteration spans


class OpenTelemetryTap(ToolAwareTap):
    """Emits OpenTelemetry spans for every call of the instrumented RLMs (see the module docstring).

    Args:
        tracer_provider: where spans go; the global provider (``opentelemetry.trace.get_tracer_provider()``) if
            ``None``.
        capture_content: also record code, outputs and tool arguments/results (opt-in: they may hold user data).
        max_chars: content attributes are cut to this many characters.

    Raises ``ImportError`` naming the ``otel`` extra when OpenTelemetry is not installed.
    """

    def __init__(
        self, tracer_provider: TracerProvider | None = None, *, capture_content: bool = False, max_chars: int = 4000
    ) -> None:
        trace = _require_otel()
        from opentelemetry import context as otel_context
        from opentelemetry.trace import SpanKind, Status, StatusCode

        from .. import __version__

        self._trace, self._context = trace, otel_context
        self._Status, self._StatusCode, self._SpanKind = Status, StatusCode, SpanKind
        self.tracer = trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider=tracer_provider)
        self.capture_content = capture_content
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._runs: dict[str, _RunSpans] = {}
        self._tool_middleware = self._trace_tool  # one object, so uninstall() can find it

    # -- registration ---------------------------------------------------------------------------------------

    # -- the tap --------------------------------------------------------------------------------------------

    def __call__(self, ctx: StageContext) -> None:
        """Open, annotate or end the spans ``ctx`` concerns (the tap entry point)."""
        if isinstance(ctx, RunStartContext):
            self._run_start(ctx)
            return
        with self._lock:
            state = self._runs.get(ctx.run.id)
        if state is None:  # run_start failed for this call (and was logged): no span to attach to
            return
        try:
            if isinstance(ctx, PreIterationContext):
                self._pre_iteration(state, ctx)
            elif isinstance(ctx, PreExecutionContext):
                self._pre_execution(state, ctx)
            elif isinstance(ctx, PostExecutionContext):
                self._post_execution(state, ctx)
            elif isinstance(ctx, PostIterationContext):
                self._post_iteration(state, ctx)
            elif isinstance(ctx, ExtractContext):
                self._extract(state, ctx)
        finally:
            if isinstance(ctx, RunEndContext):
                self._run_end(state, ctx)
            else:
                state.last_event_ns = time.time_ns()

    def _run_start(self, ctx: RunStartContext) -> None:
        module = ctx.run.module
        usage = meter_run(ctx.run)
        action_lm = getattr(getattr(module, "generate_action", None), "lm", None) or dspy.settings.lm
        model = getattr(action_lm, "model", None)
        model = model if isinstance(model, str) else None
        agent = module_label(module)
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": agent,
            "rlm.run.id": ctx.run.id,
        }
        max_iters = iteration_limit(module)
        if max_iters is not None:
            attributes["rlm.max_iters"] = max_iters
        if model:
            attributes["gen_ai.request.model"] = model
            provider = _provider(model)
            if provider:
                attributes["gen_ai.provider.name"] = provider
                attributes["gen_ai.system"] = provider  # the attribute's name before semconv 1.37
        span = self.tracer.start_span(
            f"invoke_agent {agent}",
            context=self._context.get_current(),  # the caller's: the call nests in its trace
            kind=self._SpanKind.INTERNAL,
            attributes=attributes,
            start_time=_epoch_ns(ctx.run.started_at),
        )
        with self._lock:
            self._runs[ctx.run.id] = _RunSpans(span, model, usage)

    def _child(self, state: _RunSpans, name: str, start_ns: int, attributes: dict[str, Any]) -> Span:
        parent = self._trace.set_span_in_context(state.run_span)
        return self.tracer.start_span(name, context=parent, attributes=attributes, start_time=start_ns)

    @staticmethod
    def _take_usage(state: _RunSpans, span: Span | None) -> None:
        """Put the LM usage since the previous event on ``span`` (if any): the run's meter counts it already."""
        totals = (state.usage.prompt_tokens, state.usage.completion_tokens)
        tokens_in, tokens_out = totals[0] - state.reported[0], totals[1] - state.reported[1]
        state.reported = totals
        if span is not None and (tokens_in or tokens_out):
            span.set_attribute("gen_ai.usage.input_tokens", tokens_in)
            span.set_attribute("gen_ai.usage.output_tokens", tokens_out)

    def _pre_iteration(self, state: _RunSpans, ctx: PreIterationContext) -> None:
        self._take_usage(state, None)  # LM calls between iterations count for the call only
        attributes: dict[str, Any] = {"rlm.run.id": ctx.run.id, "rlm.iteration": ctx.iteration or 0}
        if state.model:
            attributes["gen_ai.request.model"] = state.model
        span = self._child(state, "rlm.iteration", time.time_ns(), attributes)
        with self._lock:
            state.iterations[ctx.iteration or 0] = span

    def _iteration_span(self, state: _RunSpans, iteration: int | None) -> Span | None:
        with self._lock:
            return state.iterations.get(iteration or 0)

    def _pre_execution(self, state: _RunSpans, ctx: PreExecutionContext) -> None:
        span = self._iteration_span(state, ctx.iteration)
        if span is None:
            return
        span.set_attribute("rlm.code.length", len(ctx.code))
        span.set_attribute("rlm.code.lines", len(ctx.code.splitlines()))
        span.set_attribute("rlm.skipped", ctx.skipped)
        if self.capture_content:
            span.set_attribute("rlm.code", preview(ctx.code, self.max_chars))

    def _post_execution(self, state: _RunSpans, ctx: PostExecutionContext) -> None:
        span = self._iteration_span(state, ctx.iteration)
        if span is None:
            return
        output = "" if ctx.result is None else str(ctx.result)
        span.set_attribute("rlm.error", is_error_result(ctx.result))
        span.set_attribute("rlm.output.length", len(output))
        span.set_attribute("rlm.code.length", len(ctx.code))  # as recorded: middleware may have changed it
        if self.capture_content:
            span.set_attribute("rlm.output", preview(output, self.max_chars))

    def _post_iteration(self, state: _RunSpans, ctx: PostIterationContext) -> None:
        with self._lock:
            span = state.iterations.pop(ctx.iteration or 0, None)
        if span is None:
            return
        try:
            span.set_attribute("rlm.submitted", ctx.prediction is not None)
            span.set_attribute("rlm.stop", ctx.stop)
            self._take_usage(state, span)
        finally:
            span.end()

    def _extract(self, state: _RunSpans, ctx: ExtractContext) -> None:
        span = self._child(state, "rlm.extract", state.last_event_ns, {"rlm.run.id": ctx.run.id})
        try:
            self._take_usage(state, span)
            if self.capture_content and ctx.prediction is not None:
                fields = {k: v for k, v in ctx.prediction.items() if k != "trajectory"}
                span.set_attribute("rlm.output", preview(fields, self.max_chars))
        finally:
            span.end()

    def _run_end(self, state: _RunSpans, ctx: RunEndContext) -> None:
        with self._lock:
            self._runs.pop(ctx.run.id, None)
            open_iterations = list(state.iterations.values())
            state.iterations.clear()
        span = state.run_span
        try:
            usage = state.usage
            span.set_attribute("rlm.iterations", ctx.iterations)
            span.set_attribute("rlm.forced_extract", ctx.forced_extract)
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            if usage.lm_calls > usage.unpriced_lm_calls + usage.unmetered_lm_calls:
                span.set_attribute("rlm.cost_usd", usage.cost_usd)
            if ctx.error is not None:
                description = _error_description(ctx.error)
                for iteration in open_iterations:
                    iteration.set_attribute("error.type", type(ctx.error).__qualname__)
                    iteration.set_status(self._Status(self._StatusCode.ERROR, description))
                span.record_exception(ctx.error)
                span.set_attribute("error.type", type(ctx.error).__qualname__)
                span.set_status(self._Status(self._StatusCode.ERROR, description))
        finally:
            for iteration in open_iterations:
                iteration.end()
            span.end()

    # -- the tool_call middleware ---------------------------------------------------------------------------

    def _start_tool_span(self, ctx: ToolCallContext) -> Span:
        with self._lock:
            state = self._runs.get(ctx.run.id)
            parent_span = None
            if state is not None:
                parent_span = state.iterations.get(ctx.iteration or 0, state.run_span)
        parent = self._trace.set_span_in_context(parent_span) if parent_span is not None else None
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
        return self.tracer.start_span(f"execute_tool {ctx.name}", context=parent, attributes=attributes)

    def _trace_tool(self, ctx: ToolCallContext, next: Any) -> ToolCallContext:
        try:
            span = self._start_tool_span(ctx)
            token = self._context.attach(self._trace.set_span_in_context(span))
        except Exception:
            logger.exception("OpenTelemetryTap could not start the span of tool %s", ctx.name)
            return next(ctx)  # type: ignore[no-any-return]
        try:
            ctx = next(ctx)
            if self.capture_content:
                span.set_attribute("gen_ai.tool.call.result", preview(ctx.result, self.max_chars))
            return ctx
        except BaseException as exc:
            try:
                span.record_exception(exc)
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(self._Status(self._StatusCode.ERROR, _error_description(exc)))
            except Exception:
                logger.exception("OpenTelemetryTap could not mark the span of tool %s as failed", ctx.name)
            raise
        finally:
            try:
                self._context.detach(token)
                span.end()
            except Exception:
                logger.exception("OpenTelemetryTap could not end the span of tool %s", ctx.name)


__all__ = ["INSTRUMENTATION_NAME", "OpenTelemetryTap"]
