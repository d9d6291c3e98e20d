"""Durable runs and human approval: survive a crash, resume on another worker, fork, and wait for a person.

```pycon
>>> from rlm_events.durable import Durable, Approval, Approve, Defer
>>> durable = Durable("runs.db").install(events)  # doctest: +SKIP
>>> Approval(lambda request: Defer(), tools=["send_email"]).install(events)  # doctest: +SKIP
>>> outcome = rlm(question="...")  # doctest: +SKIP
>>> durable.decide(outcome.run_id, Approve())  # doctest: +SKIP

```

* [`Durable`][rlm_events.durable.Durable] commits every iteration of a run to a
  [`Store`][rlm_events.durable.store.Store]: the embedded [`SQLiteStore`][rlm_events.durable.SQLiteStore] (the
  default: a file path) or [`PostgresStore`][rlm_events.durable.PostgresStore] (a `postgresql://` URL; the
  `postgres` extra). [`resume()`][rlm_events.durable.Durable.resume] continues a run in any process,
  [`fork()`][rlm_events.durable.Durable.fork] starts a new one from an iteration.
* [`Approval`][rlm_events.durable.Approval] asks a handler before code and named tools run; a deferred decision
  suspends the run until [`decide()`][rlm_events.durable.decide].
"""

from .approval import REJECTED, Approval, Request
from .control import decide, open_store
from .decisions import Approve, Decision, Defer, Edit, Reject, Suspended, SuspendRun
from .durable import Durable
from .errors import (
    AlreadyDecidedError,
    AwaitingDecisionError,
    DivergenceError,
    DurableError,
    LeaseLostError,
    RecordMismatchError,
    RunFinishedError,
    RunLeasedError,
    StoreUnavailableError,
    UnknownRunError,
)
from .postgres import PostgresStore
from .sqlite import SQLiteStore
from .store import Step, Store, StoredRun

__all__ = [
    "REJECTED",
    "AlreadyDecidedError",
    "Approval",
    "Approve",
    "AwaitingDecisionError",
    "Decision",
    "Defer",
    "DivergenceError",
    "Durable",
    "DurableError",
    "Edit",
    "LeaseLostError",
    "PostgresStore",
    "RecordMismatchError",
    "Reject",
    "Request",
    "RunFinishedError",
    "RunLeasedError",
    "SQLiteStore",
    "Step",
    "Store",
    "StoreUnavailableError",
    "StoredRun",
    "SuspendRun",
    "Suspended",
    "UnknownRunError",
    "decide",
    "open_store",
]
