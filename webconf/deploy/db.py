"""The one way a process of the deployment opens the metadata database.

The WCS store and the focus's tenant directory share one database (SQLite embedded,
PostgreSQL for scale-out), so they must open it the same way: SQLite in WAL mode (readers
run beside the single writer; NORMAL sync is durable in WAL) with foreign keys on and a
generous busy timeout; a pre-pinged pool elsewhere. A SQLite database file is created 0600
before SQLite opens it (SQLite would make it 0644 less the umask), and it and its `-wal`,
`-shm` and `-journal` files are kept 0600 on every connection: the database holds sealed
secrets and metadata that only the deployment's own processes should read.

PostgreSQL can be lost while a process serves (issue 10, §8). Every new connection goes
through `_connect`, bounded by `PG_CONNECT_TIMEOUT_SECONDS`: a failure becomes
`DatabaseUnavailable`, one line that names the URL (never its password) and the reason,
which `serve` and the server processes print at startup (exit 2) and the WCS answers with
503 + Retry-After while serving (`is_unavailable` tells which exceptions mean "the database
cannot be reached", whatever layer raised them). The pre-pinged pool replaces dead
connections, so requests succeed again once the database is back, without a restart. Each
engine logs one warning when an outage starts (a connection lost, or a connect that fails,
after the database had been reached) and one when it ends (the next connect that works):
not one per request.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import event, exc
from sqlalchemy.engine import Dialect, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger("webconf.db")

PRIVATE_MODE = 0o600
SQLITE_BUSY_TIMEOUT_SECONDS = 30.0
"""How long a SQLite writer waits for the lock another process (or thread) holds."""
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


PG_CONNECT_TIMEOUT_SECONDS = 5.0
"""How long asyncpg may take to open a connection (its default is 60 s): what a process
waits at startup for a database that does not answer, and a request during an outage."""
RETRY_AFTER_SECONDS = 2
"""Retry-After of the 503 that answers a request while the database cannot be reached."""
PG_POOL_TIMEOUT_SECONDS = 10.0
"""How long a request waits for a pooled connection before it fails."""
PG_POOL_RECYCLE_SECONDS = 1800
"""Connections are replaced after this age, before a firewall or balancer in the way
drops them while idle."""


def open_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> AsyncEngine:
    """The engine of `url`. On PostgreSQL each process holds up to `pool_size +
    max_overflow` connections per engine (the WCS's store, the focus's directory), so the
    server's `max_connections` must cover every node's processes. Each checkout is
    pre-pinged: a connection the server or a failover closed is replaced, not handed out.
    There is no single-writer lock there (the store takes SQLite's itself)."""
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        # Every connection is kept (no overflow): an overflow connection is closed when
        # returned, and a burst of joins reading at once opened and closed one per query
        # (a thread, the file and its pragmas each time).
        kwargs.update(connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
                      pool_size=pool_size + max_overflow, max_overflow=0,
                      pool_timeout=PG_POOL_TIMEOUT_SECONDS)
    else:
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True,
                      pool_timeout=PG_POOL_TIMEOUT_SECONDS,
                      pool_recycle=PG_POOL_RECYCLE_SECONDS)
        if make_url(url).get_driver_name() == "asyncpg":
            kwargs["connect_args"] = {"timeout": PG_CONNECT_TIMEOUT_SECONDS}
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name != "sqlite":
        health = _Health(shown_url(url))
        event.listen(engine.sync_engine, "do_connect", health.connect)
        event.listen(engine.sync_engine, "handle_error", health.handle_error)
    if engine.dialect.name == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            create_private(path)
        event.listen(engine.sync_engine, "connect",
                     functools.partial(sqlite_pragmas, path=path))
    return engine


def shown_url(url: str) -> str:
    """`url` as it may be printed and logged: without its password."""
    return make_url(url)._replace(password=None).render_as_string(hide_password=False)


class DatabaseUnavailable(OSError):
    """A connection to the database could not be opened; the message is one line.

    An `OSError`, like the socket error it usually stands for, so callers that already
    report those (`webconf db`, `webconf user`) report it too."""

    def __init__(self, shown: str, reason: str, *, reachable: bool = False) -> None:
        self.url = shown
        self.reason = reason
        if reachable:  # it answered, and refused us: a running server, a wrong setting
            text = f"the database at {shown} refused the connection ({reason})"
        else:
            text = f"cannot reach the database at {shown} ({reason}); is it running?"
        super().__init__(text)

    def __str__(self) -> str:
        return str(self.args[0])


_REFUSALS = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError)
"""The server refused this login or database: a setting to fix, whose message helps."""


def _reason(error: BaseException) -> str:
    """A short reason for a failed connect; the server's own message only for a refusal
    (it names the user or database, never a password)."""
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, TimeoutError):
        return f"no answer within {PG_CONNECT_TIMEOUT_SECONDS:g} s"
    if isinstance(error, socket.gaierror):
        return "unknown host"
    if isinstance(error, asyncpg.CannotConnectNowError):
        return "the server is starting up or shutting down"
    if isinstance(error, asyncpg.TooManyConnectionsError):
        return "too many connections"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    if isinstance(error, (*_REFUSALS, OSError)):
        first = str(error).splitlines()[0][:200] if str(error) else ""
        return first or type(error).__name__
    return type(error).__name__


class _Health:
    """One engine's connects and lost connections: the outage log lines."""

    def __init__(self, shown: str) -> None:
        self.shown = shown
        self.reached = False
        """Once a connection was made, a failure is an outage worth a log line (before,
        it is a startup failure, which the process reports itself)."""
        self.down_since: float | None = None

    def connect(self, dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
        """The `do_connect` hook: the driver's own connect, its failures made one line."""
        try:
            conn = dialect.connect(*cargs, **cparams)
        except Exception as error:
            cause: BaseException = error
            if isinstance(error, dialect.loaded_dbapi.Error) and error.__cause__ is not None:
                cause = error.__cause__  # the driver's own, under SQLAlchemy's adapter
            reason = _reason(cause)
            self.lost(reason)
            raise DatabaseUnavailable(  # a PostgresError is the server's own answer
                self.shown, reason, reachable=isinstance(cause, asyncpg.PostgresError)
            ) from error
        self.reached = True
        if self.down_since is not None:
            log.warning(json.dumps({
                "event": "database.available", "database": self.shown,
                "down_seconds": round(time.monotonic() - self.down_since, 1)}))
            self.down_since = None
        return conn

    def handle_error(self, context: ExceptionContext) -> None:
        if context.is_disconnect:
            self.lost("connection lost")

    def lost(self, reason: str) -> None:
        if self.reached and self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(json.dumps({"event": "database.unavailable", "database": self.shown,
                                    "reason": reason}))


_UNAVAILABLE_CAUSES: tuple[type[BaseException], ...] = (
    DatabaseUnavailable, exc.TimeoutError, asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError)
"""Anywhere in an exception's chain: the database is down, restarting, full, or the pool
had no connection for us in time (`exc.TimeoutError`)."""


def is_unavailable(error: BaseException) -> bool:
    """True when `error` means the database cannot be reached now (answer 503 and let the
    client retry), rather than a bug or a bad request."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, _UNAVAILABLE_CAUSES):
            return True
        if isinstance(current, exc.DBAPIError):
            if current.connection_invalidated:
                return True
            todo.append(current.orig)
        todo += [current.__cause__, current.__context__]
    return False


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory or `file:` URI database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_private(path: Path) -> None:
    """Create `path` empty and 0600 if it does not exist, else make it 0600.

    An existing file is not opened: closing any descriptor of a file drops every POSIX lock
    this process holds on it, and SQLite's connections of this process (an in-process
    server beside a second engine) would lose theirs; another process would then take
    itself for the last user and delete the WAL index under them (SQLITE_IOERR_SHORT_READ).
    """
    if not path.exists():
        flags = os.O_CREAT | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
        os.close(os.open(path, flags, PRIVATE_MODE))
    os.chmod(path, PRIVATE_MODE)


def sqlite_pragmas(dbapi_conn: Any, _record: Any, *, path: Path | None) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    for suffix in _SQLITE_SIDE_FILES if path is not None else ():
        with contextlib.suppress(FileNotFoundError):  # SQLite copies the database's mode,
            os.chmod(f"{path}{suffix}", PRIVATE_MODE)  # this covers files made before
