"""The embedded default store: one SQLite file (stdlib `sqlite3`), in WAL mode, shared safely by the threads and
processes of one machine."""

from __future__ import annotations

import sqlite3
import time
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
        try:
            self._enable_wal(connection)
            connection.execute("PRAGMA synchronous=NORMAL")
        except BaseException:
            connection.close()
            raise
        return connection

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        """Switch the file to WAL, waiting (up to `busy_timeout`) for other processes doing the same.

        Why a loop: SQLite answers a journal-mode change that races another connection's with SQLITE_BUSY at once,
        without calling the busy handler, so `timeout=` does not cover it. Seen when two workers open a new file
        together (the first run of a fleet)."""
        deadline = time.monotonic() + self.busy_timeout
        pause = 0.001
        while True:
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _begin(self, cursor: Any) -> None:
        cursor.execute("BEGIN IMMEDIATE")

    def _schema_sql(self, statement: str) -> str:
        return statement.replace("DOUBLE PRECISION", "REAL")

    def _describe(self) -> str:
        return f"SQLite store {str(self.path)!r}"


__all__ = ["SQLiteStore"]
