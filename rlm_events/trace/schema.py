"""The JSONL trace format: one JSON object per line, one line per stage event of an instrumented `dspy.RLM` call.

This module is the format's single source of truth: [`JsonlTrace`][rlm_events.trace.writer.JsonlTrace] writes these
records, [`read_trace()`][rlm_events.trace.reader.read_trace] validates them, the viewer shows them, and
[`json_schema()`][rlm_events.trace.schema.json_schema] gives them to other tools as JSON Schema.

Every line holds the fields of [`RecordBase`][rlm_events.trace.schema.RecordBase] and those of its stage's record
([`RECORD_TYPES`][rlm_events.trace.schema.RECORD_TYPES]), told
apart by `stage`. `iteration` is `null` on the run-level stages (`run_start`, `extract`, `run_end`).
Previews are strings cut to the writer's `preview_chars` (code to `code_chars`) with a `… [+N chars]` marker.
A field added later does not change the version; a field that changes meaning does
([`SCHEMA_VERSION`][rlm_events.trace.schema.SCHEMA_VERSION]).
Readers keep fields they do not know (`model_extra`), so a newer writer's traces stay readable.

```pycon
>>> record = parse_record({"run_id": "r1", "stage": "pre_iteration", "iteration": 0, "t_mono": 1.5,
...                        "t_wall": "2025-01-01T00:00:00.000000+00:00", "dt_prev_s": 0.25, "history_len": 0})
>>> type(record).__name__, record.history_len
('PreIterationRecord', 0)

```
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from ..stages import Stage

SCHEMA_VERSION = "rlm-events-trace/1"
"""Written as `schema` on every `run_start` line; the number changes when a field changes meaning."""

_CONFIG = ConfigDict(extra="allow", frozen=True)

Preview = Annotated[str, Field(description="a preview: the value as text, cut with a '… [+N chars]' marker")]
FieldPreviews = dict[str, str]
HistoryLength = Annotated[
    int | None,
    Field(description="REPL history entries at this event (the LM sees them on pre_iteration); null if unknown"),
]


class LMUsage(BaseModel):
    """LM use of the call so far, counted from its start by the run's one meter
    ([`rlm_events.lm_usage`][rlm_events.lm_usage]): every
    LM call attributed to the call that made it, concurrent calls sharing an LM instance included.

    `cost_usd` is `null` while the cost is *unknown* (a paid call its client could not price, or whose usage
    could not be seen: `unpriced_lm_calls` / `unmetered_lm_calls` say how many), never `0.0`. Calls DSPy's
    cache answered are counted in `cached_lm_calls`, not in the tokens and cost (no request was made); what they
    cost when first paid for is `saved_cost_usd`. Those four fields are present only when non-zero.
    """

    model_config = _CONFIG

    lm_calls: int = Field(description="LM calls so far (the sub-LM's llm_query calls and cached calls included)")
    prompt_tokens: int = Field(description="prompt (input) tokens so far, of the calls a provider served")
    completion_tokens: int = Field(description="completion (output) tokens so far, of the calls a provider served")
    total_tokens: int = Field(description="the providers' total_tokens (prompt_tokens + completion_tokens if absent)")
    cost_usd: float | None = Field(
        description="cost in US dollars so far, as the LMs' clients priced it; null while unknown (never 0.0 then)"
    )
    cached_lm_calls: int = Field(default=0, description="calls DSPy's cache answered: no request, no cost; absent if 0")
    saved_cost_usd: float = Field(
        default=0.0, description="what the cached calls cost when they were paid for (absent without cached calls)"
    )
    unpriced_lm_calls: int = Field(default=0, description="paid calls without a price (cost_usd is null); absent if 0")
    unmetered_lm_calls: int = Field(
        default=0, description="calls whose usage could not be seen (cost_usd is null); absent if 0"
    )


class ToolInfo(BaseModel):
    """The tool a `tool_call` record is about."""

    model_config = _CONFIG

    name: str = Field(description="the tool's name: llm_query, llm_query_batched or a user tool")
    args: str = Field(description="a preview of the call's arguments, as Python call syntax (`'x', n=2`)")


class RecordBase(BaseModel):
    """The fields of every line, whatever its stage."""

    model_config = _CONFIG

    run_id: str = Field(description="the call's id (ctx.run.id); groups the lines of one call")
    stage: str = Field(description="the stage that fired: a rlm_events.Stage value")
    iteration: int | None = Field(description="0-based iteration; null on run-level stages")
    t_mono: float = Field(description="time.monotonic() when the event was recorded (seconds; one process only)")
    t_wall: str = Field(description="the same moment as ISO 8601 with UTC offset")
    dt_prev_s: float = Field(
        description="seconds since this call's previous event (0.0 on run_start). A stage's own duration, as the "
        "viewer and StageTimings count it, runs from its event to the next one (pre_iteration: the LM writing the "
        "code; pre_execution: the code running)"
    )
    usage: LMUsage | None = Field(default=None, description="LM use of the call so far; absent without LMs")


class _RunLevel(RecordBase):
    iteration: None = Field(description="null: the stage belongs to the call, not to an iteration")


class _InIteration(RecordBase):
    iteration: int = Field(ge=0, description="the 0-based iteration the event belongs to")


class RunStartRecord(_RunLevel):
    """A call starts."""

    stage: Literal["run_start"] = Field(description="run_start")
    schema_version: str = Field(alias="schema", description=f"the trace format: {SCHEMA_VERSION!r}")
    module: str = Field(description="the RLM's class and signature, e.g. 'RLM(question -> answer)'")
    max_iters: int | None = Field(description="the RLM's iteration limit; null if unknown")
    inputs: FieldPreviews = Field(description="the call's input arguments: name -> preview")
    durable: dict[str, Any] | None = Field(
        default=None,
        description="a durable run's link (rlm_events.durable): run_id (its durable id), relation ('resume' or "
        "'fork', else absent), parent (the durable run it resumes or forks) and replayed (iterations replayed)",
    )


class PreIterationRecord(_InIteration):
    """An iteration starts; the LM is about to write its code."""

    stage: Literal["pre_iteration"] = Field(description="pre_iteration")
    history_len: HistoryLength


class PreExecutionRecord(_InIteration):
    """The LM wrote the code; it has not run."""

    stage: Literal["pre_execution"] = Field(description="pre_execution")
    code: str = Field(description="the code about to run, as the stage's middleware left it")
    reasoning: Preview = Field(description="the LM's reasoning for the code (a preview)")
    history_len: HistoryLength
    skipped: bool = Field(description="a middleware supplied the result: the code will not run")
    result_preview: str | None = Field(
        default=None, description="the result a middleware supplied (a preview); absent unless skipped"
    )


class PostExecutionRecord(_InIteration):
    """The code ran (or was skipped)."""

    stage: Literal["post_execution"] = Field(description="post_execution")
    code: str = Field(description="the code, as recorded in the history")
    result_preview: Preview = Field(description="the interpreter's result (a preview)")
    result_type: str = Field(description="the result's Python type name (str; FinalOutput after SUBMIT)")
    is_error: bool = Field(description="the result is an '[Error] …' text: the code failed")
    history_len: HistoryLength


class PostIterationRecord(_InIteration):
    """The result was folded into the history; the iteration ends."""

    stage: Literal["post_iteration"] = Field(description="post_iteration")
    history_len: HistoryLength
    submitted: bool = Field(description="the iteration produced the final prediction")
    stop: bool = Field(description="a middleware ended the loop (the extract fallback follows)")
    stop_reason: str | None = Field(
        default=None, description="why, when this iteration ended the loop: 'budget' or 'middleware' (else null)"
    )


class ToolCallRecord(RecordBase):
    """A tool called by the executed code returned."""

    stage: Literal["tool_call"] = Field(description="tool_call")
    iteration: int | None = Field(description="the iteration whose code called the tool; null outside one")
    tool: ToolInfo = Field(description="the tool and its arguments")
    result_preview: Preview = Field(description="what the tool returned (a preview)")


class ExtractRecord(_RunLevel):
    """DSPy's extract fallback ran (max_iters reached, or a middleware stopped the loop)."""

    stage: Literal["extract"] = Field(description="extract")
    history_len: HistoryLength
    prediction: FieldPreviews | None = Field(description="the extracted output fields: name -> preview")


class RunEndRecord(_RunLevel):
    """A call ended: every call has one, failed ones included (a trace without one was cut short)."""

    stage: Literal["run_end"] = Field(description="run_end")
    iterations: int = Field(description="iterations started")
    forced_extract: bool = Field(description="the answer came from the extract fallback")
    stop_reason: str | None = Field(
        default=None,
        description="why the loop ended: submit, max_iters, budget, middleware, error or suspended (a durable run "
        "waits for a decision; null in older traces)",
    )
    duration_s: float = Field(description="the call's duration in seconds")
    prediction: FieldPreviews | None = Field(
        description="the output fields: name -> preview, the trajectory left out; null when the call failed"
    )
    error: str | None = Field(description="'Type: message' of the error the call raised; null on success")


TraceRecord = Annotated[
    Union[
        RunStartRecord,
        PreIterationRecord,
        PreExecutionRecord,
        PostExecutionRecord,
        PostIterationRecord,
        ToolCallRecord,
        ExtractRecord,
        RunEndRecord,
    ],
    Field(discriminator="stage"),
]
"""One line of a trace: the record type of its `stage`."""

RECORD_TYPES: dict[Stage, type[RecordBase]] = {
    Stage.RUN_START: RunStartRecord,
    Stage.PRE_ITERATION: PreIterationRecord,
    Stage.PRE_EXECUTION: PreExecutionRecord,
    Stage.POST_EXECUTION: PostExecutionRecord,
    Stage.POST_ITERATION: PostIterationRecord,
    Stage.TOOL_CALL: ToolCallRecord,
    Stage.EXTRACT: ExtractRecord,
    Stage.RUN_END: RunEndRecord,
}
"""The record type of each stage."""

_ADAPTER: TypeAdapter[TraceRecord] = TypeAdapter(TraceRecord)


def parse_record(data: Any, *, strict: bool = False) -> TraceRecord:
    """`data` (one decoded JSON line) as the record of its stage. Raises `pydantic.ValidationError`.

    `strict=True` refuses conversions (`"1"` for an int); JSON numbers are still fine for floats.
    """
    return _ADAPTER.validate_python(data, strict=strict)


def record_data(record: RecordBase) -> dict[str, Any]:
    """`record` as the JSON object it was read from: absent fields stay absent, unknown ones are kept."""
    return record.model_dump(mode="json", by_alias=True, exclude_unset=True)


def json_schema() -> dict[str, Any]:
    """The JSON Schema of one trace line (what [`parse_record()`][rlm_events.trace.schema.parse_record] accepts)."""
    return _ADAPTER.json_schema(by_alias=True)


__all__ = [
    "RECORD_TYPES",
    "SCHEMA_VERSION",
    "ExtractRecord",
    "LMUsage",
    "PostExecutionRecord",
    "PostIterationRecord",
    "PreExecutionRecord",
    "PreIterationRecord",
    "RecordBase",
    "RunEndRecord",
    "RunStartRecord",
    "ToolCallRecord",
    "ToolInfo",
    "TraceRecord",
    "json_schema",
    "parse_record",
    "record_data",
]
