"""Errors raised by rlm-events. All derive from [`RLMEventsError`][rlm_events.errors.RLMEventsError], except
[`rlm_events.replay.ReplayExhaustedError`][rlm_events.replay.ReplayExhaustedError]: a `BaseException` (like pytest's
outcome exceptions) so the
interpreter running generated code cannot turn a diverged replay into text the LM reads."""

from __future__ import annotations


class RLMEventsError(Exception):
    """Base class for every error rlm-events raises on its own account."""


class UnknownStageError(RLMEventsError, ValueError):
    """A stage name that is not one of [`rlm_events.Stage`][rlm_events.Stage]; the message suggests the closest one."""


class UnsupportedDSPyError(RLMEventsError, RuntimeError):
    """The installed DSPy's RLM loop lacks a piece rlm-events hooks into; the message names version and piece."""


class StageError(RLMEventsError, RuntimeError):
    """A stage's folded context asked for something the loop cannot do (for example, injected code that fails)."""


class UnknownCostError(RLMEventsError, RuntimeError):
    """A dollar cap (`Budget(max_cost_usd=...)`) met an LM call whose cost is unknown: a model no price map prices
    ([`models`][rlm_events.errors.UnknownCostError.models] names them; give their prices with
    [`rlm_events.register_prices()`][rlm_events.register_prices] or `Budget(prices=...)`),
    or a call whose usage could not be seen. The run is stopped rather than let run uncapped."""

    def __init__(self, message: str, models: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.models = models


class TraceError(RLMEventsError, ValueError):
    """A JSONL trace that cannot be read or rendered as a whole (a line that cannot be read is skipped and counted,
    never an error): one holding no run, or an open text file whose own decoding fails. `line` is the 1-based line
    number, when the problem has one."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line
