"""The store contract of durable runs ([`Store`][rlm_events.durable.store.Store]) and what it keeps.

A store keeps, per run, one row (status, metadata, lease, pending decision, outcome) and an append-only list of
steps (what the run did, in order). Both engines shipped here share one schema and one SQL implementation
([`rlm_events.durable.sql`][rlm_events.durable.sql]):

* `rlm_durable_runs(run_id PK, parent, relation, status, meta, pending, decision, outcome, lease_owner,
  lease_until, iteration, created, updated)`;
* `rlm_durable_steps(run_id, seq, iteration, kind, data, PRIMARY KEY (run_id, seq))`.

JSON columns are text. Leases are conditional `UPDATE`s of the run's row (a row lock in PostgreSQL, the database
lock in SQLite), so two workers never hold one run; every step is appended in the same transaction that checks and
renews the lease, so a worker that lost its lease cannot write a step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

Status = Literal["running", "suspended", "done", "failed"]
StepKind = Literal["action", "tool", "iteration"]
Json = dict[str, Any] | None
Link = tuple[str, str]


@dataclass(frozen=True)
class Step:
    """One thing a run did, as committed: `kind` is `"action"` (an iteration's code, committed before it runs),
    `"tool"` (one tool call's result or error) or `"iteration"` (the iteration's history entry and the run's
    per-run state after it). `iteration` is 0-based; `seq` orders the steps of a run from 0."""

    seq: int
    iteration: int
    kind: StepKind
    data: dict[str, Any]


@dataclass
class StoredRun:
    """A run as the store has it. `steps` is filled by [`Store.load()`][rlm_events.durable.store.Store.load] only."""

    run_id: str
    status: Status
    meta: dict[str, Any]
    parent: str | None = None
    relation: str | None = None
    pending: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    outcome: dict[str, Any] | None = None
    lease_owner: str | None = None
    lease_until: float = 0.0
    iteration: int = 0
    """Iterations completed and committed."""
    created: float = 0.0
    updated: float = 0.0
    steps: list[Step] = field(default_factory=list)


@runtime_checkable
class Store(Protocol):
    """What [`Durable`][rlm_events.durable.Durable] needs of a store. Every method is safe to call from several
    threads and processes at once; every write is committed when it returns. Errors reaching the engine raise
    [`StoreUnavailableError`][rlm_events.durable.StoreUnavailableError]."""

    def ping(self) -> None:
        """Check that the store can be reached and written (creating its tables if needed)."""

    def create(
        self, run_id: str, meta: dict[str, Any], owner: str, lease_seconds: float, link: Link | None = None
    ) -> None:
        """Add a run, `running` and leased to `owner`; `link` is `(parent run id, relation)`, e.g. a fork's."""

    def acquire(self, run_id: str, owner: str, lease_seconds: float) -> StoredRun:
        """Lease the run to `owner` and return it with its steps. Raises
        [`UnknownRunError`][rlm_events.durable.UnknownRunError] or
        [`RunLeasedError`][rlm_events.durable.RunLeasedError] (another owner's lease has not expired)."""
        ...

    def append(self, run_id: str, owner: str, step: Step, lease_seconds: float) -> None:
        """Commit `step` and renew `owner`'s lease, in one transaction; raises
        [`LeaseLostError`][rlm_events.durable.LeaseLostError] when `owner` no longer holds the lease."""

    def finish(self, run_id: str, owner: str, status: Status, *, outcome: Json = None, pending: Json = None) -> None:
        """Set the run's status (`pending`: the decision a suspended run waits for) and release the lease."""

    def release(self, run_id: str, owner: str) -> None:
        """Give the lease up without changing anything else (a no-op when `owner` does not hold it)."""

    def decide(self, run_id: str, decision: dict[str, Any]) -> None:
        """Record the decision a suspended run waits for, once. Raises
        [`UnknownRunError`][rlm_events.durable.UnknownRunError], or
        [`AlreadyDecidedError`][rlm_events.durable.AlreadyDecidedError] when the run waits for no decision."""

    def take_decision(self, run_id: str, owner: str) -> None:
        """The run (leased to `owner`) resumes: clear its pending decision and decision, set it `running`."""

    def load(self, run_id: str) -> StoredRun:
        """The run with its steps; [`UnknownRunError`][rlm_events.durable.UnknownRunError] if there is none."""
        ...

    def runs(self, status: Status | None = None) -> list[StoredRun]:
        """Every run (with `status`, if given), newest first, without their steps."""
        ...

    def close(self) -> None:
        """Close this process's connections."""


__all__ = ["Json", "Link", "Status", "Step", "StepKind", "Store", "StoredRun"]
