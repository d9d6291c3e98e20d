"""The recording file: what one recorded call of a `dspy.RLM` holds, its errors, and how it is loaded and saved."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .._json_input import JsonInputError, loads
from ..errors import RLMEventsError
from ..lm_usage import usage_of

FORMAT: Final = "rlm-events-recording/1"
"""The `format` of every recording file this package writes and the only one it reads."""

MAX_RECORDING_BYTES: Final = 1024 * 1024 * 1024
"""The largest recording file [`Recording.load()`][rlm_events.replay.recording.Recording.load] reads by default."""


# -- errors ---------------------------------------------------------------------------------------------------


class RecordingError(RLMEventsError, RuntimeError):
    """A run could not be recorded faithfully, or a file is not a recording; the message says why."""


class ReplayExhaustedError(BaseException):
    """A replay asked for an LM completion or tool result that the recording does not hold: it diverged.

    Derives from `BaseException`, like pytest's outcome exceptions, on purpose: the interpreters running the
    generated code turn `Exception`\\ s raised by tools (`llm_query`) into error text the LM reads, which would
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
    """Everything needed to replay one call of a `dspy.RLM` and to check that the replay matched."""

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
        """Raise [`RecordingError`][rlm_events.replay.recording.RecordingError] listing
        [`problems`][rlm_events.replay.recording.Recording.problems], if there are any."""
        if self.problems:
            listed = "\n".join(f"  - {p}" for p in self.problems)
            raise RecordingError(f"run {self.run_id} cannot be replayed:\n{listed}")

    def save(self, path: str | Path) -> Path:
        """Write this recording as JSON (UTF-8) to `path`; return the path."""
        target = Path(path)
        target.write_text(self.model_dump_json(indent=1), encoding="utf-8")
        return target

    @classmethod
    def load(cls, path: str | Path, *, max_bytes: int = MAX_RECORDING_BYTES) -> Recording:
        """Read a recording file; [`RecordingError`][rlm_events.replay.recording.RecordingError] if it is not one
        this version can replay, whatever the file holds (binary, not UTF-8, nested deeper than
        200 levels, larger than `max_bytes`): the message names the line when
        the problem has one. `OSError` if the file cannot be read."""
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise RecordingError(f"{path} is larger than {max_bytes} bytes: not a recording this loader reads")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            raise RecordingError(f"{path}, line {line}: not UTF-8 (byte {exc.start}): not a recording") from None
        try:
            raw = loads(text)
        except JsonInputError as exc:
            raise RecordingError(f"{path}, {exc}") from None
        found = raw.get("format") if isinstance(raw, dict) else None
        if found != FORMAT:
            raise RecordingError(f"{path} is not an rlm-events recording (format {found!r}, expected {FORMAT!r})")
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise RecordingError(f"{path} is a damaged recording: {exc}") from None

    def usage(self) -> tuple[int, int, float | None]:
        """`(input_tokens, output_tokens, cost)` of the recorded LM calls, read by the one usage parser
        ([`rlm_events.lm_usage`][rlm_events.lm_usage]) that Budget, JsonlTrace and the spans use."""
        return usage_of({"usage": call.usage, "cost": call.cost} for call in self.lm_calls)
