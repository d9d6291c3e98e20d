"""The JSONL trace format of instrumented ``dspy.RLM`` calls: its schema, the tap writing it, its reader, its viewer.

* :mod:`~rlm_events.trace.schema`: the records, one pydantic model per stage, and :data:`SCHEMA_VERSION`;
* :mod:`~rlm_events.trace.writer`: :class:`JsonlTrace`, the tap writing one record per stage event;
* :mod:`~rlm_events.trace.reader`: :func:`read_trace`, the file back as validated records grouped by run;
* :mod:`~rlm_events.trace.viewer`: :func:`write_html` / :func:`render_html`, one self-contained HTML page
  (``python -m rlm_events view``), built from ``assets/viewer.html``, ``viewer.css`` and ``viewer.js``.

>>> from rlm_events.trace import JsonlTrace, read_trace, write_html
>>> with JsonlTrace("rlm-trace.jsonl") as trace:  # doctest: +SKIP
...     events.tap(trace)
...     rlm(question="...")
>>> read_trace("rlm-trace.jsonl").runs  # doctest: +SKIP
>>> write_html("rlm-trace.jsonl")  # rlm-trace.html  # doctest: +SKIP
"""

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
    "TraceRecord",
    "json_schema",
    "parse_lines",
    "parse_record",
    "read_trace",
    "record_data",
    "render_html",
    "write_html",
]
