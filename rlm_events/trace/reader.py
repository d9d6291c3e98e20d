"""Read a JSONL trace (written by [`JsonlTrace`][rlm_events.trace.writer.JsonlTrace]) back as validated records.

```pycon
>>> trace = read_trace("rlm-trace.jsonl")  # doctest: +SKIP
>>> for run_id, records in trace.runs.items():  # doctest: +SKIP
...     print(run_id, [record.stage for record in records])

```

Reading never fails on the file's content: a line that is not a record of `rlm_events.trace.schema` (blank,
cut short by a crash mid-write, foreign) is left out and counted in
[`Trace.skipped_lines`][rlm_events.trace.reader.Trace.skipped_lines].
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import IO

from .schema import TraceRecord, parse_record


@dataclass
class Trace:
    """The runs of one trace file, in order of their first record, and how many lines could not be read."""

    runs: dict[str, list[TraceRecord]] = field(default_factory=dict)
    """Each run's records in file order (the order they were written), by `run_id`."""
    skipped_lines: int = 0
    """Non-blank lines left out: not JSON (a line cut short), or not a trace record."""

    @property
    def events(self) -> int:
        """How many records the runs hold."""
        return sum(len(records) for records in self.runs.values())


def parse_lines(lines: Iterable[str]) -> Trace:
    """The [`Trace`][rlm_events.trace.reader.Trace] of JSONL `lines` (see
    [`read_trace()`][rlm_events.trace.reader.read_trace])."""
    trace = Trace()
    for line in lines:
        if not line.strip():
            continue
        try:
            record = parse_record(json.loads(line))
        except ValueError:  # not JSON, or not a record (pydantic's ValidationError is a ValueError)
            trace.skipped_lines += 1
            continue
        trace.runs.setdefault(record.run_id, []).append(record)
    return trace


def read_trace(source: str | os.PathLike[str] | IO[str]) -> Trace:
    """Read the trace at `source`: a path (read as UTF-8, undecodable bytes replaced) or an open text file.

    Lines that are not trace records are counted in `skipped_lines` and left out; they never make reading fail.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, encoding="utf-8", errors="replace") as lines:
            return parse_lines(lines)
    return parse_lines(source)


__all__ = ["Trace", "parse_lines", "read_trace"]
