"""A store on PostgreSQL (psycopg 3, the `postgres` extra), for a fleet of workers on several machines.

Why PostgreSQL directly rather than an engine such as DBOS: a durable RLM run needs one row per run and an
append-only list of steps, a lease that one worker at a time holds (a conditional `UPDATE` of the run's row, which
PostgreSQL row-locks) and a transaction that appends a step only while the lease holds. That is two small tables and
no workflow engine: DBOS would bring its own schema, workflow registry and recovery loop to run alongside the RLM's
own loop, which rlm-events already drives step by step.
"""

from __future__ import annotations

import time
from typing import Any

from .._optional import requiring
from .errors import LeaseLostError
from .sql import SqlStore, dumps
from .store import Step

# One statement, so one round trip and one commit per step: renew the lease, and append the step only if it held.
_APPEND = """
WITH lease AS (
    UPDATE rlm_durable_runs SET lease_until = %s, updated = %s, iteration = COALESCE(%s, iteration)
    WHERE run_id = %s AND lease_owner = %s RETURNING run_id
)
INSERT INTO rlm_durable_steps (run_id, seq, iteration, kind, data) SELECT run_id, %s, %s, %s, %s FROM lease
"""


class PostgresStore(SqlStore):
    """A [`Store`][rlm_events.durable.store.Store] in the PostgreSQL database at `dsn` (`"postgresql://user@host/db"`
    or `"host=/tmp dbname=x"`); the tables are created if missing. Each thread gets its own connection (autocommit;
    writes are explicit transactions). Needs `pip install "rlm-events[postgres]"`."""

    PARAM = "%s"
    ENGINE = "postgres"

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0) -> None:
        super().__init__()
        self.dsn = dsn
        self.connect_timeout = connect_timeout

    def _connect(self) -> Any:
        with requiring("postgres", "rlm_events.durable.PostgresStore", "psycopg 3"):
            import psycopg  # the postgres extra: imported only by this store

        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)))

    def _lock_schema(self, cursor: Any) -> None:
        # CREATE TABLE IF NOT EXISTS races between processes creating it at once: one at a time.
        cursor.execute("SELECT pg_advisory_xact_lock(7265632311)")

    def append(self, run_id: str, owner: str, step: Step, lease_seconds: float) -> None:
        now = time.time()
        completed = step.iteration + 1 if step.kind == "iteration" else None
        with self._transaction(single=True) as cursor:
            cursor.execute(
                _APPEND,
                (
                    now + lease_seconds,
                    now,
                    completed,
                    run_id,
                    owner,
                    step.seq,
                    step.iteration,
                    step.kind,
                    dumps(step.data),
                ),
            )
            if cursor.rowcount != 1:
                raise LeaseLostError.of(run_id, owner)

    def _describe(self) -> str:
        shown = self.dsn.split("password=")[0] if "password=" in self.dsn else self.dsn
        if "@" in shown and "://" in shown:  # never show a password of a URL
            scheme, rest = shown.split("://", 1)
            shown = f"{scheme}://…@{rest.rsplit('@', 1)[1]}"
        return f"PostgreSQL store {shown!r}"


__all__ = ["PostgresStore"]
