"""Render a JSONL trace (`rlm_events.trace.schema`) as one self-contained HTML page.

`python -m rlm_events view rlm-trace.jsonl -o trace.html` (or [`write_html()`][rlm_events.trace.viewer.write_html]). The
page is built from
`assets/viewer.html`, `viewer.css` and `viewer.js` (package data, read with `importlib.resources`) and
needs no network: CSS and JavaScript are inline and the trace is embedded as JSON in a
`<script type="application/json">` element, with `<`, `>`, `&` and the JavaScript line separators escaped, so
nothing in the traced code or outputs (`</script>` included) can end the element or inject markup; the page sets
all trace text as `textContent`.

The page shows, per run: a header (id, module, duration, iterations, LM use, outcome), a timeline with one row per
iteration (plus the call's start and end) and one bar per stage event, positioned by time, and, on click of a row
or bar, that iteration's reasoning, code, tool calls and output. A trace holding several runs gets a run selector.
A stage's bar runs from its event to the call's next event, as [`StageTimings`][rlm_events.taps.timings.StageTimings]
measures stages (`pre_iteration`: the LM writing the code; `pre_execution`: the code running); a tool call's
bar ends when the call returned and starts at the event before it.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from datetime import datetime, timezone
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from ..errors import TraceError
from .reader import Trace, read_trace
from .schema import record_data

_PACKAGE = "rlm_events.trace"
_PLACEHOLDER = re.compile(r"__(TITLE|STYLE|SCRIPT|DATA)__")


@cache
def _asset(name: str) -> str:
    """The text of `assets/<name>` (`viewer.html`, `viewer.css`, `viewer.js`), read once."""
    return (files(_PACKAGE) / "assets" / name).read_text(encoding="utf-8")


def _finite(value: Any) -> Any:
    """`value` with `NaN` and infinities (which a trace line may hold: Python's `json` reads them) as `None`; the
    reader bounds the nesting, so this recursion is bounded too."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _script_json(value: Any) -> str:
    """JSON that is inert inside `<script>`: no `</script>`, `<!--` or line separators can appear."""
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, default=str)
    except ValueError:  # NaN or an infinity: not JSON for the browser
        text = json.dumps(_finite(value), ensure_ascii=False, allow_nan=False, default=str)
    for raw, escaped in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def render_html(trace: Trace, *, title: str = "rlm-events trace", source: str = "") -> str:
    """The self-contained HTML page for `trace`. Raises [`TraceError`][rlm_events.trace.TraceError] (a
    `ValueError`) when it holds no run."""
    if not trace.runs:
        count = trace.skipped_lines
        skipped = f"; {count} line{'s' if count != 1 else ''} skipped" if count else ""
        first = f", the first at line {trace.first_skipped[0][0]}: {trace.first_skipped[0][1]}" if skipped else ""
        raise TraceError(
            f"the trace holds no rlm-events events (is it a JSONL file written by JsonlTrace?){skipped}{first}",
            trace.first_skipped[0][0] if skipped else None,
        )
    data = {
        "title": title,
        "source": source,
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "skipped_lines": trace.skipped_lines,
        "runs": [
            {"run_id": run_id, "events": [record_data(record) for record in records]}
            for run_id, records in trace.runs.items()
        ],
    }
    parts = {
        "TITLE": html.escape(title),
        "STYLE": _asset("viewer.css"),
        "SCRIPT": _asset("viewer.js"),
        "DATA": _script_json(data),
    }
    # One pass, so text of one part (a title, traced code) is never taken for another part's placeholder.
    return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], _asset("viewer.html"))


def write_html(trace_path: str | os.PathLike[str], out_path: str | os.PathLike[str] | None = None) -> Path:
    """Render the trace at `trace_path` to `out_path` (default: the same name with `.html`); return it.

    Any file can be given: lines that are not trace records are skipped (see
    [`read_trace()`][rlm_events.trace.reader.read_trace]); [`TraceError`][rlm_events.trace.TraceError] if none is,
    `OSError` if a file cannot be read or written. Text the page cannot encode (a lone surrogate) is replaced."""
    source = Path(trace_path)
    target = Path(out_path) if out_path is not None else source.with_suffix(".html")
    page = render_html(read_trace(source), title=f"rlm-events trace: {source.name}", source=source.name)
    target.write_text(page, encoding="utf-8", errors="replace")
    return target


__all__ = ["render_html", "write_html"]
