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
from . import schema
from .reader import Trace, parse_lines, read_trace
from .schema import *  # noqa: F403 (re-exports exactly schema.__all__, listed once there)
from .viewer import render_html, write_html
from .writer import JsonlTrace

# The schema's names, and the writer's, reader's and viewer's.
__all__ = [
    *schema.__all__,
    "JsonlTrace",
    "Trace",
    "TraceError",
    "parse_lines",
    "read_trace",
    "render_html",
    "write_html",
]
