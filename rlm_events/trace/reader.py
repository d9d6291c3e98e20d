"""Read a JSONL trace (written by [`JsonlTrace`][rlm_events.trace.writer.JsonlTrace]) back as validated records.

```pycon
>>> trace = read_trace("rlm-trace.jsonl")  # doctest: +SKIP
>>> for run_id, records in trace.runs.items():  # doctest: +SKIP
...     print(run_id, [record.stage for record in records])

```

Reading never fails on the file's content: a line that is not a record of `rlm_events.trace.schema` (blank,
cut short by a crash mid-write, foreign, binary, not UTF-8, nested deeper than
200 levels, longer than `max_line_length`) is left out and counted in
[`Trace.skipped_lines`][rlm_events.trace.reader.Trace.skipped_lines], the first few with their line number and why in
[`Trace.first_skipped`][rlm_events.trace.reader.Trace.first_skipped]. A line is never held whole beyond
`max_line_length`, and nothing in a line can make reading recurse deeply. The only errors are `OSError` (the file
cannot be opened or read) and [`TraceError`][rlm_events.trace.TraceError] (an open text file whose own decoding
fails, with the line number).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO

from .._json_input import MAX_LINE_LENGTH, JsonInputError, loads, numbered_lines
from ..errors import TraceError
from .schema import TraceRecord, parse_record

KEEP_SKIPPED = 10
"""How many skipped lines [`Trace.first_skipped`][rlm_events.trace.reader.Trace.first_skipped] describes."""


@dataclass
class Trace:
    """The runs of one trace file, in order of their first record, and how many lines could not be read."""

    runs: dict[str, list[TraceRecord]] = field(default_factory=dict)
    """Each run's records in file order (the order they were written), by `run_id`."""
    skipped_lines: int = 0
    """Non-blank lines left out: not JSON (a line cut short, binary), too deep or too long, or not a trace record."""
    first_skipped: list[tuple[int, str]] = field(default_factory=list)
    """The first skipped lines (up to `KEEP_SKIPPED`): `(line number, why)`."""

    def skip(self, number: int, why: str) -> None:
        """Count line `number` as skipped, for `why`."""
        self.skipped_lines += 1
        if len(self.first_skipped) < KEEP_SKIPPED:
            self.first_skipped.append((number, why))

    @property
    def events(self) -> int:
        """How many records the runs hold."""
        return sum(len(records) for records in self.runs.values())


def _parse(numbered: Iterable[tuple[int, str | None]], max_line_length: int) -> Trace:
    trace = Trace()
    for number, line in numbered:
        if line is None or (len(line) > max_line_length and len(line.rstrip("\r\n")) > max_line_length):
            trace.skip(number, f"longer than {max_line_length}")
            continue
        if not line.strip():
            continue
        try:
            record = parse_record(loads(line))
        except JsonInputError as exc:
            trace.skip(number, str(exc).removeprefix("line 1: "))
            continue
        except ValueError:  # not a record (pydantic's ValidationError is a ValueError)
            trace.skip(number, "not a trace record")
            continue
        trace.runs.setdefault(record.run_id, []).append(record)
    return trace


def parse_lines(lines: Iterable[str], *, max_line_length: int = MAX_LINE_LENGTH) -> Trace:
    """The [`Trace`][rlm_events.trace.reader.Trace] of JSONL `lines` (see
    [`read_trace()`][rlm_events.trace.reader.read_trace])."""
    return _parse(enumerate(lines, 1), max_line_length)


def _checked(numbered: Iterator[tuple[int, str | None]]) -> Iterator[tuple[int, str | None]]:
    """`numbered`, with a text file's failure to decode a line turned into a `TraceError` naming it."""
    number = 0
    while True:
        try:
            number, line = next(numbered)
        except StopIteration:
            return
        except UnicodeError as exc:
            raise TraceError(f"line {number + 1}: the file cannot be decoded: {exc}", number + 1) from None
        yield number, line


def read_trace(source: str | os.PathLike[str] | IO[str], *, max_line_length: int = MAX_LINE_LENGTH) -> Trace:
    """Read the trace at `source`: a path (read as UTF-8, undecodable bytes replaced) or an open text file.

    Lines that cannot be read as trace records are counted in `skipped_lines` and left out; they never make reading
    fail. A line longer than `max_line_length` (bytes for a path, characters for a text file) is skipped unread.
    """
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as file:
            return _parse(numbered_lines(file, max_line_length), max_line_length)
    return _parse(_checked(numbered_lines(source, max_line_length)), max_line_length)


__all__ = ["KEEP_SKIPPED", "Trace", "parse_lines", "read_trace"]
