"""The JSONL trace format of instrumented `dspy.RLM` calls: its schema, the tap writing it, its reader, its viewer.

* `schema`: the records, one pydantic model per stage, and [`SCHEMA_VERSION`][rlm_events.trace.schema.SCHEMA_VERSION];
* `writer`: [`JsonlTrace`][rlm_events.trace.writer.JsonlTrace], the tap writing one record per stage event;
* `reader`: [`read_trace()`][rlm_events.trace.reader.read_trace], the file back as validated records grouped by run
  (any file: what is not a record is skipped and counted; [`TraceError`][rlm_events.trace.TraceError] is the only
  error about content);
* `viewer`: [`write_html()`][rlm_events.trace.viewer.write_html] /
  [`render_html()`][rlm_events.trace.viewer.render_html], one self-contained HTML page
  (`python -m rlm_events view`), built from `assets/viewer.html`, `viewer.css` and `viewer.js`.

```pycon
>>> from rlm_events.trace import JsonlTrace, read_trace, write_html
>>> with JsonlTrace("rlm-trace.jsonl") as trace:  # doctest: +SKIP
...     events.tap(trace)
...     rlm(question="...")
>>> read_trace("rlm-trace.jsonl").runs  # doctest: +SKIP
>>> write_html("rlm-trace.jsonl")  # rlm-trace.html  # doctest: +SKIP

```
"""

from ..errors import TraceError
from .reader import Trace, parse_lines, read_trace
from .schema import (
    RECORD_TYPES,
    SCHEMA_VERSION,
    ExtractRecord,
    LMUsage,
    PostExecutionRecord,
    PostIterationRecord,
    PreExecutionRecord,
    PreIterationRecord,
    RecordBase,
    RunEndRecord,
    RunStartRecord,
    ToolCallRecord,
    ToolInfo,
    TraceRecord,
    json_schema,
    parse_record,
    record_data,
)
from .viewer import render_html, write_html
from .writer import JsonlTrace

__all__ = [
    "RECORD_TYPES",
    "SCHEMA_VERSION",
    "ExtractRecord",
    "JsonlTrace",
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
    "Trace",
    "TraceError",
    "TraceRecord",
    "json_schema",
    "parse_lines",
    "parse_record",
    "read_trace",
    "record_data",
    "render_html",
    "write_html",
]
