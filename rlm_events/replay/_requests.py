"""What the recorder and the replayer read in an LM request: its messages, fingerprint and iteration number."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

_ITERATION = re.compile(r"(?:\[\[ ## iteration ## \]\]|<iteration>|\"iteration\"\s*:)\s*\"?\s*(\d+)\s*/\s*(\d+)")


def request_messages(prompt: Any, messages: Any) -> list[dict[str, Any]]:
    """The request as a message list, the way DSPy renders a bare prompt."""
    if messages:
        return [m if isinstance(m, dict) else {"content": m} for m in messages]
    return [{"role": "user", "content": prompt if prompt is not None else ""}]


def request_sha256(messages: list[dict[str, Any]]) -> str:
    canonical = [[m.get("role"), m.get("content")] for m in messages]
    data = json.dumps(canonical, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(data.encode("utf-8")).hexdigest()


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else str(content)


def last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role", "user") == "user":
            return _text(message)
    return _text(messages[-1]) if messages else ""


def iteration_in_prompt(messages: list[dict[str, Any]]) -> int | None:
    """The `N` of `iteration: N/M` in an action prompt (the last occurrence: earlier ones are history)."""
    found = _ITERATION.findall(last_user_text(messages))
    return int(found[-1][0]) if found else None


def looks_like_extract(messages: list[dict[str, Any]]) -> bool:
    return any("repl_history" in _text(m) for m in messages)
