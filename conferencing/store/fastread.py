"""Hot point reads on SQLite, done on the event loop without a thread hop.

A read through the async engine costs SQLite ~15 us and aiosqlite ~1 ms of CPU under load
(measured: about five hops to its thread per query, each a futex wake and a loop wake-up,
plus SQLAlchemy's statement handling), so a cached cookie's download spent most of its
fixed cost there. The reads that run per request (a download's item, a cookie's state, the
event feed's rows) instead run here: SQL compiled once from the schema's statements, on
one `sqlite3` connection of this process, in WAL mode, where a reader never waits for the
writer. Its busy timeout is zero: a read that would wait (a WAL recovery, a checkpoint
restart) raises at once and the store falls back to the async engine for that read, so the
loop is never held for longer than the read itself. PostgreSQL reads keep the engine
(asyncpg has no thread to hop to).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping
from typing import Any

from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL
from sqlalchemy.sql import ClauseElement

from webconf.deploy.db import sqlite_path, sqlite_pragmas

_SQLITE = sqlite.dialect(paramstyle="named")


def compiled(statement: ClauseElement) -> str:
    """`statement` as SQLite SQL with `:name` parameters (the schema names the columns).
    Every parameter must be a named `bindparam`: an anonymous one (a literal in the
    statement, or one the dialect adds, like LIMIT's OFFSET) would have no value here."""
    sql = statement.compile(dialect=_SQLITE)
    anonymous = [name for name in sql.params if name.startswith("param_")]
    if anonymous:
        raise ValueError(f"unnamed parameters {anonymous} in {str(sql)!r}")
    return str(sql)


class FastReadUnavailable(Exception):
    """This read could not run here now: use the async engine."""


class SqliteReads:
    """One read-only `sqlite3` connection used from the event loop's thread only."""

    def __init__(self, url: URL) -> None:
        database = url.database or ""
        self._database = database
        self._uri = database.startswith("file:")
        self._path = sqlite_path(url.render_as_string(hide_password=False))
        self._conn: sqlite3.Connection | None = None
        self.fallbacks = 0
        """Reads that went to the engine instead (busy, or the file not readable)."""

    def rows(self, sql: str, params: Mapping[str, Any]) -> list[sqlite3.Row]:
        """Every row of `sql` (columns by name); `FastReadUnavailable` if it cannot run."""
        try:
            conn = self._connect()
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as error:
            self.fallbacks += 1
            self.close()  # reopened by the next read: a broken connection is not kept
            raise FastReadUnavailable(str(error)) from error

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self._database, timeout=0, uri=self._uri,
                                   isolation_level=None, check_same_thread=False)
            try:
                sqlite_pragmas(conn, None, path=self._path)
                conn.execute("PRAGMA query_only=ON")
            except BaseException:
                conn.close()
                raise
            conn.row_factory = sqlite3.Row
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
