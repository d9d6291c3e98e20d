"""The MLflow backend of the span driver (`rlm_events.taps._spans`): what
[`MlflowTap`][rlm_events.taps.MlflowTap] starts, makes current (MLflow's tracing context) and ends."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dspy

from .._optional import requiring
from ._spans import Attributes, SpanBackend, Tokens, provider_of
from ._text import error_text, preview, safe_repr


def require_mlflow() -> Any:
    """The `mlflow` module; an `ImportError` naming the `mlflow` extra without MLflow's tracing SDK."""
    with requiring("mlflow", "MlflowTap", "MLflow's tracing SDK"):
        import mlflow
        from mlflow.tracing.provider import detach_span_from_context, set_span_in_context  # noqa: F401
    return mlflow


def recorded(value: Any, max_chars: int) -> Any:
    """`value` as recorded: strings cut to `max_chars`; containers element-wise; other objects by repr."""
    if isinstance(value, str):
        return preview(value, max_chars)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): recorded(v, max_chars) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [recorded(v, max_chars) for v in value]
    return preview(safe_repr(value), max_chars)


def sizes(value: dict[str, Any]) -> dict[str, Any]:
    """`value` without its content: strings and containers by their length."""
    return {k: len(v) if isinstance(v, (str, list, tuple, dict)) else v for k, v in value.items()}


class MlflowSpans(SpanBackend):
    """MLflow spans, typed by the role they play (the call an AGENT, an iteration a CHAIN, the action and extract
    LLM, the code and tools TOOL) and named as `span_names` renames them (the call's span keeps its name).
    Usage is MLflow's token-usage attribute; a failed span has status ERROR."""

    def __init__(self, span_names: Mapping[str, str] | None = None) -> None:
        mlflow = require_mlflow()
        from mlflow.entities import SpanType
        from mlflow.tracing.constant import SpanAttributeKey
        from mlflow.tracing.provider import detach_span_from_context, set_span_in_context

        self.mlflow: Any = mlflow
        self.Key: Any = SpanAttributeKey
        self._attach, self._detach = set_span_in_context, detach_span_from_context
        self.span_names = dict(span_names or {})
        self.types: dict[str, Any] = {
            "run": SpanType.AGENT,
            "iteration": SpanType.CHAIN,
            "generate_action": SpanType.LLM,
            "execute_code": SpanType.TOOL,
            "tool": SpanType.TOOL,
            "extract": SpanType.LLM,
        }

    def autolog_root(self, module: Any) -> Any:
        """Autolog's `RLM.forward` span of this call of `module`, if it is the current span."""
        current = self.mlflow.get_current_active_span()
        if current is None or current.name != f"{type(module).__name__}.forward":
            return None
        callbacks = [*(dspy.settings.get("callbacks") or []), *(getattr(module, "callbacks", None) or [])]
        if not any(type(c).__name__ == "MlflowCallback" for c in callbacks):
            return None
        return current

    def model_attributes(self, model: str | None) -> dict[str, Any]:
        """The model (and its provider) an LLM span records, under MLflow's keys (those since MLflow 3.5)."""
        if not model:
            return {}
        attributes = {getattr(self.Key, "MODEL", "mlflow.llm.model"): model}
        provider = provider_of(model)
        if provider:
            attributes[getattr(self.Key, "MODEL_PROVIDER", "mlflow.llm.provider")] = provider
        return attributes

    def start(
        self, role: str, name: str, parent: Any, attributes: Attributes, inputs: Any = None, start_ns: int | None = None
    ) -> Any:
        return self.mlflow.start_span_no_context(
            name=name if role == "run" else self.span_names.get(name, name),
            span_type=self.types[role],
            parent_span=self.mlflow.get_current_active_span() if parent is None else parent,
            inputs=inputs,
            attributes=dict(attributes),
            start_time_ns=start_ns,
        )

    def make_current(self, span: Any) -> Any:
        return self._attach(span)

    def restore(self, token: Any) -> None:
        self._detach(token)

    def set_usage(self, span: Any, since: Tokens, now: Tokens) -> None:
        tokens_in, tokens_out, total = (b - a for a, b in zip(since, now, strict=True))
        if tokens_in or tokens_out or total:
            usage = {
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "total_tokens": total or tokens_in + tokens_out,
            }
            span.set_attribute(self.Key.CHAT_USAGE, usage)

    def record_error(self, span: Any, error: BaseException) -> None:
        """Record `error` on `span` and mark it failed. MLflow records `Exception`s only: another `BaseException` (a
        worker stopped mid-call, `KeyboardInterrupt`) is recorded as its `'Type: message'` text, so that the span
        still ends and the trace stays readable."""
        span.record_exception(error if isinstance(error, Exception) else error_text(error))
        self.fail(span, error)

    def fail(self, span: Any, error: BaseException | None = None) -> None:
        span.set_status("ERROR")

    def end(self, span: Any, outputs: Any = None) -> None:
        span.end(outputs=outputs)


__all__ = ["MlflowSpans", "recorded", "require_mlflow", "sizes"]
