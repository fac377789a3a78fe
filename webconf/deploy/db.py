"""The one way a process of the deployment opens the metadata database.

The WCS store and the focus's tenant directory share one database (SQLite embedded,
PostgreSQL for scale-out), so they must open it the same way: SQLite in WAL mode (readers
run beside the single writer; NORMAL sync is durable in WAL) with foreign keys on and a
generous busy timeout; a pre-pinged pool elsewhere. A SQLite database file is created 0600
before SQLite opens it (SQLite would make it 0644 less the umask), and it and its `-wal`,
`-shm` and `-journal` files are kept 0600 on every connection: the database holds sealed
secrets and metadata that only the deployment's own processes should read.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

PRIVATE_MODE = 0o600
_SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


PG_CONNECT_TIMEOUT_SECONDS = 10.0
"""How long asyncpg may take to open a connection (its default is 60 s)."""
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
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True,
                      pool_timeout=PG_POOL_TIMEOUT_SECONDS,
                      pool_recycle=PG_POOL_RECYCLE_SECONDS)
        if make_url(url).get_driver_name() == "asyncpg":
            kwargs["connect_args"] = {"timeout": PG_CONNECT_TIMEOUT_SECONDS}
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            create_private(path)
        event.listen(engine.sync_engine, "connect",
                     functools.partial(_sqlite_pragmas, path=path))
    return engine


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL; None for an in-memory or `file:` URI database."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def create_private(path: Path) -> None:
    """Create `path` empty and 0600 if it does not exist, else make it 0600."""
    flags = os.O_CREAT | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
    os.close(os.open(path, flags, PRIVATE_MODE))
    os.chmod(path, PRIVATE_MODE)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any, *, path: Path | None) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
    for suffix in _SQLITE_SIDE_FILES if path is not None else ():
        with contextlib.suppress(FileNotFoundError):  # SQLite copies the database's mode,
            os.chmod(f"{path}{suffix}", PRIVATE_MODE)  # this covers files made before
