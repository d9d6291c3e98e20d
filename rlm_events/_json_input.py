"""JSON from files nobody vouches for: any bytes, bounded line length, bounded nesting.

The trace reader (`read_trace()`) and replay's recording loader
(`Recording.load()`) read files that may be cut short, foreign,
binary or hostile. What they read goes through here, so that no content makes them fail in a way of its own
(`RecursionError`, `UnicodeDecodeError`, a line held whole in memory however long it is):

- `loads()` raises only `JsonInputError`, for
  text that is not JSON or is nested deeper than `max_depth` levels (checked without recursion);
- `numbered_lines()` reads a file line by line, never more than
  `max_length` (+1) bytes or characters of a line at once, and decodes bytes as UTF-8 with undecodable bytes
  replaced.

```pycon
>>> loads('{"a": [1, 2]}')
{'a': [1, 2]}
>>> loads("[" * 100_000)
Traceback (most recent call last):
...
rlm_events._json_input.JsonInputError: line 1: nested deeper than 200 levels

```
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import IO, Any

MAX_DEPTH = 200
"""How deeply arrays and objects may nest (a trace line nests 3 deep; a recording about as deep as its tool values)."""

MAX_LINE_LENGTH = 16 * 1024 * 1024
"""The longest trace line read (bytes in a file read by path, characters in an open text file): 16 MiB."""


class JsonInputError(ValueError):
    """Text that is not JSON, or is nested deeper than allowed. `line` is the 1-based line of the text where
    the problem is, when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(f"line {line}: {message}" if line is not None else message)
        self.line = line


def _too_deep(value: Any, max_depth: int) -> bool:
    """Whether `value` nests arrays/objects deeper than `max_depth` (walked with a stack, not recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _line_too_deep(text: str, max_depth: int) -> int | None:
    """The line where brackets outside strings first nest deeper than `max_depth` (the error path only)."""
    depth, line, in_string, escaped = 0, 1, False, False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > max_depth:
                return line
        elif char in "]}":
            depth -= 1
        if char == "\n":
            line += 1
    return None


def loads(text: str, *, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads(text)`, raising only `JsonInputError` (with the line) for
    text that is not JSON or nests deeper than `max_depth`. `NaN` and `Infinity` are read as Python's `json` does."""
    # Nesting needs an opening bracket per level: when there are few, the text cannot be too deep.
    shallow = text.count("[") + text.count("{") <= max_depth
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise JsonInputError(f"not JSON: {exc.msg} (column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise JsonInputError(f"nested deeper than {max_depth} levels", _line_too_deep(text, max_depth)) from None
    except ValueError as exc:  # an integer too long to convert, a lone surrogate the decoder refused...
        raise JsonInputError(f"not JSON: {exc}") from None
    if not shallow and _too_deep(value, max_depth):
        raise JsonInputError(f"nested deeper than {max_depth} levels", _line_too_deep(text, max_depth))
    return value


def numbered_lines(file: IO[bytes] | IO[str], max_length: int = MAX_LINE_LENGTH) -> Iterator[tuple[int, str | None]]:
    """`(line number, text)` for each line of `file`, from 1; the text is `None` for a line longer than
    `max_length` (bytes or characters, newline excluded), which is read past in chunks, never held whole.
    Bytes are decoded as UTF-8, undecodable ones replaced. A text file's own decoding errors propagate."""
    number = 0
    while True:
        line: bytes | str = file.readline(max_length + 1)
        if not line:
            return
        number += 1
        newline = b"\n" if isinstance(line, bytes) else "\n"
        if len(line) > max_length and not line.endswith(newline):  # type: ignore[arg-type]
            chunk = line
            while chunk and not chunk.endswith(newline):  # type: ignore[arg-type]
                chunk = file.readline(max_length)
            yield number, None
            continue
        yield number, line.decode("utf-8", errors="replace") if isinstance(line, bytes) else line


__all__ = ["MAX_DEPTH", "MAX_LINE_LENGTH", "JsonInputError", "loads", "numbered_lines"]
