"""The errors of durable runs: each names the run, and what was expected."""

from __future__ import annotations

from ..errors import RLMEventsError


class DurableError(RLMEventsError, RuntimeError):
    """Base class of every error of [`rlm_events.durable`][rlm_events.durable]."""


class StoreUnavailableError(DurableError):
    """The store cannot be reached or written (the message gives the engine's reason). A durable run raises it at
    `run_start`, before any LM call, unless its [`Durable`][rlm_events.durable.Durable] is `best_effort`."""


class UnknownRunError(DurableError, LookupError):
    """No run with this id is in the store."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no durable run {run_id!r} in the store")
        self.run_id = run_id


class RunLeasedError(DurableError):
    """Another worker holds the run's lease (it is running it now, or died less than a lease ago)."""

    def __init__(self, run_id: str, owner: str, seconds_left: float) -> None:
        super().__init__(
            f"durable run {run_id!r} is leased by worker {owner!r} for {seconds_left:.1f} s more: another worker is "
            "running it (or died less than a lease ago); pass wait=... to resume() to wait for the lease"
        )
        self.run_id, self.owner, self.seconds_left = run_id, owner, seconds_left


class LeaseLostError(DurableError):
    """This worker's lease on the run expired and another worker took the run over: this worker stops it."""

    @classmethod
    def of(cls, run_id: str, owner: str) -> LeaseLostError:
        return cls(
            f"durable run {run_id!r}: worker {owner!r} lost its lease (it expired and another worker took the run "
            "over); this worker stops the run"
        )


class RunFinishedError(DurableError):
    """The run already ended (`done` or `failed`): there is nothing to resume; fork it to run it again."""


class AlreadyDecidedError(DurableError):
    """A decision for a run that waits for none: it was decided already, or it is not suspended."""


class RecordMismatchError(DurableError):
    """The record of a run does not match the RLM asked to resume it: other signature, tools or DSPy major
    version. `difference` names what differs."""

    def __init__(self, run_id: str, difference: str) -> None:
        super().__init__(f"durable run {run_id!r} cannot be resumed by this RLM: {difference}")
        self.run_id, self.difference = run_id, difference


class DivergenceError(DurableError):
    """A replayed code block did not do what the record says it did (non-determinism in the code): the run stops
    unless its [`Durable`][rlm_events.durable.Durable] allows divergence. `iteration` is 1-based, as the LM sees it."""

    ADVICE = "The code is not deterministic; pass Durable(..., allow_divergence=True) to go on with what it does now"

    def __init__(self, run_id: str, iteration: int, detail: str) -> None:
        self.run_id, self.iteration, self.detail = run_id, iteration, detail
        where = f"durable run {run_id!r}: replaying iteration {iteration} diverged from the record"
        super().__init__(f"{where}: {detail}. {self.ADVICE}")


class AwaitingDecisionError(DurableError):
    """The run is suspended and waits for a decision nobody gave yet (and its deadline, if any, has not passed)."""


__all__ = [
    "AlreadyDecidedError",
    "AwaitingDecisionError",
    "DivergenceError",
    "DurableError",
    "LeaseLostError",
    "RecordMismatchError",
    "RunFinishedError",
    "RunLeasedError",
    "StoreUnavailableError",
    "UnknownRunError",
]
