"""The [`Recorder`][rlm_events.replay.recorder.Recorder]: records calls of instrumented RLMs (LM completions from
`lm.history`, tool results)."""

from __future__ import annotations

import logging
import threading
from collections import deque
from pathlib import Path
from typing import Any

from .. import context
from ..lm_history import LMHistoryWatch, lms_of, module_label
from ..runtime import iteration_limit
from ..stages import Stage
from ..taps._text import error_message, error_text
from ..taps._tool_tap import ToolAwareTap
from ._json import jsonable
from ._requests import iteration_in_prompt, last_user_text, request_messages, request_sha256
from .recording import LMCallKind, RecordedLMCall, RecordedToolCall, Recording

logger = logging.getLogger("rlm_events.replay")


# -- recording ------------------------------------------------------------------------------------------------


class _Pending:
    """One run being recorded."""

    def __init__(self, ctx: context.RunStartContext) -> None:
        module = ctx.run.module
        inputs, exact = jsonable(dict(ctx.input_args))
        self.lock = threading.Lock()
        self.recording = Recording(
            run_id=ctx.run.id,
            module=module_label(module),
            max_iters=iteration_limit(module),
            started_at=ctx.run.started_at,
            input_args=inputs if isinstance(inputs, dict) else {},
        )
        if not exact:
            self.problem("the inputs are not JSON; only their repr is recorded")
        self.iteration: int | None = None
        self.history: list[dict[str, Any]] = []
        self.overlapped = False

    def problem(self, text: str) -> None:
        with self.lock:
            if text not in self.recording.problems:
                self.recording.problems.append(text)

    def add_lm_calls(self, entries: list[dict[str, Any]], stage: Stage, include_prompts: bool) -> None:
        for entry in entries:
            messages = request_messages(entry.get("prompt"), entry.get("messages"))
            prompt_iteration = iteration_in_prompt(messages)
            if prompt_iteration is not None:
                kind: LMCallKind = "action"
                expected = None if self.iteration is None else self.iteration + 1
                if stage is Stage.PRE_EXECUTION and prompt_iteration != expected:
                    self.problem(
                        f"an action completion for prompt iteration {prompt_iteration} arrived during iteration "
                        f"{expected}: another caller used the same LM instance at the same time"
                    )
            else:
                kind = "extract" if stage is Stage.EXTRACT else "sub"
            outputs, exact = jsonable(list(entry.get("outputs") or []))
            if not exact:
                self.problem(f"LM call {len(self.recording.lm_calls)}: its outputs are not JSON")
            usage, _ = jsonable(dict(entry.get("usage") or {}))
            cost = entry.get("cost")
            with self.lock:
                self.recording.lm_calls.append(
                    RecordedLMCall(
                        index=len(self.recording.lm_calls),
                        kind=kind,
                        prompt_iteration=prompt_iteration,
                        iteration=None if stage is Stage.EXTRACT else self.iteration,
                        request_sha256=request_sha256(messages),
                        prompt=last_user_text(messages) if kind == "sub" or include_prompts else None,
                        outputs=outputs,
                        model=str(entry.get("model")) if entry.get("model") is not None else None,
                        usage=usage if isinstance(usage, dict) else {},
                        cost=float(cost) if isinstance(cost, (int, float)) else None,
                    )
                )

    def start_tool_call(self, ctx: context.ToolCallContext) -> RecordedToolCall:
        args, args_exact = jsonable(list(ctx.args))
        kwargs, kwargs_exact = jsonable(dict(ctx.kwargs))
        with self.lock:
            call = RecordedToolCall(
                index=len(self.recording.tool_calls),
                iteration=ctx.iteration,
                name=ctx.name,
                args=args if isinstance(args, list) else [args],
                kwargs=kwargs if isinstance(kwargs, dict) else {},
                exact=args_exact and kwargs_exact,
            )
            self.recording.tool_calls.append(call)
        return call

    def finish(self, ctx: context.RunEndContext) -> Recording:
        recording = self.recording
        recording.duration_s = ctx.duration_s
        recording.iterations = ctx.iterations
        recording.forced_extract = ctx.forced_extract
        if ctx.error is not None:
            recording.error = error_text(ctx.error)
        prediction = ctx.prediction
        if prediction is not None:
            try:
                fields = dict(prediction.items())
            except Exception:
                fields = {}
            trajectory = fields.pop("trajectory", None)
            fields.pop("final_reasoning", None)
            outputs, exact = jsonable(fields)
            recording.outputs = outputs if isinstance(outputs, dict) else {"value": outputs}
            if not exact:
                self.problem("the outputs are not JSON; only their repr is recorded")
            if isinstance(trajectory, list):
                self.history = trajectory
        steps, _ = jsonable(self.history)
        recording.trajectory = [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
        if recording.iterations and not any(c.kind == "action" for c in recording.lm_calls) and not self.overlapped:
            self.problem(
                "no LM completion was found in the LMs' history: DSPy keeps none "
                "(dspy.settings.disable_history is set or max_history_size is 0), "
                "or the LM is not a dspy.BaseLM; the Recorder reads completions from lm.history"
            )
        return recording


class Recorder(ToolAwareTap):
    """Records calls of instrumented RLMs (see the package docstring for what and how).

    A tap on the loop stages plus a `tool_call` middleware (`recorder.install(events)`); neither changes
    anything, and a failure inside the recorder is logged and listed in the recording's
    [`problems`][rlm_events.replay.recording.Recording.problems], never raised into the run. Install it after your own
    `tool_call` middleware to
    record what the real tools returned.

    Args:
        include_prompts: also store each LM call's request text (large: every action prompt repeats the REPL
            history). Sub calls always keep theirs.
        keep: how many finished recordings to keep in memory (the oldest are dropped).
    """

    INLINE = True  # records each event as it happens (in memory, no I/O): a call's recording is whole when it returns

    def __init__(self, *, include_prompts: bool = False, keep: int = 100) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.include_prompts = include_prompts
        self._watch = LMHistoryWatch()
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._done: deque[Recording] = deque(maxlen=keep)
        self._tool_middleware = self._record_tool  # one object, so uninstall() can find it

    # -- results --------------------------------------------------------------------------------------------

    @property
    def recordings(self) -> tuple[Recording, ...]:
        """The finished recordings, oldest first."""
        with self._lock:
            return tuple(self._done)

    def recording(self, run_id: str | None = None) -> Recording:
        """The finished recording of `run_id` (the latest if `None`); `LookupError` if there is none."""
        with self._lock:
            done = list(self._done)
        if not done:
            raise LookupError("the Recorder has not finished recording any call yet")
        if run_id is None:
            return done[-1]
        for recording in done:
            if recording.run_id == run_id:
                return recording
        raise LookupError(f"no finished recording of run {run_id!r}; known: {[r.run_id for r in done]}")

    def save(self, path: str | Path, run_id: str | None = None) -> Path:
        """Write the recording of `run_id` (the latest if `None`) to `path`; return the path.

        Raises [`RecordingError`][rlm_events.replay.recording.RecordingError] listing the problems when the run could
        not be recorded faithfully.
        """
        recording = self.recording(run_id)
        recording.check()
        return recording.save(path)

    # -- the tap --------------------------------------------------------------------------------------------

    def __call__(self, ctx: context.StageContext) -> None:
        """Record `ctx` (the tap entry point)."""
        if isinstance(ctx, context.RunStartContext):
            with self._lock:
                self._pending[ctx.run.id] = _Pending(ctx)
            self._watch.start(ctx.run.id, lms_of(ctx.run.module))
            return
        with self._lock:
            pending = self._pending.get(ctx.run.id)
        if pending is None:  # run_start failed for this call (and was logged): nothing to record into
            return
        try:
            self._observe(pending, ctx)
        except Exception as exc:
            logger.exception("Recorder failed at stage %s of run %s", ctx.stage.value, ctx.run.id)
            pending.problem(f"the recorder failed at stage {ctx.stage.value}: {error_text(exc)}")
        finally:
            if isinstance(ctx, context.RunEndContext):
                self._finish(pending, ctx)

    def _observe(self, pending: _Pending, ctx: context.StageContext) -> None:
        entries = self._watch.end(ctx.run.id) if ctx.stage is Stage.RUN_END else self._watch.take(ctx.run.id)
        if entries is None:
            pending.overlapped = True
            pending.problem(
                "another recorded call used the same LM instance at the same time, so their completions cannot be "
                "told apart in lm.history; record one call at a time or give each its own LM (lm.copy())"
            )
        else:
            pending.add_lm_calls(entries, ctx.stage, self.include_prompts)
        if ctx.stage is Stage.PRE_ITERATION:
            pending.iteration = ctx.iteration
        elif isinstance(ctx, (context.PostIterationContext, context.ExtractContext)):
            # The history so far: the trajectory of a call that fails before it returns a prediction.
            pending.history = [entry.model_dump() for entry in ctx.history]

    def _finish(self, pending: _Pending, ctx: context.RunEndContext) -> None:
        try:
            recording = pending.finish(ctx)
        except Exception as exc:
            logger.exception("Recorder failed to finish run %s", ctx.run.id)
            pending.problem(f"the recorder failed at run_end: {error_text(exc)}")
            recording = pending.recording
        with self._lock:
            self._pending.pop(ctx.run.id, None)
            self._done.append(recording)

    # -- the tool_call middleware ---------------------------------------------------------------------------

    def _record_tool(self, ctx: context.ToolCallContext, next: Any) -> context.ToolCallContext:
        with self._lock:
            pending = self._pending.get(ctx.run.id)
        call: RecordedToolCall | None = None
        if pending is not None:
            try:
                call = pending.start_tool_call(ctx)
            except Exception as exc:
                logger.exception("Recorder failed to record a call of tool %s", ctx.name)
                pending.problem(f"the recorder failed on a call of tool {ctx.name}: {error_text(exc)}")
        try:
            ctx = next(ctx)
        except Exception as exc:
            if call is not None:
                call.error_type = type(exc).__name__
                call.error_message = error_message(exc)
                args, exact = jsonable(list(exc.args))
                call.error_args = args if exact and isinstance(args, list) else None
            raise
        if call is not None and pending is not None:
            result, exact = jsonable(ctx.result)
            call.result, call.exact = result, call.exact and exact
        return ctx
