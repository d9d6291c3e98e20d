"""Record a real ``dspy.RLM`` call to a JSON file; replay it later without the LM (or an API key).

>>> recorder = Recorder().install(events)  # doctest: +SKIP
>>> with dspy.context(lm=real_lm):  # doctest: +SKIP
...     rlm(question="...")
>>> recorder.save("run.json")  # doctest: +SKIP
>>> lm = ReplayLM.from_file("run.json")  # in a test: same code per iteration, same outputs, same answer
>>> with dspy.context(lm=lm):  # doctest: +SKIP
...     fresh_rlm(**lm.recording.input_args)

What is recorded
----------------
* **LM completions** (:class:`RecordedLMCall`), in the order DSPy made them: the action completions of each
  iteration (with the iteration number ``N`` their prompt showed as ``iteration: N/M``), the extract fallback's,
  and every other LM call made during the run (``llm_query`` from the code, an LM called by a tool or middleware),
  with their ``usage`` and ``cost``.
* **Tool results** (:class:`RecordedToolCall`): name, arguments and result (or error) of every tool call, seen by
  a ``tool_call`` middleware.
* The inputs, the final trajectory and outputs (or the error), to compare a replay with.

How the LM side is recorded, and why that way
---------------------------------------------
The :class:`Recorder` reads the completions DSPy itself logs: every LM call appends an entry (``messages``,
``outputs``, ``usage``, ``cost``) to the LM's ``history`` list. Nothing wraps or replaces your LM, so you record
with the very LM object (and adapter, cache and callbacks) you use in production. At each stage event of a run
the :class:`LMHistoryWatch` takes the entries appended since the run's previous event: an entry whose prompt
carries ``iteration: N/M`` is an action completion, one that arrived during the ``extract`` stage is an extract
completion, anything else is an *other* call (``kind="sub"``).

Limits, checked rather than assumed (a recording that fails a check lists it in :attr:`Recording.problems` and
refuses to be saved or replayed):

* DSPy must keep LM history (``dspy.settings.disable_history`` off, ``max_history_size`` > 0).
* A history window is only attributed to a run when no other run watched by the same recorder used the same LM
  instance meanwhile; give concurrent runs their own LM (``lm.copy()``) to record them at the same time. Calls
  made on the same LM instance by code the recorder does not watch cannot be detected; action completions are
  cross-checked against the iteration number in their prompt.

How replay serves completions
-----------------------------
:class:`ReplayLM` is a ``dspy.BaseLM`` (the legacy ``forward``/``aforward`` interface every supported DSPy
accepts, like :class:`rlm_events.testing.ScriptedLM`). For each request it serves the first unserved recorded
completion, chosen in this order: (1) a recorded call with exactly the same messages; (2) for an action prompt,
the next completion recorded for the same iteration number (prompts legitimately differ when your middleware
changes what the LM sees); (3) for an extract prompt, the next extract completion; (4) the next other call.
Nothing left raises :class:`ReplayExhaustedError` naming the 0-based call index. One ``ReplayLM`` replays one
call; :meth:`ReplayLM.reset` rewinds it.

:class:`ReplayTools` is a ``tool_call`` middleware that serves the recorded tool results instead of calling the
tools, so ``llm_query`` answers replay even without the sub-LM. Install it after your own ``tool_call``
middleware (innermost), where the real call would happen; likewise install the :class:`Recorder` last to record
what the real tools returned.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import logging
import re
import threading
from collections import deque
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Final, Literal

import dspy
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .context import (
    ExtractContext,
    PostIterationContext,
    RunEndContext,
    RunStartContext,
    StageContext,
    ToolCallContext,
)
from .errors import RLMEventsError
from .installable import Installable, Registrations
from .lm_history import LMHistoryWatch, lms_of, module_label
from .lm_usage import usage_of
from .runtime import iteration_limit
from .stages import Stage
from .taps._tool_tap import ToolAwareTap

# ReplayLM implements BaseLM.forward(), the interface every supported DSPy release (3.1 → 3.4) accepts; DSPy 3.4
# calls it legacy (a DeprecationWarning per call, hidden by Python's default filters): the user's filters are theirs.

logger = logging.getLogger("rlm_events.replay")

FORMAT: Final = "rlm-events-recording/1"
"""The ``format`` of every recording file this module writes and the only one it reads."""

_ITERATION = re.compile(r"(?:\[\[ ## iteration ## \]\]|<iteration>|\"iteration\"\s*:)\s*\"?\s*(\d+)\s*/\s*(\d+)")


# -- errors ---------------------------------------------------------------------------------------------------


class RecordingError(RLMEventsError, RuntimeError):
    """A run could not be recorded faithfully, or a file is not a recording; the message says why."""


class ReplayExhaustedError(BaseException):
    """A replay asked for an LM completion or tool result that the recording does not hold: it diverged.

    Derives from ``BaseException``, like pytest's outcome exceptions, on purpose: the interpreters running the
    generated code turn ``Exception``\\ s raised by tools (``llm_query``) into error text the LM reads, which would
    let a diverged replay carry on silently. This one fails the call.
    """

    def __init__(self, message: str, *, call_index: int) -> None:
        super().__init__(message)
        self.call_index = call_index
        """0-based index of the failed request among the requests the replayer served (LM calls or tool calls)."""


# -- the recording file ---------------------------------------------------------------------------------------

LMCallKind = Literal["action", "extract", "sub"]


class RecordedLMCall(BaseModel):
    """One LM completion of the recorded run."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="Order among the run's LM calls, from 0.")
    kind: LMCallKind = Field(description="action, extract, or sub (any other call: llm_query, a tool, middleware).")
    prompt_iteration: int | None = Field(description="N of the action prompt's 'iteration: N/M' (1-based).")
    iteration: int | None = Field(description="0-based loop iteration during which the call was made.")
    request_sha256: str = Field(description="Fingerprint of the request messages (role and content).")
    prompt: str | None = Field(
        default=None, description="The request text for sub calls; for all with include_prompts."
    )
    outputs: list[Any] = Field(description="What the LM returned, as DSPy logged it (text, or dicts with 'text').")
    model: str | None = None
    usage: dict[str, Any] = Field(default_factory=dict)
    cost: float | None = None


class RecordedToolCall(BaseModel):
    """One tool call the run's code made, with what it returned or raised."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="Order in which the calls started, from 0.")
    iteration: int | None
    name: str
    args: list[Any]
    kwargs: dict[str, Any]
    result: Any = None
    error_type: str | None = Field(default=None, description="Class name of the exception the call raised, if it did.")
    error_message: str | None = None
    error_args: list[Any] | None = Field(default=None, description="The exception's args, to raise it again as it was.")
    exact: bool = Field(default=True, description="False when the result was not JSON and only its repr is stored.")


class Recording(BaseModel):
    """Everything needed to replay one call of a ``dspy.RLM`` and to check that the replay matched."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["rlm-events-recording/1"] = FORMAT
    run_id: str
    module: str = Field(description="The RLM class and signature, e.g. 'RLM(text -> answer)'.")
    max_iters: int | None = None
    started_at: datetime
    duration_s: float = 0.0
    input_args: dict[str, Any] = Field(default_factory=dict)
    lm_calls: list[RecordedLMCall] = Field(default_factory=list)
    tool_calls: list[RecordedToolCall] = Field(default_factory=list)
    trajectory: list[dict[str, Any]] = Field(default_factory=list, description="reasoning/code/output per step.")
    outputs: dict[str, Any] | None = Field(
        default=None, description="The prediction's output fields; None if it failed."
    )
    error: str | None = Field(default=None, description="'Type: message' when the call raised.")
    iterations: int = 0
    forced_extract: bool = False
    problems: list[str] = Field(default_factory=list, description="Why this recording cannot be replayed, if so.")

    def check(self) -> None:
        """Raise :class:`RecordingError` listing :attr:`problems`, if there are any."""
        if self.problems:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            raise RecordingError(f"run {self.run_id} cannot be replayed:\n{listed}")

    def save(self, path: str | Path) -> Path:
        """Write this recording as JSON (UTF-8) to ``path``; return the path."""
        target = Path(path)
        target.write_text(self.model_dump_json(indent=1), encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | Path) -> Recording:
        """Read a recording file; :class:`RecordingError` if it is not one this version can replay."""
        text = Path(path).read_text(encoding="utf-8")
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordingError(f"{path} is not JSON: {exc}") from None
        found = raw.get("format") if isinstance(raw, dict) else None
        if found != FORMAT:
            raise RecordingError(f"{path} is not an rlm-events recording (format {found!r}, expected {FORMAT!r})")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise RecordingError(f"{path} is a damaged recording: {exc}") from None

    def usage(self) -> tuple[int, int, float | None]:
        """``(input_tokens, output_tokens, cost)`` of the recorded LM calls, read by the one usage parser
        (:mod:`rlm_events.lm_usage`) that Budget, JsonlTrace and the spans use."""
        return usage_of({"usage": call.usage, "cost": call.cost} for call in self.lm_calls)


_ANY: TypeAdapter[Any] = TypeAdapter(Any)


def _jsonable(value: Any) -> tuple[Any, bool]:
    """``value`` as JSON-compatible data, and whether that is exact (False: only a repr could be kept)."""
    try:
        json.dumps(value)
        return value, True
    except (TypeError, ValueError):
        pass
    try:
        return _ANY.dump_python(value, mode="json"), True  # pydantic models, dataclasses, datetimes, sets, …
    except Exception:
        try:
            return {"__repr__": repr(value)}, False
        except Exception:
            return {"__repr__": f"<unrepresentable {type(value).__name__}>"}, False


def _messages(prompt: Any, messages: Any) -> list[dict[str, Any]]:
    """The request as a message list, the way DSPy renders a bare prompt."""
    if messages:
        return [m if isinstance(m, dict) else {"content": m} for m in messages]
    return [{"role": "user", "content": prompt if prompt is not None else ""}]


def _request_sha256(messages: list[dict[str, Any]]) -> str:
    canonical = [[m.get("role"), m.get("content")] for m in messages]
    data = json.dumps(canonical, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role", "user") == "user":
            return _text(message)
    return _text(messages[-1]) if messages else ""


def _prompt_iteration(messages: list[dict[str, Any]]) -> int | None:
    """The ``N`` of ``iteration: N/M`` in an action prompt (the last occurrence: earlier ones are history)."""
    found = _ITERATION.findall(_last_user_text(messages))
    return int(found[-1][0]) if found else None


def _looks_like_extract(messages: list[dict[str, Any]]) -> bool:
    return any("repl_history" in _text(m) for m in messages)


def _message(error: BaseException) -> str:
    """``str(error)``, which never raises here."""
    try:
        return str(error)
    except Exception:
        return "<unprintable message>"


def _error_text(error: BaseException) -> str:
    message = _message(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


# -- recording ------------------------------------------------------------------------------------------------


class _Pending:
    """One run being recorded."""

    def __init__(self, ctx: RunStartContext) -> None:
        module = ctx.run.module
        inputs, exact = _jsonable(dict(ctx.input_args))
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
            messages = _messages(entry.get("prompt"), entry.get("messages"))
            prompt_iteration = _prompt_iteration(messages)
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
            outputs, exact = _jsonable(list(entry.get("outputs") or []))
            if not exact:
                self.problem(f"LM call {len(self.recording.lm_calls)}: its outputs are not JSON")
            usage, _ = _jsonable(dict(entry.get("usage") or {}))
            cost = entry.get("cost")
            with self.lock:
                self.recording.lm_calls.append(
                    RecordedLMCall(
                        index=len(self.recording.lm_calls),
                        kind=kind,
                        prompt_iteration=prompt_iteration,
                        iteration=None if stage is Stage.EXTRACT else self.iteration,
                        request_sha256=_request_sha256(messages),
                        prompt=_last_user_text(messages) if kind == "sub" or include_prompts else None,
                        outputs=outputs,
                        model=str(entry.get("model")) if entry.get("model") is not None else None,
                        usage=usage if isinstance(usage, dict) else {},
                        cost=float(cost) if isinstance(cost, (int, float)) else None,
                    )
                )

    def start_tool_call(self, ctx: ToolCallContext) -> RecordedToolCall:
        args, args_exact = _jsonable(list(ctx.args))
        kwargs, kwargs_exact = _jsonable(dict(ctx.kwargs))
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

    def finish(self, ctx: RunEndContext) -> Recording:
        recording = self.recording
        recording.duration_s = ctx.duration_s
        recording.iterations = ctx.iterations
        recording.forced_extract = ctx.forced_extract
        if ctx.error is not None:
            recording.error = _error_text(ctx.error)
        prediction = ctx.prediction
        if prediction is not None:
            try:
                fields = dict(prediction.items())
            except Exception:
                fields = {}
            trajectory = fields.pop("trajectory", None)
            fields.pop("final_reasoning", None)
            outputs, exact = _jsonable(fields)
            recording.outputs = outputs if isinstance(outputs, dict) else {"value": outputs}
            if not exact:
                self.problem("the outputs are not JSON; only their repr is recorded")
            if isinstance(trajectory, list):
                self.history = trajectory
        steps, _ = _jsonable(self.history)
        recording.trajectory = [s for s in steps if isinstance(s, dict)] if isinstance(steps, list) else []
        if recording.iterations and not any(c.kind == "action" for c in recording.lm_calls) and not self.overlapped:
            self.problem(
                "no LM completion was found in the LMs' history: DSPy keeps none "
                "(dspy.settings.disable_history is set or max_history_size is 0), "
                "or the LM is not a dspy.BaseLM; the Recorder reads completions from lm.history"
            )
        return recording


class Recorder(ToolAwareTap):
    """Records calls of instrumented RLMs (see the module docstring for what and how).

    A tap on the loop stages plus a ``tool_call`` middleware (``recorder.install(events)``); neither changes
    anything, and a failure inside the recorder is logged and listed in the recording's
    :attr:`~Recording.problems`, never raised into the run. Install it after your own ``tool_call`` middleware to
    record what the real tools returned.

    Args:
        include_prompts: also store each LM call's request text (large: every action prompt repeats the REPL
            history). Sub calls always keep theirs.
        keep: how many finished recordings to keep in memory (the oldest are dropped).
    """

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
        """The finished recording of ``run_id`` (the latest if ``None``); ``LookupError`` if there is none."""
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
        """Write the recording of ``run_id`` (the latest if ``None``) to ``path``; return the path.

        Raises :class:`RecordingError` listing the problems when the run could not be recorded faithfully.
        """
        recording = self.recording(run_id)
        recording.check()
        return recording.save(path)

    # -- the tap --------------------------------------------------------------------------------------------

    def __call__(self, ctx: StageContext) -> None:
        """Record ``ctx`` (the tap entry point)."""
        if isinstance(ctx, RunStartContext):
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
            pending.problem(f"the recorder failed at stage {ctx.stage.value}: {_error_text(exc)}")
        finally:
            if isinstance(ctx, RunEndContext):
                self._finish(pending, ctx)

    def _observe(self, pending: _Pending, ctx: StageContext) -> None:
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
        elif isinstance(ctx, (PostIterationContext, ExtractContext)):
            # The history so far: the trajectory of a call that fails before it returns a prediction.
            pending.history = [entry.model_dump() for entry in ctx.history]

    def _finish(self, pending: _Pending, ctx: RunEndContext) -> None:
        try:
            recording = pending.finish(ctx)
        except Exception as exc:
            logger.exception("Recorder failed to finish run %s", ctx.run.id)
            pending.problem(f"the recorder failed at run_end: {_error_text(exc)}")
            recording = pending.recording
        with self._lock:
            self._pending.pop(ctx.run.id, None)
            self._done.append(recording)

    # -- the tool_call middleware ---------------------------------------------------------------------------

    def _record_tool(self, ctx: ToolCallContext, next: Any) -> ToolCallContext:
        with self._lock:
            pending = self._pending.get(ctx.run.id)
        call: RecordedToolCall | None = None
        if pending is not None:
            try:
                call = pending.start_tool_call(ctx)
            except Exception as exc:
                logger.exception("Recorder failed to record a call of tool %s", ctx.name)
                pending.problem(f"the recorder failed on a call of tool {ctx.name}: {_error_text(exc)}")
        try:
            ctx = next(ctx)
        except Exception as exc:
            if call is not None:
                call.error_type = type(exc).__name__
                call.error_message = _message(exc)
                args, exact = _jsonable(list(exc.args))
                call.error_args = args if exact and isinstance(args, list) else None
            raise
        if call is not None and pending is not None:
            result, exact = _jsonable(ctx.result)
            call.result, call.exact = result, call.exact and exact
        return ctx


# -- replay ---------------------------------------------------------------------------------------------------


def _response(call: RecordedLMCall, model: str) -> Any:
    """An OpenAI-shaped response carrying the recorded outputs, usage and cost (what ``forward`` returns)."""
    choices = []
    for i, output in enumerate(call.outputs):
        fields = output if isinstance(output, dict) else {"text": output}
        message = SimpleNamespace(
            content=fields.get("text"),
            role="assistant",
            tool_calls=fields.get("tool_calls"),
            reasoning_content=fields.get("reasoning_content"),
        )
        choices.append(SimpleNamespace(message=message, finish_reason="stop", index=i))
    return SimpleNamespace(
        choices=choices,
        usage=dict(call.usage),
        model=call.model or model,
        _hidden_params={"response_cost": call.cost},
    )


class ReplayLM(dspy.BaseLM):
    """A ``dspy.BaseLM`` that answers with the completions of a :class:`Recording`, in the order described in the
    module docstring; it reports the recorded ``usage`` and ``cost``, so budgets behave as in the recorded run.

    Thread-safe. ``served`` lists, per request, the index of the recorded call it got.
    """

    def __init__(self, recording: Recording, *, model: str | None = None) -> None:
        recording.check()
        recorded_model = next((c.model for c in recording.lm_calls if c.model), None)
        super().__init__(
            model=model or recorded_model or "replay", model_type="chat", temperature=0.0, max_tokens=1000, cache=False
        )
        self.recording = recording
        self._lock = threading.Lock()
        self.served: list[int] = []
        self._used: set[int] = set()

    @classmethod
    def from_file(cls, path: str | Path, *, model: str | None = None) -> ReplayLM:
        """A ReplayLM for the recording at ``path`` (see :meth:`Recording.load`)."""
        return cls(Recording.load(path), model=model)

    def reset(self) -> None:
        """Serve the recording again from the start."""
        with self._lock:
            self.served.clear()
            self._used.clear()

    def remaining(self) -> list[RecordedLMCall]:
        """The recorded completions not served yet."""
        with self._lock:
            return [c for c in self.recording.lm_calls if c.index not in self._used]

    def _pick(self, messages: list[dict[str, Any]]) -> tuple[RecordedLMCall | None, str]:
        unused = [c for c in self.recording.lm_calls if c.index not in self._used]
        fingerprint = _request_sha256(messages)
        same = next((c for c in unused if c.request_sha256 == fingerprint), None)
        if same is not None:
            return same, "an identical request"
        iteration = _prompt_iteration(messages)
        if iteration is not None:
            what = f"an action prompt for iteration {iteration}"
            return next((c for c in unused if c.kind == "action" and c.prompt_iteration == iteration), None), what
        if _looks_like_extract(messages):
            return next((c for c in unused if c.kind == "extract"), None), "an extract prompt"
        return next((c for c in unused if c.kind == "sub"), None), "a sub-LLM / other prompt"

    def _exhausted(self, index: int, what: str) -> ReplayExhaustedError:
        calls = self.recording.lm_calls
        actions = sorted({c.prompt_iteration for c in calls if c.kind == "action" and c.prompt_iteration})
        extract, sub = (sum(c.kind == kind for c in calls) for kind in ("extract", "sub"))
        counts = f"action completions for iterations {actions or 'none'}, {extract} extract and {sub} other"
        return ReplayExhaustedError(
            f"ReplayLM has no recorded completion left for LM call {index} (0-based; {what}). "
            f"The recording of run {self.recording.run_id} holds {counts}; {len(self._used)} of its "
            f"{len(calls)} completions were served. The replay diverged from the recorded run.",
            call_index=index,
        )

    def forward(self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any) -> Any:
        request = _messages(prompt, messages)
        with self._lock:
            index = len(self.served)
            call, what = self._pick(request)
            if call is None:
                self.served.append(-1)
                raise self._exhausted(index, what)
            self._used.add(call.index)
            self.served.append(call.index)
        return _response(call, self.model)

    async def aforward(
        self, prompt: str | None = None, messages: list[dict[str, Any]] | None = None, **kwargs: Any
    ) -> Any:
        return self.forward(prompt=prompt, messages=messages, **kwargs)


def _canonical(name: str, args: Any, kwargs: Any) -> str:
    return json.dumps([name, args, kwargs], sort_keys=True, default=repr, ensure_ascii=False)


_ReplayedErrors: dict[str, type[Exception]] = {}


def _replayed_error(call: RecordedToolCall) -> Exception:
    """An exception with the recorded class name and args (built-in classes are reused), as the code saw it."""
    name = call.error_type or "Exception"
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        cls = builtin
    else:
        cls = _ReplayedErrors.setdefault(name, type(name, (Exception,), {"__module__": __name__}))
    if call.error_args is not None:
        with contextlib.suppress(Exception):  # a class whose constructor wants other arguments
            return cls(*call.error_args)
    return cls(call.error_message or "")


class ReplayTools(Installable):
    """A ``tool_call`` middleware that serves a recording's tool results instead of calling the tools.

    A call gets the next unserved recorded result of a call with the same name and the same (JSON) arguments;
    a recorded error is raised again (same class name and message). A call the recording does not hold raises
    :class:`ReplayExhaustedError` (``on_missing="error"``, the default) or goes to the real tool
    (``on_missing="call"``). Install it after your own ``tool_call`` middleware. Thread-safe.
    """

    def __init__(self, recording: Recording, *, on_missing: Literal["error", "call"] = "error") -> None:
        if on_missing not in ("error", "call"):
            raise ValueError(f"on_missing must be 'error' or 'call', got {on_missing!r}")
        recording.check()
        self.recording = recording
        self.on_missing = on_missing
        self._lock = threading.Lock()
        self._queues: dict[str, deque[RecordedToolCall]] = {}
        self.served = 0
        for call in recording.tool_calls:
            self._queues.setdefault(_canonical(call.name, call.args, call.kwargs), deque()).append(call)
        self._middleware = self._serve  # one object, so uninstall() can find it

    def registrations(self) -> Registrations:
        """The replaying middleware, innermost so far in the ``tool_call`` chain: install it last."""
        return Registrations(middleware=[(Stage.TOOL_CALL, self._middleware)])

    def remaining(self) -> list[RecordedToolCall]:
        """The recorded tool calls not served yet, in recorded order."""
        with self._lock:
            return sorted((c for q in self._queues.values() for c in q), key=lambda c: c.index)

    def _serve(self, ctx: ToolCallContext, next: Any) -> ToolCallContext:
        args, _ = _jsonable(list(ctx.args))
        kwargs, _ = _jsonable(dict(ctx.kwargs))
        with self._lock:
            index = self.served
            self.served += 1
            queue = self._queues.get(_canonical(ctx.name, args, kwargs))
            recorded = queue.popleft() if queue else None
        if recorded is None:
            if self.on_missing == "call":
                return next(ctx)
            where = "" if ctx.iteration is None else f" in iteration {ctx.iteration + 1}"
            shown = _canonical(ctx.name, args, kwargs)
            raise ReplayExhaustedError(
                f"ReplayTools has no recorded result for tool call {index} (0-based){where}: {shown[:200]}. "
                f"The recording of run {self.recording.run_id} holds {len(self.recording.tool_calls)} tool calls; "
                "the replay diverged from the recorded run (pass on_missing='call' to call the real tool instead).",
                call_index=index,
            )
        if recorded.error_type is not None:
            raise _replayed_error(recorded)
        if not recorded.exact:
            raise ReplayExhaustedError(
                f"tool call {index} ({ctx.name}): the recorded result was not JSON and cannot be replayed",
                call_index=index,
            )
        ctx.result = recorded.result
        return ctx


__all__ = [
    "FORMAT",
    "LMHistoryWatch",
    "RecordedLMCall",
    "RecordedToolCall",
    "Recorder",
    "Recording",
    "RecordingError",
    "ReplayExhaustedError",
    "ReplayLM",
    "ReplayTools",
    "lms_of",
    "module_label",
    "usage_of",
]
