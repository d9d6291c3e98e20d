"""Planning an action's code while the main LM is still writing it.

When the LM's answer is streamed (see [`rlm_events.runtime.stream_actions`][rlm_events.runtime.stream_actions]),
[`Speculate`][rlm_events.speculate.Speculate] gets its text as it arrives. `ActionStream` keeps the code written so
far (the `code` field of DSPy's chat format, its Markdown fence taken off), and each time a top-level statement is
complete (the next one has begun, and the code up to it parses) it plans that prefix and dispatches the calls
not dispatched yet. A statement is planned only once it is complete, and planning a prefix gives the calls the
whole code would make first (the shadow evaluates statements in order; a later one cannot change what an
earlier one computed), so what is dispatched while the LM writes is what `pre_execution` would have dispatched,
only sooner. At `pre_execution` the whole code is planned as always; the calls already dispatched are not
dispatched again (`Live.streamed`), and any that the final code does not make are wasted like any misprediction:
a result is only ever claimed by an exact match.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from .._ast import parse
from .planner import Predicted

logger = logging.getLogger("rlm_events")

_MARKER = re.compile(r"\[\[ ## (\w+) ## \]\]")
_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n")
_CONTINUATIONS = ("else", "elif", "except", "finally")
_CONTINUATION_PREFIXES = frozenset(word[:n] for word in _CONTINUATIONS for n in range(1, len(word) + 1))


def code_in_output(text: str) -> str | None:
    """The code written so far in `text`, the LM's output in DSPy's chat format (`[[ ## code ## ]]` …), or the
    code alone, fenced; its fence taken off. `None` while the `code` field has not begun."""
    if text.lstrip().startswith("```"):
        return _unfenced(text, closed=False)
    start = None
    for marker in _MARKER.finditer(text):
        if marker.group(1) == "code":
            start = marker.end()
        elif start is not None:
            return _unfenced(text[start : marker.start()], closed=True)
    return None if start is None else _unfenced(text[start:], closed=False)


def _unfenced(field: str, *, closed: bool) -> str:
    body = field.lstrip()
    opening = _FENCE.match(body)
    if opening is not None:
        body = body[opening.end() :]
        end = re.search(r"^```", body, re.MULTILINE)
        if end is not None:
            return body[: end.start()]
    elif body.startswith("`"):
        return ""  # a fence still being written
    return body if closed else body[: body.rfind("\n") + 1]


def complete_statements(code: str, after: int = 0) -> str:
    """The longest prefix of `code` (longer than `after` characters) made of complete top-level statements: cut
    where a line at column 0 begins a new statement and the code before it parses. `""` when there is none."""
    lines = code.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    for index in range(len(lines) - 1, 0, -1):
        if starts[index] <= after:
            break
        line = lines[index]
        if not line or line[0] in " \t#)]}'\"":
            continue
        word = re.match(r"[A-Za-z_]+", line)
        last = index == len(lines) - 1
        if word is not None and (
            word.group() in _CONTINUATIONS or (last and word.end() == len(line) and line in _CONTINUATION_PREFIXES)
        ):
            continue
        prefix = code[: starts[index]]
        if parse(prefix) is not None:
            return prefix
    return ""


class ActionStream:
    """The code of one action as it streams in (an `rlm_events.runtime.ActionSink`): plans each complete prefix with
    `plan` and hands the calls not dispatched yet to `dispatch`; `fell_back(reason)` is told when the call was not
    streamed after all. Never raises into the stream: an error of its own is logged, and the stream is then only
    read, not planned."""

    def __init__(
        self,
        plan: Callable[[str], list[Predicted]],
        dispatch: Callable[[list[Predicted]], None],
        fell_back: Callable[[str], None],
    ) -> None:
        self.plan, self.dispatch, self.fell_back = plan, dispatch, fell_back
        self.text = ""
        self.planned = ""  # the prefix planned last
        self.sent = 0  # calls of the plan handed to dispatch
        self.chunks = 0
        self.broken = False
        self.fell_back_because = ""

    def feed(self, text: str) -> None:
        """Take the next piece of the LM's output."""
        self.text += text
        self.chunks += 1
        if "\n" not in text or self.broken:
            return  # a statement completes only at a line break
        try:
            self._plan()
        except Exception:  # speculation must never break the run it speeds up
            self.broken = True
            logger.warning(
                "rlm-events: Speculate could not plan a streamed action; it plans when it is complete", exc_info=True
            )

    def _plan(self) -> None:
        code = code_in_output(self.text)
        if code is None:
            return
        prefix = complete_statements(code, after=len(self.planned))
        if len(prefix) <= len(self.planned) or not prefix.startswith(self.planned):
            return
        self.planned = prefix
        calls = self.plan(prefix)
        if len(calls) > self.sent:
            fresh, self.sent = calls[self.sent :], len(calls)
            self.dispatch(fresh)

    def failed(self, reason: str) -> None:
        """The call was not streamed (or not to the end): the whole code is planned when it is complete."""
        self.fell_back_because = reason
        self.fell_back(reason)


__all__ = ["ActionStream", "code_in_output", "complete_statements"]
