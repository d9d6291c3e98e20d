"""The embedded default store: one SQLite file (stdlib `sqlite3`), in WAL mode, shared safely by the threads and
processes of one machine."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .sql import SqlStore


class SQLiteStore(SqlStore):
    """A [`Store`][rlm_events.durable.store.Store] in the SQLite file at `path` (created with its tables if missing).

    Guarantees: every write is its own `BEGIN IMMEDIATE` transaction, so concurrent writers queue (up to
    `busy_timeout` seconds) rather than fail; the journal is WAL with `synchronous=NORMAL`, so a committed step
    survives a crash of the process (and of the machine, up to the last checkpoint of the WAL). Each thread gets its
    own connection. The file must be on a local disk: SQLite's locks do not hold on network file systems.
    """

    ENGINE = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout: float = 30.0) -> None:
        super().__init__()
        self.path = Path(path)
        self.busy_timeout = busy_timeout

    def _connect(self) -> Any:
        connection = sqlite3.connect(
            str(self.path), timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    def _begin(self, cursor: Any) -> None:
        cursor.execute("BEGIN IMMEDIATE")

    def _schema_sql(self, statement: str) -> str:
        return statement.replace("DOUBLE PRECISION", "REAL")

    def _describe(self) -> str:
        return f"SQLite store {str(self.path)!r}"


__all__ = ["SQLiteStore"]
