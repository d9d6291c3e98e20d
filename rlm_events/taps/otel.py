"""OpenTelemetry spans for instrumented ``dspy.RLM`` calls (optional extra ``otel``).

>>> OpenTelemetryTap(tracer_provider).install(events)  # doctest: +SKIP

Span tree of one call: the tree :class:`~rlm_events.taps.MlflowTap` records, with names and attributes after the
OpenTelemetry GenAI semantic conventions where they apply (``rlm.*`` attributes are ours)::

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

``rlm.stop_reason`` is ``submit``, ``max_iters``, ``budget``, ``middleware`` or ``error`` (as on the MLflow root).

Guarantees:

* The call span's parent is the span current where the RLM was called, so it nests in your traces. Per-call
  state is kept by run id, never in shared globals: concurrent calls (threads or asyncio tasks) get separate,
  correctly parented trees, and tool calls arriving on interpreter threads find their ``execute_code`` span.
* Spans are current (OpenTelemetry's context) while what they stand for runs: the call span for the whole call,
  an iteration from ``pre_iteration`` to ``post_iteration``, ``generate_action`` while the LM writes the code,
  ``execute_code`` while it runs, a tool span while its tool runs, ``extract`` while the extractor runs. So spans
  other instrumentation creates meanwhile (an instrumented LM client) nest where they happened.
* Every span ends, failed calls included: on ``run_end`` a failed call's span gets status ERROR, ``error.type``
  and the recorded exception; spans left open by the failure end with status ERROR too. A tool call that raises
  gets the same on its span.
* LM usage comes from the run's one meter (:mod:`rlm_events.lm_usage`), which attributes each LM call to the run
  that made it, concurrent runs on one LM instance included: an iteration span counts the LM calls made during it
  (its action call and its code's sub-LLM calls), the call's span all of them. Calls DSPy's cache answered are
  not in the token counts. ``rlm.cost_usd`` is set only while the cost is known; an unknown cost (a call no price
  map prices, or whose usage could not be seen) sets ``rlm.cost_known=false`` and ``rlm.unpriced_lm_calls`` /
  ``rlm.unmetered_lm_calls`` instead, never ``0``; cached calls add ``rlm.cached_lm_calls`` and
  ``rlm.saved_cost_usd``.
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
from ..installable import Registrations
from ..lm_history import module_label
from ..lm_usage import Usage, meter_run
from ..runtime import iteration_limit
from ..stages import Stage
from ._cost import cost_attributes
from ._stop import stop_reason
from ._text import is_error_result, preview
from ._tool_tap import LOOP_STAGES, ToolAwareTap

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

    __slots__ = (
        "attached",
        "iteration",
        "iteration_mark",
        "last_event_ns",
        "model",
        "run_span",
        "step",
        "step_kind",
        "step_mark",
        "stopped",
        "usage",
    )

    def __init__(self, run_span: Span, model: str | None, usage: Usage) -> None:
        self.run_span = run_span
        self.model = model
        self.attached: list[tuple[Span, object]] = []  # spans made current in the call's context, innermost last
        self.iteration: Span | None = None
        self.step: Span | None = None  # the open generate_action or execute_code span
        self.step_kind = ""
        self.last_event_ns = time.time_ns()
        self.usage = usage  # the run's one meter (rlm_events.lm_usage)
        self.iteration_mark = self.step_mark = (usage.prompt_tokens, usage.completion_tokens)
        self.stopped = False  # a post_iteration had stop set


def _totals(usage: Usage) -> tuple[int, int]:
    return usage.prompt_tokens, usage.completion_tokens


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
        # One object each, so uninstall() can find them.
        self._tool_middleware = self._trace_tool
        self._extract_middleware = self._trace_extract

    # -- registration ---------------------------------------------------------------------------------------

    def registrations(self) -> Registrations:
        return Registrations(
            middleware=[(Stage.TOOL_CALL, self._tool_middleware), (Stage.EXTRACT, self._extract_middleware)],
            taps=[(LOOP_STAGES, self)],
        )

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
        state = _RunSpans(span, model, usage)
        with self._lock:
            self._runs[ctx.run.id] = state
        self._push(state, span)

    # -- spans current in the call's context -----------------------------------------------------------------

    def _push(self, state: _RunSpans, span: Span) -> None:
        """Make ``span`` current in this (the call's) context, until :meth:`_pop`."""
        state.attached.append((span, self._context.attach(self._trace.set_span_in_context(span))))

    def _pop(self, state: _RunSpans, span: Span) -> None:
        """Undo :meth:`_push` of ``span`` and of everything pushed after it, innermost first."""
        if not any(attached is span for attached, _ in state.attached):
            return
        while state.attached:
            attached, token = state.attached.pop()
            try:
                self._context.detach(token)  # type: ignore[arg-type]
            except Exception:
                logger.debug("OpenTelemetryTap could not detach a span", exc_info=True)
            if attached is span:
                return

    def _child(self, state: _RunSpans, parent: Span, name: str, attributes: dict[str, Any]) -> Span:
        context = self._trace.set_span_in_context(parent)
        return self.tracer.start_span(name, context=context, attributes=attributes, start_time=time.time_ns())

    @staticmethod
    def _set_usage(span: Span, since: tuple[int, int], now: tuple[int, int]) -> None:
        tokens_in, tokens_out = now[0] - since[0], now[1] - since[1]
        if tokens_in or tokens_out:
            span.set_attribute("gen_ai.usage.input_tokens", tokens_in)
            span.set_attribute("gen_ai.usage.output_tokens", tokens_out)

    def _close_step(self, state: _RunSpans, error: BaseException | None = None) -> None:
        self._close(state, "step", error)

    def _close_iteration(self, state: _RunSpans, error: BaseException | None = None) -> None:
        self._close_step(state, error)
        self._close(state, "iteration", error)

    def _close(self, state: _RunSpans, level: str, error: BaseException | None) -> None:
        """End the open ``level`` span (``"step"`` or ``"iteration"``) with the usage since it opened."""
        span = getattr(state, level)
        if span is None:
            return
        setattr(state, level, None)
        self._pop(state, span)
        try:
            now = _totals(state.usage)
            self._set_usage(span, getattr(state, f"{level}_mark"), now)
            setattr(state, f"{level}_mark", now)
            if error is not None:
                self._mark_failed(span, error)
        finally:
            span.end()

    def _open_step(self, state: _RunSpans, kind: str, span: Span) -> None:
        state.step, state.step_kind, state.step_mark = span, kind, _totals(state.usage)
        self._push(state, span)

    def _mark_failed(self, span: Span, error: BaseException) -> None:
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(self._Status(self._StatusCode.ERROR, _error_description(error)))

    # -- the loop stages --------------------------------------------------------------------------------------

    def _pre_iteration(self, state: _RunSpans, ctx: PreIterationContext) -> None:
        self._close_iteration(state)  # an iteration the loop left without its later stages
        index = ctx.iteration or 0
        iteration = self._child(
            state, state.run_span, f"iteration {index + 1}", {"rlm.run.id": ctx.run.id, "rlm.iteration": index}
        )
        state.iteration, state.iteration_mark = iteration, _totals(state.usage)
        self._push(state, iteration)
        attributes: dict[str, Any] = {"rlm.run.id": ctx.run.id, "rlm.iteration": index}
        if state.model:
            attributes["gen_ai.request.model"] = state.model
        self._open_step(state, "generate_action", self._child(state, iteration, "generate_action", attributes))

    def _pre_execution(self, state: _RunSpans, ctx: PreExecutionContext) -> None:
        if state.step_kind == "generate_action":
            self._close_step(state)
        attributes: dict[str, Any] = {
            "rlm.run.id": ctx.run.id,
            "rlm.iteration": ctx.iteration or 0,
            "rlm.code.length": len(ctx.code),
            "rlm.code.lines": len(ctx.code.splitlines()),
            "rlm.skipped": ctx.skipped,
        }
        if self.capture_content:
            attributes["rlm.code"] = preview(ctx.code, self.max_chars)
        span = self._child(state, state.iteration or state.run_span, "execute_code", attributes)
        self._open_step(state, "execute_code", span)

    def _post_execution(self, state: _RunSpans, ctx: PostExecutionContext) -> None:
        span = state.step if state.step_kind == "execute_code" else None
        if span is None:
            return
        output = "" if ctx.result is None else str(ctx.result)
        span.set_attribute("rlm.error", is_error_result(ctx.result))
        span.set_attribute("rlm.output.length", len(output))
        span.set_attribute("rlm.code.length", len(ctx.code))  # as recorded: middleware may have changed it
        if self.capture_content:
            span.set_attribute("rlm.output", preview(output, self.max_chars))
        self._close_step(state)

    def _post_iteration(self, state: _RunSpans, ctx: PostIterationContext) -> None:
        span = state.iteration
        if span is None:
            return
        span.set_attribute("rlm.submitted", ctx.prediction is not None)
        span.set_attribute("rlm.stop", ctx.stop)
        state.stopped = state.stopped or ctx.stop
        self._close_iteration(state)

    def _run_end(self, state: _RunSpans, ctx: RunEndContext) -> None:
        with self._lock:
            self._runs.pop(ctx.run.id, None)
        span = state.run_span
        try:
            self._close_iteration(state, ctx.error)
            usage = state.usage
            span.set_attribute("rlm.iterations", ctx.iterations)
            span.set_attribute("rlm.forced_extract", ctx.forced_extract)
            span.set_attribute("rlm.stop_reason", stop_reason(ctx, state.stopped))
            span.set_attribute("gen_ai.usage.input_tokens", usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", usage.completion_tokens)
            span.set_attribute("rlm.lm_calls", usage.lm_calls)
            span.set_attributes(cost_attributes(usage))  # no rlm.cost_usd while unknown (see taps._cost)
            if ctx.error is not None:
                span.record_exception(ctx.error)
                self._mark_failed(span, ctx.error)
        finally:
            while state.attached:  # whatever is still current, innermost first; the call's span last
                self._pop(state, state.attached[-1][0])
            span.end()

    # -- middleware: spans current while the tool or the extractor runs -------------------------------------

    def _start_tool_span(self, ctx: ToolCallContext) -> Span:
        with self._lock:
            state = self._runs.get(ctx.run.id)
        parent_span = None
        if state is not None:
            parent_span = state.step if state.step_kind == "execute_code" else None
            parent_span = parent_span or state.iteration or state.run_span
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
                self._mark_failed(span, exc)
            except Exception:
                logger.exception("OpenTelemetryTap could not mark the span of tool %s as failed", ctx.name)
            raise
        finally:
            try:
                self._context.detach(token)
                span.end()
            except Exception:
                logger.exception("OpenTelemetryTap could not end the span of tool %s", ctx.name)

    def _trace_extract(self, ctx: ExtractContext, next: Any) -> ExtractContext:
        try:
            with self._lock:
                state = self._runs.get(ctx.run.id)
            if state is None:
                return next(ctx)  # type: ignore[no-any-return]
            mark = _totals(state.usage)
            span = self._child(state, state.run_span, "extract", {"rlm.run.id": ctx.run.id})
            token = self._context.attach(self._trace.set_span_in_context(span))
        except Exception:
            logger.exception("OpenTelemetryTap could not start the extract span")
            return next(ctx)  # type: ignore[no-any-return]
        try:
            ctx = next(ctx)
            if self.capture_content and ctx.prediction is not None:
                fields = {k: v for k, v in ctx.prediction.items() if k != "trajectory"}
                span.set_attribute("rlm.output", preview(fields, self.max_chars))
            return ctx
        except BaseException as exc:
            try:
                span.record_exception(exc)
                self._mark_failed(span, exc)
            except Exception:
                logger.exception("OpenTelemetryTap could not mark the extract span as failed")
            raise
        finally:
            try:
                self._context.detach(token)
                now = _totals(state.usage)
                self._set_usage(span, mark, now)
                state.iteration_mark = state.step_mark = now
                span.end()
            except Exception:
                logger.exception("OpenTelemetryTap could not end the extract span")


__all__ = ["INSTRUMENTATION_NAME", "OpenTelemetryTap"]
