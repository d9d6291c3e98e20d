"""The OpenTelemetry backend of the span driver (`rlm_events.taps._spans`): what
[`OpenTelemetryTap`][rlm_events.taps.OpenTelemetryTap] and Speculate's spans start, make current and end."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._optional import requiring
from ._spans import SpanBackend
from ._text import error_text

if TYPE_CHECKING:
    from ._spans import Attributes, Tokens


def require_otel(owner: str) -> Any:
    """OpenTelemetry's `trace` API; an `ImportError` naming the `otel` extra (and `owner`) without it."""
    with requiring("otel", owner, "OpenTelemetry"):
        from opentelemetry import trace
    return trace


class OtelSpans(SpanBackend):
    """Spans of one OpenTelemetry tracer (`scope` and `version`, from `tracer_provider` or the global one).
    Every span is `INTERNAL`; a failed span gets `error.type` and status ERROR with the error's description.

    Raises `ImportError` naming the `otel` extra and `owner` when OpenTelemetry is not installed.
    """

    def __init__(self, tracer_provider: Any, scope: str, version: str | None = None, *, owner: str = "") -> None:
        trace = require_otel(owner or scope)
        from opentelemetry import context
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._trace, self._context = trace, context
        self._Status, self._StatusCode, self._SpanKind = Status, StatusCode, SpanKind
        self.tracer = trace.get_tracer(scope, version, tracer_provider=tracer_provider)

    def start(
        self, role: str, name: str, parent: Any, attributes: Attributes, inputs: Any = None, start_ns: int | None = None
    ) -> Any:
        context = self._context.get_current() if parent is None else self._trace.set_span_in_context(parent)
        return self.tracer.start_span(
            name, context=context, kind=self._SpanKind.INTERNAL, attributes=attributes, start_time=start_ns
        )

    def make_current(self, span: Any) -> Any:
        return self._context.attach(self._trace.set_span_in_context(span))

    def restore(self, token: Any) -> None:
        self._context.detach(token)

    def set_usage(self, span: Any, since: Tokens, now: Tokens) -> None:
        tokens_in, tokens_out = now[0] - since[0], now[1] - since[1]
        if tokens_in or tokens_out:
            span.set_attribute("gen_ai.usage.input_tokens", tokens_in)
            span.set_attribute("gen_ai.usage.output_tokens", tokens_out)

    def fail(self, span: Any, error: BaseException) -> None:
        span.set_attribute("error.type", type(error).__qualname__)
        # an unprintable message leaves the type's name alone in the status description
        span.set_status(self._Status(self._StatusCode.ERROR, error_text(error, unprintable="")))

    def end(self, span: Any, outputs: Any = None) -> None:
        span.end()

    def current_span(self) -> Any:
        """The span current here (a non-recording one when there is none)."""
        return self._trace.get_current_span()


__all__ = ["OtelSpans", "require_otel"]
