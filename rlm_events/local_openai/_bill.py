"""What [`LocalOpenAIServer`][rlm_events.local_openai.LocalOpenAIServer] answers and bills: a
[`Reply`][rlm_events.local_openai._bill.Reply] (and the faults
[`error()`][rlm_events.local_openai._bill.error] and [`NO_USAGE`][rlm_events.local_openai._bill.NO_USAGE]), the token
counts it bills, and the billing log ([`Bill`][rlm_events.local_openai._bill.Bill], one
[`BillRecord`][rlm_events.local_openai._bill.BillRecord] per request)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One answer of the server. Every field but `text` has a default meaning "as a provider answers".

    Args:
        text: the completion text (`None` in a fault: the scripted reply of that request).
        status: the HTTP status; anything but 200 is an error answer (OpenAI's error JSON), billed nothing.
        delay: seconds to wait before answering (a delay past the client's timeout makes it time out).
        usage: whether the answer carries `usage` (a non-streamed answer, or a stream's usage chunk).
        time_to_first_token: streamed answers: seconds before the first content chunk (after `delay`).
        tokens_per_second: streamed answers: the rate content chunks are sent at (`None`: at once).
    """

    text: str | None = None
    status: int = 200
    delay: float = 0.0
    usage: bool = True
    time_to_first_token: float = 0.0
    tokens_per_second: float | None = None

    def __post_init__(self) -> None:
        if self.delay < 0 or self.time_to_first_token < 0:
            raise ValueError(f"Reply: delays must be >= 0 seconds, got {self.delay=}, {self.time_to_first_token=}")
        if self.tokens_per_second is not None and self.tokens_per_second <= 0:
            raise ValueError(f"Reply: tokens_per_second must be > 0 or None, got {self.tokens_per_second!r}")


def error(status: int, *, delay: float = 0.0) -> Reply:
    """A fault: an error answer with HTTP `status` (429, 500, ...) after `delay` seconds."""
    if status == 200 or not 400 <= status <= 599:
        raise ValueError(f"error(): status must be a 4xx or 5xx HTTP status, got {status!r}")
    return Reply(status=status, delay=delay)


NO_USAGE = Reply(usage=False)
"""A fault: the scripted reply, answered without a `usage` block."""


@dataclass(frozen=True)
class BillRecord:
    """What the server did with one request (in arrival order: `index` is the request's 0-based index)."""

    index: int
    model: str
    status: int
    streamed: bool
    usage_sent: bool
    """Whether the client could see this answer's usage (a 200 answer with `usage`, or a usage chunk)."""
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None
    """The cost at the server's price for `model` (`None`: no price given); 0 for an error."""

    @property
    def billed(self) -> bool:
        """Whether this request was billed (a 200 answer)."""
        return self.status == 200


@dataclass(frozen=True)
class Bill:
    """A snapshot of the server's billing log: every request's
    [`BillRecord`][rlm_events.local_openai._bill.BillRecord], and the billed totals."""

    records: tuple[BillRecord, ...] = ()

    @property
    def billed(self) -> tuple[BillRecord, ...]:
        """The billed records (200 answers)."""
        return tuple(r for r in self.records if r.billed)

    @property
    def calls(self) -> int:
        """Billed calls."""
        return len(self.billed)

    @property
    def metered_calls(self) -> int:
        """Billed calls whose usage the client could see."""
        return sum(1 for r in self.billed if r.usage_sent)

    @property
    def unmetered_calls(self) -> int:
        """Billed calls answered without usage."""
        return self.calls - self.metered_calls

    @property
    def prompt_tokens(self) -> int:
        return sum(r.prompt_tokens for r in self.billed)

    @property
    def completion_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.billed)

    @property
    def total_tokens(self) -> int:
        return sum(r.total_tokens for r in self.billed)

    @property
    def cost_usd(self) -> float | None:
        """The billed cost, `None` if a billed model had no price."""
        costs = [r.cost_usd for r in self.billed]
        return None if any(c is None for c in costs) else sum(c for c in costs if c is not None)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[BillRecord]:
        return iter(self.records)


def count_prompt_tokens(messages: Any) -> int:
    """The server's deterministic prompt-token count of a request's `messages` (characters of text // 4)."""
    chars = 0
    for message in messages if isinstance(messages, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, dict))
    return chars // 4


def count_completion_tokens(text: str) -> int:
    """The server's deterministic completion-token count of a reply (`max(1, characters // 4)`)."""
    return max(1, len(text) // 4)


__all__ = ["NO_USAGE", "Bill", "BillRecord", "Reply", "count_completion_tokens", "count_prompt_tokens", "error"]
