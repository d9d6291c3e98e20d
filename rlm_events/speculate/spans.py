"""The OpenTelemetry spans of calls made ahead: one per dispatched call, child of the span current when it was
planned, ended when the call settles; and the mark on a claiming tool span. Nothing without OpenTelemetry.

They are started and made current through the OpenTelemetry backend the taps' span driver uses
(`OtelSpans`); they form no tree of their own (each nests where it was planned),
so the driver's per-run tree is not needed."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..taps._otel_spans import OtelSpans

if TYPE_CHECKING:
    from ..context import Run
    from .ledger import Dispatch

logger = logging.getLogger("rlm_events")


def tracer_for(provider: Any) -> OtelSpans | None:
    """Speculate's spans on `provider` (the global provider, a proxy until one is set, if `None`); `None`
    without OpenTelemetry."""
    try:
        return OtelSpans(provider, "rlm_events.speculate")
    except ImportError:
        return None


def start_span(spans: OtelSpans, dispatch: Dispatch, run: Run) -> Any:
    """A span for one call made ahead, child of the span current at pre_execution; ended when it settles, with
    `rlm.speculate.outcome` (claimed, wasted or cancelled) and the LM use it cost."""
    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": dispatch.name,
        "rlm.run.id": run.id,
        "rlm.iteration": dispatch.iteration,
        "rlm.speculative": True,
    }
    try:
        return spans.start("tool", f"speculate {dispatch.name}", None, attributes)
    except Exception:
        logger.debug("rlm-events: Speculate could not start a span", exc_info=True)
        return None


def span_current(span: Any) -> Callable[[], None] | None:
    """Make `span` current in this thread (so spans made inside the call nest under it); returns the undo."""
    if span is None:
        return None
    from opentelemetry import context, trace

    token = context.attach(trace.set_span_in_context(span))
    return lambda: context.detach(token)


def end_span(dispatch: Dispatch) -> None:
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


def mark_span(dispatch: Dispatch) -> None:
    """Mark the span current at the claim (an OpenTelemetryTap's tool span) as served by a call made ahead."""
    try:
        from opentelemetry import trace
    except ImportError:
        return
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute("rlm.speculate.claimed", True)
        span.set_attribute("rlm.speculate.tokens", dispatch.ledger.tokens)


__all__ = ["end_span", "mark_span", "span_current", "start_span", "tracer_for"]
