"""The SQL both shipped stores run ([`SqlStore`][rlm_events.durable.sql.SqlStore]); the engines differ only in how
they connect, open a write transaction and spell a parameter."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .errors import AlreadyDecidedError, LeaseLostError, RunLeasedError, StoreUnavailableError, UnknownRunError
from .store import Json, Link, Status, Step, StoredRun

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rlm_durable_runs (
        run_id TEXT PRIMARY KEY, parent TEXT, relation TEXT, status TEXT NOT NULL, meta TEXT NOT NULL,
        pending TEXT, decision TEXT, outcome TEXT, lease_owner TEXT, lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
        iteration INTEGER NOT NULL DEFAULT 0, created DOUBLE PRECISION NOT NULL, updated DOUBLE PRECISION NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS rlm_durable_steps (
        run_id TEXT NOT NULL, seq INTEGER NOT NULL, iteration INTEGER NOT NULL, kind TEXT NOT NULL,
        data TEXT NOT NULL, PRIMARY KEY (run_id, seq))""",
)
_OURS = (UnknownRunError, AlreadyDecidedError, LeaseLostError, RunLeasedError)  # raised as they are
_RUN_COLUMNS = (
    "run_id, status, meta, parent, relation, pending, decision, outcome, lease_owner, lease_until, iteration, "
    "created, updated"
)


def dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=repr)


def _loads(text: Any) -> Any:
    return None if text is None else json.loads(text)


_JSON_COLUMNS = ("meta", "pending", "decision", "outcome")


def _run(row: Any) -> StoredRun:
    """A run from a row of `_RUN_COLUMNS`: its JSON columns parsed, its numbers as Python numbers."""
    values = dict(zip(_RUN_COLUMNS.split(", "), row, strict=True))
    for name in _JSON_COLUMNS:
        values[name] = _loads(values[name])
    values.update(lease_until=float(values["lease_until"]), created=float(values["created"]))
    values.update(updated=float(values["updated"]), iteration=int(values["iteration"]))
    return StoredRun(**values)


class SqlStore:
    """A [`Store`][rlm_events.durable.store.Store] on a SQL engine. Subclasses give `_connect()` (one connection per
    thread), `_begin()` (the statement opening a write transaction) and `PARAM` (the parameter marker)."""

    PARAM = "?"
    ENGINE = "sql"

    def __init__(self) -> None:
        self._local = threading.local()
        self._ready = False
        self._ready_lock = threading.Lock()

    # -- engine hooks -----------------------------------------------------------------------------------------

    def _connect(self) -> Any:  # pragma: no cover - every engine says how
        raise NotImplementedError

    def _begin(self, cursor: Any) -> None:
        cursor.execute("BEGIN")

    def _describe(self) -> str:  # pragma: no cover - every engine says where
        raise NotImplementedError

    # -- plumbing ---------------------------------------------------------------------------------------------

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        return connection

    def _sql(self, text: str) -> str:
        return text if self.PARAM == "?" else text.replace("?", self.PARAM)

    @contextmanager
    def _transaction(self, *, single: bool = False) -> Iterator[Any]:
        """A cursor in one write transaction: committed when the block returns, rolled back when it raises
        (`single`: the block runs one statement, its own transaction). What the engine raises becomes
        [`StoreUnavailableError`][rlm_events.durable.StoreUnavailableError]."""
        self._ensure_schema()
        try:
            connection = self._connection()
            cursor = connection.cursor()
            if not single:
                self._begin(cursor)
        except Exception as exc:
            self._drop_connection()
            raise StoreUnavailableError(f"{self._describe()}: {type(exc).__name__}: {exc}") from exc
        try:
            yield cursor
            if not single:
                cursor.execute("COMMIT")
        except BaseException as exc:
            try:
                if not single:
                    cursor.execute("ROLLBACK")
            except Exception:
                self._drop_connection()
            if isinstance(exc, Exception) and not isinstance(exc, _OURS):
                raise StoreUnavailableError(f"{self._describe()}: {type(exc).__name__}: {exc}") from exc
            raise
        finally:
            cursor.close()

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.close()

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            try:
                cursor = self._connection().cursor()
                try:
                    self._begin(cursor)
                    self._lock_schema(cursor)
                    for statement in SCHEMA:
                        cursor.execute(self._schema_sql(statement))
                    cursor.execute("COMMIT")
                finally:
                    cursor.close()
            except Exception as exc:
                self._drop_connection()
                raise StoreUnavailableError(f"{self._describe()}: {type(exc).__name__}: {exc}") from exc
            self._ready = True

    def _schema_sql(self, statement: str) -> str:
        return statement

    def _lock_schema(self, cursor: Any) -> None:
        """Serialise creating the tables across processes (SQLite's `BEGIN IMMEDIATE` already does)."""

    # -- the contract -----------------------------------------------------------------------------------------

    def ping(self) -> None:
        with self._transaction() as cursor:
            cursor.execute("SELECT COUNT(*) FROM rlm_durable_runs WHERE run_id = ''")

    def create(
        self, run_id: str, meta: dict[str, Any], owner: str, lease_seconds: float, link: Link | None = None
    ) -> None:
        parent, relation = link or (None, None)
        now = time.time()
        self._write(
            "INSERT INTO rlm_durable_runs (run_id, parent, relation, status, meta, lease_owner, lease_until, "
            "iteration, created, updated) VALUES (?, ?, ?, 'running', ?, ?, ?, 0, ?, ?)",
            (run_id, parent, relation, dumps(meta), owner, now + lease_seconds, now, now),
        )

    def acquire(self, run_id: str, owner: str, lease_seconds: float) -> StoredRun:
        now = time.time()
        taken = self._write(
            "UPDATE rlm_durable_runs SET lease_owner = ?, lease_until = ?, updated = ? WHERE run_id = ? "
            "AND (lease_owner IS NULL OR lease_until < ? OR lease_owner = ?)",
            (owner, now + lease_seconds, now, run_id, now, owner),
        )
        run = self.load(run_id)  # UnknownRunError when there is none
        if taken != 1:
            raise RunLeasedError(run_id, run.lease_owner or "?", max(0.0, run.lease_until - now))
        return run

    def append(self, run_id: str, owner: str, step: Step, lease_seconds: float) -> None:
        now = time.time()
        with self._transaction() as cursor:
            completed = step.iteration + 1 if step.kind == "iteration" else None
            cursor.execute(
                self._sql(
                    "UPDATE rlm_durable_runs SET lease_until = ?, updated = ?, iteration = COALESCE(?, iteration) "
                    "WHERE run_id = ? AND lease_owner = ?"
                ),
                (now + lease_seconds, now, completed, run_id, owner),
            )
            if cursor.rowcount != 1:
                raise LeaseLostError.of(run_id, owner)
            cursor.execute(
                self._sql("INSERT INTO rlm_durable_steps (run_id, seq, iteration, kind, data) VALUES (?, ?, ?, ?, ?)"),
                (run_id, step.seq, step.iteration, step.kind, dumps(step.data)),
            )

    def _write(self, statement: str, parameters: tuple[Any, ...]) -> int:
        """Run one statement in its own transaction; the number of rows it changed."""
        with self._transaction() as cursor:
            cursor.execute(self._sql(statement), parameters)
            return int(cursor.rowcount)

    def finish(self, run_id: str, owner: str, status: Status, *, outcome: Json = None, pending: Json = None) -> None:
        changed = self._write(
            "UPDATE rlm_durable_runs SET status = ?, outcome = ?, pending = ?, decision = NULL, "
            "lease_owner = NULL, lease_until = 0, updated = ? WHERE run_id = ? AND lease_owner = ?",
            (status, dumps(outcome), dumps(pending), time.time(), run_id, owner),
        )
        if changed != 1:
            raise LeaseLostError(f"durable run {run_id!r}: worker {owner!r} no longer holds its lease")

    def release(self, run_id: str, owner: str) -> None:
        self._write(
            "UPDATE rlm_durable_runs SET lease_owner = NULL, lease_until = 0 WHERE run_id = ? AND lease_owner = ?",
            (run_id, owner),
        )

    def decide(self, run_id: str, decision: dict[str, Any]) -> None:
        with self._transaction() as cursor:
            cursor.execute(
                self._sql(
                    "UPDATE rlm_durable_runs SET decision = ?, updated = ? WHERE run_id = ? AND status = 'suspended' "
                    "AND decision IS NULL"
                ),
                (dumps(decision), time.time(), run_id),
            )
            if cursor.rowcount != 1:
                run = self._select(cursor, run_id)
                why = "it was decided already" if run.decision is not None else f"it is {run.status}, not suspended"
                raise AlreadyDecidedError(f"durable run {run_id!r} waits for no decision: {why}")

    def take_decision(self, run_id: str, owner: str) -> None:
        self._write(
            "UPDATE rlm_durable_runs SET status = 'running', pending = NULL, decision = NULL, updated = ? "
            "WHERE run_id = ? AND lease_owner = ?",
            (time.time(), run_id, owner),
        )

    def load(self, run_id: str) -> StoredRun:
        with self._transaction() as cursor:
            run = self._select(cursor, run_id)
            run.steps = self._steps(cursor, run_id)
        return run

    def runs(self, status: Status | None = None) -> list[StoredRun]:
        with self._transaction() as cursor:
            query = f"SELECT {_RUN_COLUMNS} FROM rlm_durable_runs"
            if status is not None:
                cursor.execute(self._sql(query + " WHERE status = ? ORDER BY created DESC"), (status,))
            else:
                cursor.execute(query + " ORDER BY created DESC")
            return [_run(row) for row in cursor.fetchall()]

    def close(self) -> None:
        self._drop_connection()

    def _select(self, cursor: Any, run_id: str) -> StoredRun:
        cursor.execute(self._sql(f"SELECT {_RUN_COLUMNS} FROM rlm_durable_runs WHERE run_id = ?"), (run_id,))
        row = cursor.fetchone()
        if row is None:
            raise UnknownRunError(run_id)
        return _run(row)

    def _steps(self, cursor: Any, run_id: str) -> list[Step]:
        cursor.execute(
            self._sql("SELECT seq, iteration, kind, data FROM rlm_durable_steps WHERE run_id = ? ORDER BY seq"),
            (run_id,),
        )
        return [Step(int(seq), int(iteration), kind, _loads(data)) for seq, iteration, kind, data in cursor.fetchall()]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._describe()})"


__all__ = ["SCHEMA", "SqlStore", "dumps"]
