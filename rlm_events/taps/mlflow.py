"""MLflow traces of instrumented ``dspy.RLM`` calls, as the loop they are (optional extra ``mlflow``).

>>> mlflow.dspy.autolog()  # optional: DSPy's own spans then nest in the loop  # doctest: +SKIP
>>> MlflowTap().install(events)  # doctest: +SKIP

The trace of one call::

    RLM.forward                     AGENT  rlm.stop_reason, rlm.iterations, mlflow.chat.tokenUsage, rlm.cost_usd
    ├── iteration 1                 CHAIN  rlm.iteration (0-based), mlflow.chat.tokenUsage, rlm.submitted, rlm.stop
    │   ├── generate_action         LLM    the LM writes the code: outputs reasoning and code (as the LM wrote it)
    │   │   └── Predict.forward …          autolog's predictor, adapter and LM spans
    │   └── execute_code            TOOL   inputs the code that ran, outputs its output; guard refusals as events
    │       └── llm_query           TOOL   one per tool call (llm_query, llm_query_batched, your tools)
    │           └── LM.__call__ …          autolog's sub-LM spans
    ├── iteration 2 …
    └── extract                     LLM    DSPy's extract fallback (max_iters reached, or a stop)

* **Root.** With ``mlflow.dspy.autolog()`` on, the root is autolog's own ``RLM.forward`` span (made an AGENT span);
  without it, the tap makes that span itself, a child of the span current where the RLM is called (if any), so the
  call nests in your traces either way. ``rlm.stop_reason`` says why the loop ended: ``submit``, ``max_iters``,
  ``budget`` (a :class:`~rlm_events.builtins.Budget` limit; ``rlm.budget.stopped_by`` and
  ``rlm.budget.reason`` say which), ``middleware`` (a middleware set ``stop``; ``rlm.stop.by`` names it) or
  ``error`` (the span's status is ERROR and the exception is recorded).
* **Nesting.** The iteration, ``generate_action`` and ``execute_code`` spans are made *current* (MLflow's tracing
  context) from the stage that opens them to the stage that closes them, and each tool span while its tool runs,
  so every span DSPy, autolog or your code creates meanwhile nests in its place: the action's predictor under
  ``generate_action``, a tool's sub-LM calls under the tool, the threads of ``llm_query_batched`` too (DSPy 3.3+
  runs them in copies of the caller's context; before 3.3 they start traces of their own). Per-call state is kept
  by run id: concurrent calls (threads or asyncio tasks) each get their own trace.
* **Usage.** ``mlflow.chat.tokenUsage`` (MLflow's token-usage attribute) on the root, every iteration, every
  ``generate_action``, ``execute_code`` with sub-LM calls and ``extract``, from the run's one meter
  (:mod:`rlm_events.lm_usage`): an iteration counts its action and its code's sub-LM calls. MLflow adds up a trace's
  usage from the outermost spans that have it, so the trace's total is the run's. Calls DSPy's cache answered are
  not in the token counts. On the root, ``rlm.lm_calls``; ``rlm.cost_usd`` only while the cost is known (else
  ``rlm.cost_known=false`` and ``rlm.unpriced_lm_calls`` / ``rlm.unmetered_lm_calls``, never ``0``); with cached
  calls, ``rlm.cached_lm_calls`` and ``rlm.saved_cost_usd``.
* **Events.** A :class:`~rlm_events.builtins.CodeGuard` refusal is a ``guard_refusal`` event on ``execute_code``;
  a budget stop a ``budget_stop`` event on the iteration it ended. A middleware that changed the code, the result
  or stopped the loop is named (``rlm.code.changed_by``, ``rlm.result.changed_by``, ``rlm.stop.by``; and a
  ``middleware_changed`` event): ``install()`` places observers between the middleware of those stages
  (:mod:`rlm_events.taps._changes`), so the names are exact for middleware registered before the tap and grouped
  for those registered after it.
* **Content.** Inputs and outputs (code, outputs, tool arguments and results, the answer) are recorded, as
  autolog records them, each string cut to ``max_chars``; ``capture_content=False`` keeps only their sizes.
* The tap never breaks the call: a failure inside it is logged and the call goes on.

Which MLflow: the tap needs MLflow's tracing SDK only, ``mlflow-tracing`` (the ``mlflow`` extra, about 40 MB), which
logs to any MLflow tracking server or Databricks; the full ``mlflow`` package (about 590 MB, it depends on the SDK)
adds local stores (``sqlite:///mlruns.db``) and ``mlflow ui``. Both provide ``import mlflow``.
"""

from __future__ import annotations

import logging
import threading
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
from ._changes import ChangeWitnesses
from ._cost import cost_attributes
from ._stop import STOP_REASONS, stop_reason
from ._text import is_error_result, preview, safe_repr
from ._tool_tap import LOOP_STAGES, InstallableTap

if TYPE_CHECKING:
    from ..instrumentation import Instrumentation

logger = logging.getLogger("rlm_events.taps.mlflow")


def _require_mlflow() -> Any:
    try:
        import mlflow
        from mlflow.tracing.provider import detach_span_from_context, set_span_in_context  # noqa: F401
    except ImportError as exc:
        raise ImportError(
            "MlflowTap needs MLflow's tracing SDK, from the optional extra 'mlflow': pip install 'rlm-events[mlflow]'"
        ) from exc
    return mlflow


def _provider(model: str | None) -> str | None:
    if model and "/" in model:
        return model.split("/", 1)[0] or None
    return None


def _totals(usage: Usage) -> tuple[int, int, int]:
    return usage.prompt_tokens, usage.completion_tokens, usage.tokens


class _Attached:
    """A span made current in one context, and the token that undoes it there."""

    __slots__ = ("span", "token")

    def __init__(self, span: Any, token: Any) -> None:
        self.span, self.token = span, token


class _RunSpans:
    """The spans of one call."""

    __slots__ = (
        "attached",
        "changed_by",
        "extracting",
        "guard_seen",
        "iteration",
        "iteration_mark",
        "model",
        "own_root",
        "root",
        "step",
        "step_kind",
        "step_mark",
        "stopped_by",
        "usage",
    )

    def __init__(self, root: Any, own_root: bool, usage: Usage, model: str | None) -> None:
        self.root, self.own_root, self.usage, self.model = root, own_root, usage, model
        self.attached: list[_Attached] = []  # made current in the call's own context, innermost last
        self.iteration: Any = None
        self.step: Any = None  # the open generate_action or execute_code span
        self.step_kind = ""
        self.iteration_mark = self.step_mark = _totals(usage)
        self.guard_seen = 0  # refusals of ctx.run.state["guard"] already reported
        self.stopped_by: list[str] = []  # middleware that set stop
        self.extracting = False
        self.changed_by: dict[tuple[int, str], list[str]] = {}  # (id(span), field) -> middleware, per open span


class MlflowTap(InstallableTap):
    """Records every call of the instrumented RLMs as an MLflow trace of its loop (see the module docstring).

    Args:
        capture_content: record inputs and outputs (code, outputs, tool arguments and results, the answer);
            ``False`` records their sizes only.
        max_chars: each recorded string is cut to this many characters.
        span_names: other names for the spans this tap names (``{"execute_code": "rlm/execute_code"}``: the names
            of ``rlm_events.hooks``' compatibility mode); the rest keep theirs.

    Traces go where MLflow sends them (``mlflow.set_tracking_uri``, ``mlflow.set_experiment``). Install with
    ``tap.install(events)``: besides the tap on the loop stages it adds ``tool_call`` and ``extract`` middleware
    (outermost, so the tool and extract spans are current while they run) and the observers that name the
    middleware that changed code, results or stopped the loop.

    Raises ``ImportError`` naming the ``mlflow`` extra when MLflow is not installed.
    """

    def __init__(
        self, *, capture_content: bool = True, max_chars: int = 4000, span_names: dict[str, str] | None = None
    ) -> None:
        mlflow = _require_mlflow()
        from mlflow.entities import SpanEvent, SpanType
        from mlflow.tracing.constant import SpanAttributeKey
        from mlflow.tracing.provider import detach_span_from_context, set_span_in_context

        if max_chars < 1:
            raise ValueError(f"MlflowTap(max_chars=...) must be at least 1, got {max_chars!r}")
        self._mlflow: Any = mlflow
        self._SpanEvent: Any = SpanEvent
        self._SpanType: Any = SpanType
        self._Key: Any = SpanAttributeKey
        self._attach, self._detach = set_span_in_context, detach_span_from_context
        self.capture_content = capture_content
        self.max_chars = max_chars
        self._span_names = dict(span_names or {})
        self._lock = threading.Lock()
        self._runs: dict[str, _RunSpans] = {}
        self._witnesses = ChangeWitnesses("MlflowTap")
        # One object each, so uninstall() finds what install() registered.
        self._tool_middleware = self._trace_tool
        self._extract_middleware = self._trace_extract

    # -- registration ---------------------------------------------------------------------------------------

    def registrations(self) -> Registrations:
        return Registrations(
            middleware=[(Stage.TOOL_CALL, self._tool_middleware), (Stage.EXTRACT, self._extract_middleware)],
            taps=[(LOOP_STAGES, self)],
        )

    def install(self, events: Instrumentation) -> MlflowTap:
        """Register on ``events``: the tool and extract middleware outermost, observers between the middleware of
        ``pre_execution``, ``post_execution`` and ``post_iteration`` (every other registration kept, in order),
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

    # -- helpers --------------------------------------------------------------------------------------------

    def _content(self, value: Any) -> Any:
        """``value`` as recorded: strings cut to ``max_chars``; containers element-wise; other objects by repr."""
        if isinstance(value, str):
            return preview(value, self.max_chars)
        if value is None or isinstance(value, (bool, int, float)):
            return value
        if isinstance(value, dict):
            return {str(k): self._content(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._content(v) for v in value]
        return preview(safe_repr(value), self.max_chars)

    def _io(self, value: dict[str, Any]) -> dict[str, Any]:
        if self.capture_content:
            return {k: self._content(v) for k, v in value.items()}
        return {k: len(v) if isinstance(v, (str, list, tuple, dict)) else v for k, v in value.items()}

    def _start(self, name: str, span_type: str, parent: Any, inputs: Any = None, **attributes: Any) -> Any:
        return self._mlflow.start_span_no_context(
            name=self._span_names.get(name, name),
            span_type=span_type,
            parent_span=parent,
            inputs=inputs,
            attributes=attributes,
        )

    def _push(self, state: _RunSpans, span: Any) -> None:
        """Make ``span`` current in this (the call's) context, until :meth:`_pop`."""
        state.attached.append(_Attached(span, self._attach(span)))

    def _pop(self, state: _RunSpans, span: Any) -> None:
        """Undo :meth:`_push` of ``span`` and of everything pushed after it, innermost first."""
        if not any(a.span is span for a in state.attached):
            return
        while state.attached:
            attached = state.attached.pop()
            try:
                self._detach(attached.token)
            except Exception:
                logger.debug("MlflowTap could not detach a span", exc_info=True)
            if attached.span is span:
                return

    def _usage(self, since: tuple[int, int, int], now: tuple[int, int, int]) -> dict[str, int] | None:
        tokens_in, tokens_out, total = (b - a for a, b in zip(since, now, strict=True))
        if not (tokens_in or tokens_out or total):
            return None
        return {"input_tokens": tokens_in, "output_tokens": tokens_out, "total_tokens": total or tokens_in + tokens_out}

    def _set_usage(self, span: Any, usage: dict[str, int] | None) -> None:
        if usage is not None:
            span.set_attribute(self._Key.CHAT_USAGE, usage)

    def _model_attributes(self, state: _RunSpans) -> dict[str, Any]:
        if not state.model:
            return {}
        attributes = {getattr(self._Key, "MODEL", "mlflow.llm.model"): state.model}  # the keys since MLflow 3.5
        provider = _provider(state.model)
        if provider:
            attributes[getattr(self._Key, "MODEL_PROVIDER", "mlflow.llm.provider")] = provider
        return attributes

    # -- the tap --------------------------------------------------------------------------------------------

    def __call__(self, ctx: StageContext) -> None:
        """Open, annotate or close the spans ``ctx`` concerns (the tap entry point)."""
        try:
            if isinstance(ctx, RunStartContext):
                self._run_start(ctx)
                return
            with self._lock:
                state = self._runs.get(ctx.run.id)
            if state is None:  # run_start failed for this call (and was logged): nothing to attach to
                return
            if isinstance(ctx, RunEndContext):
                self._run_end(state, ctx)
            elif isinstance(ctx, PreIterationContext):
                self._pre_iteration(state, ctx)
            elif isinstance(ctx, PreExecutionContext):
                self._pre_execution(state, ctx)
            elif isinstance(ctx, PostExecutionContext):
                self._post_execution(state, ctx)
            elif isinstance(ctx, PostIterationContext):
                self._post_iteration(state, ctx)
            elif isinstance(ctx, ExtractContext) and not state.extracting:
                self._extract_without_middleware(state, ctx)
        except Exception:
            logger.exception("MlflowTap failed at stage %s (run %s); the call goes on", ctx.stage.value, ctx.run.id)

    def _autolog_root(self, module: Any) -> Any:
        """Autolog's ``RLM.forward`` span of this call, if it is the current span."""
        current = self._mlflow.get_current_active_span()
        if current is None or current.name != f"{type(module).__name__}.forward":
            return None
        callbacks = [*(dspy.settings.get("callbacks") or []), *(getattr(module, "callbacks", None) or [])]
        if not any(type(c).__name__ == "MlflowCallback" for c in callbacks):
            return None
        return current

    def _run_start(self, ctx: RunStartContext) -> None:
        module = ctx.run.module
        usage = meter_run(ctx.run)
        action_lm = getattr(getattr(module, "generate_action", None), "lm", None) or dspy.settings.lm
        model = getattr(action_lm, "model", None)
        model = model if isinstance(model, str) else None
        attributes: dict[str, Any] = {"rlm.run.id": ctx.run.id, "rlm.agent": module_label(module)}
        max_iters = iteration_limit(module)
        if max_iters is not None:
            attributes["rlm.max_iters"] = max_iters
        if model:
            attributes["rlm.model"] = model
        root = self._autolog_root(module)
        own = root is None
        if own:
            start_ns = int(ctx.run.started_at.timestamp() * 1_000_000) * 1000
            root = self._mlflow.start_span_no_context(
                name=f"{type(module).__name__}.forward",
                span_type=self._SpanType.AGENT,
                parent_span=self._mlflow.get_current_active_span(),
                inputs=self._io(dict(ctx.input_args)),
                attributes=attributes,
                start_time_ns=start_ns,
            )
        else:
            root.set_span_type(self._SpanType.AGENT)
            root.set_attributes(attributes)
        state = _RunSpans(root, own, usage, model)
        with self._lock:
            self._runs[ctx.run.id] = state
        if own:
            self._push(state, root)

    def _close_step(self, state: _RunSpans, outputs: Any = None, status: str | None = None) -> None:
        step = state.step
        if step is None:
            return
        state.step = None
        state.changed_by.clear()
        self._pop(state, step)
        now = _totals(state.usage)
        self._set_usage(step, self._usage(state.step_mark, now))
        state.step_mark = now
        step.end(outputs=outputs, status=status)

    def _close_iteration(self, state: _RunSpans, outputs: Any = None, status: str | None = None) -> None:
        self._close_step(state, status=status)
        iteration = state.iteration
        if iteration is None:
            return
        state.iteration = None
        self._pop(state, iteration)
        now = _totals(state.usage)
        usage = self._usage(state.iteration_mark, now)
        self._set_usage(iteration, usage)
        state.iteration_mark = now
        iteration.end(outputs=outputs, status=status)

    def _open_step(self, state: _RunSpans, kind: str, span: Any) -> None:
        state.step, state.step_kind, state.step_mark = span, kind, _totals(state.usage)
        self._push(state, span)

    def _pre_iteration(self, state: _RunSpans, ctx: PreIterationContext) -> None:
        self._close_iteration(state)  # an iteration the loop left without its later stages
        index = ctx.iteration or 0
        iteration = self._start(
            f"iteration {index + 1}",
            self._SpanType.CHAIN,
            state.root,
            inputs={"iteration": index + 1, "history_entries": len(ctx.history.entries)},
            **{"rlm.run.id": ctx.run.id, "rlm.iteration": index},
        )
        state.iteration, state.iteration_mark = iteration, _totals(state.usage)
        self._push(state, iteration)
        inputs = {"variables": [v.name for v in ctx.variables]}
        if ctx.extra_vars:
            inputs["extra_vars"] = sorted(ctx.extra_vars)
        action = self._start(
            "generate_action", self._SpanType.LLM, iteration, inputs=inputs, **self._model_attributes(state)
        )
        self._open_step(state, "generate_action", action)

    def _changes(self, ctx: StageContext, stage: Stage) -> Any:
        return self._witnesses.changes(ctx.run.state, stage)

    def _name_changes(self, state: _RunSpans, span: Any, changes: Any, fields: tuple[str, ...]) -> None:
        """Add to ``rlm.<field>.changed_by`` on ``span`` and one ``middleware_changed`` event per middleware."""
        if changes is None or not changes.by:
            return
        for field in fields:
            names = changes.changed_by(field)
            if names:
                known = state.changed_by.setdefault((id(span), field), [])
                known += names
                span.set_attribute(f"rlm.{field}.changed_by", list(known))
        for name, changed in changes.by:
            span.add_event(
                self._SpanEvent("middleware_changed", attributes={"middleware": name, "fields": list(changed)})
            )

    def _pre_execution(self, state: _RunSpans, ctx: PreExecutionContext) -> None:
        changes = self._changes(ctx, Stage.PRE_EXECUTION)
        written = changes.original.get("code") if changes is not None else None
        written = written if isinstance(written, str) else ctx.code
        if state.step_kind == "generate_action":
            self._close_step(state, outputs=self._io({"reasoning": ctx.reasoning, "code": written}))
        parent = state.iteration or state.root
        attributes: dict[str, Any] = {
            "rlm.iteration": ctx.iteration or 0,
            "rlm.code.length": len(ctx.code),
            "rlm.code.lines": len(ctx.code.splitlines()),
            "rlm.skipped": ctx.skipped,
        }
        span = self._start("execute_code", self._SpanType.TOOL, parent, inputs=self._io({"code": ctx.code}))
        span.set_attributes(attributes)
        self._name_changes(state, span, changes, ("code", "result"))
        self._guard_events(state, ctx, span)
        self._open_step(state, "execute_code", span)

    def _guard_events(self, state: _RunSpans, ctx: StageContext, span: Any) -> None:
        refusals = ctx.run.state.get("guard")
        if not isinstance(refusals, list):
            return
        for refusal in refusals[state.guard_seen :]:
            violations = refusal.get("violations", []) if isinstance(refusal, dict) else []
            span.add_event(
                self._SpanEvent(
                    "guard_refusal",
                    attributes={
                        "rlm.iteration": refusal.get("iteration") if isinstance(refusal, dict) else -1,
                        "violations": [str(v) for v in violations],
                        "code": preview(refusal.get("code", "") if isinstance(refusal, dict) else "", self.max_chars),
                    },
                )
            )
        state.guard_seen = len(refusals)

    def _post_execution(self, state: _RunSpans, ctx: PostExecutionContext) -> None:
        span = state.step if state.step_kind == "execute_code" else None
        if span is None:
            return
        output = "" if ctx.result is None else ctx.result if isinstance(ctx.result, str) else safe_repr(ctx.result)
        error = is_error_result(ctx.result)
        span.set_attributes({"rlm.error": error, "rlm.output.length": len(output), "rlm.code.length": len(ctx.code)})
        self._name_changes(state, span, self._changes(ctx, Stage.POST_EXECUTION), ("code", "result"))
        self._close_step(state, outputs=self._io({"output": output}), status="ERROR" if error else None)

    def _post_iteration(self, state: _RunSpans, ctx: PostIterationContext) -> None:
        iteration = state.iteration
        if iteration is None:
            return
        iteration.set_attributes({"rlm.submitted": ctx.prediction is not None, "rlm.stop": ctx.stop})
        changes = self._changes(ctx, Stage.POST_ITERATION)
        self._name_changes(state, iteration, changes, ("prediction",))
        spend = ctx.run.state.get("budget")
        budget_stop = getattr(spend, "stopped_by", None) if ctx.stop else None
        if budget_stop:
            iteration.add_event(
                self._SpanEvent(
                    "budget_stop",
                    attributes={"stopped_by": str(budget_stop), "reason": str(getattr(spend, "reason", "") or "")},
                )
            )
        if ctx.stop and changes is not None:
            stoppers = changes.changed_by("stop")
            if stoppers:
                iteration.set_attribute("rlm.stop.by", stoppers)
                state.stopped_by = stoppers
        elif ctx.stop and not budget_stop:
            state.stopped_by = ["(a middleware)"]
        self._close_iteration(state, outputs={"submitted": ctx.prediction is not None, "stop": ctx.stop})

    def _extract_without_middleware(self, state: _RunSpans, ctx: ExtractContext) -> None:
        """The tap was registered without its extract middleware (``events.tap(tap)``): a span after the fact."""
        self._close_iteration(state)
        span = self._start("extract", self._SpanType.LLM, state.root, **self._model_attributes(state))
        self._set_usage(span, self._usage(state.iteration_mark, _totals(state.usage)))
        state.iteration_mark = _totals(state.usage)
        span.end(outputs=self._prediction_outputs(ctx.prediction))

    def _prediction_outputs(self, prediction: Any) -> Any:
        if prediction is None:
            return None
        try:
            fields = {k: v for k, v in prediction.items() if k != "trajectory"}
        except Exception:
            return self._content(prediction)
        return self._io(fields)

    def _run_end(self, state: _RunSpans, ctx: RunEndContext) -> None:
        with self._lock:
            self._runs.pop(ctx.run.id, None)
        root = state.root
        status = "ERROR" if ctx.error is not None else None
        try:
            self._close_iteration(state, status=status)
            reason = stop_reason(ctx, bool(state.stopped_by))
            usage = state.usage
            attributes: dict[str, Any] = {
                "rlm.stop_reason": reason,
                "rlm.iterations": ctx.iterations,
                "rlm.forced_extract": ctx.forced_extract,
                "rlm.lm_calls": usage.lm_calls,
            }
            attributes.update(cost_attributes(usage))  # no rlm.cost_usd while unknown (see taps._cost)
            spend = ctx.run.state.get("budget")
            if getattr(spend, "stopped_by", None):
                attributes["rlm.budget.stopped_by"] = str(spend.stopped_by)  # type: ignore[union-attr]
                attributes["rlm.budget.reason"] = str(getattr(spend, "reason", "") or "")
            if reason == "middleware" and state.stopped_by:
                attributes["rlm.stop.by"] = state.stopped_by
            refusals = ctx.run.state.get("guard")
            if isinstance(refusals, list) and refusals:
                attributes["rlm.guard.refusals"] = len(refusals)
            root.set_attributes(attributes)
            self._set_usage(root, self._usage((0, 0, 0), _totals(usage)))
            if ctx.error is not None:
                root.record_exception(ctx.error)
                root.set_status("ERROR")
        finally:
            while state.attached:  # whatever is still current, innermost first; the root last
                self._pop(state, state.attached[-1].span)
            if state.own_root:
                outputs = self._prediction_outputs(ctx.prediction) if ctx.error is None else None
                root.end(outputs=outputs, status=status)

    # -- middleware: spans current while the tool or the extractor runs -------------------------------------

    def _trace_tool(self, ctx: ToolCallContext, next: Any) -> ToolCallContext:
        try:
            with self._lock:
                state = self._runs.get(ctx.run.id)
            if state is None:
                return next(ctx)  # type: ignore[no-any-return]
            parent = state.step if state.step_kind == "execute_code" and state.step is not None else None
            parent = parent or state.iteration or state.root
            inputs: dict[str, Any] = {}
            if ctx.args:
                inputs["args"] = list(ctx.args)
            inputs.update(ctx.kwargs)
            span = self._start(
                ctx.name,
                self._SpanType.TOOL,
                parent,
                inputs=self._io(inputs),
                **{"rlm.tool.name": ctx.name, "rlm.iteration": ctx.iteration if ctx.iteration is not None else -1},
            )
            token = self._attach(span)
        except Exception:
            logger.exception("MlflowTap could not start the span of tool %s", ctx.name)
            return next(ctx)  # type: ignore[no-any-return]
        failed: BaseException | None = None
        try:
            ctx = next(ctx)
            return ctx
        except BaseException as exc:
            failed = exc
            raise
        finally:
            try:
                self._detach(token)
                if failed is not None:
                    span.record_exception(failed)
                outputs = None if failed is not None else self._io({"result": ctx.result})["result"]
                span.end(outputs=outputs, status="ERROR" if failed is not None else None)
            except Exception:
                logger.exception("MlflowTap could not end the span of tool %s", ctx.name)

    def _trace_extract(self, ctx: ExtractContext, next: Any) -> ExtractContext:
        try:
            with self._lock:
                state = self._runs.get(ctx.run.id)
            if state is None:
                return next(ctx)  # type: ignore[no-any-return]
            state.extracting = True  # post_iteration closed the last iteration: the extract span is the root's
            mark = _totals(state.usage)
            span = self._start(
                "extract",
                self._SpanType.LLM,
                state.root,
                inputs=self._io({"history_entries": len(ctx.history.entries)}),
                **self._model_attributes(state),
            )
            token = self._attach(span)
        except Exception:
            logger.exception("MlflowTap could not start the extract span")
            return next(ctx)  # type: ignore[no-any-return]
        failed: BaseException | None = None
        try:
            ctx = next(ctx)
            return ctx
        except BaseException as exc:
            failed = exc
            raise
        finally:
            try:
                self._detach(token)
                self._set_usage(span, self._usage(mark, _totals(state.usage)))
                state.iteration_mark = _totals(state.usage)
                if failed is not None:
                    span.record_exception(failed)
                outputs = self._prediction_outputs(ctx.prediction) if failed is None else None
                span.end(outputs=outputs, status="ERROR" if failed is not None else None)
            except Exception:
                logger.exception("MlflowTap could not end the extract span")

    def __repr__(self) -> str:
        return f"MlflowTap(capture_content={self.capture_content!r}, max_chars={self.max_chars!r})"


__all__ = ["STOP_REASONS", "MlflowTap"]
