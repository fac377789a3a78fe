"""The one way a process of the deployment opens the metadata database.

The WCS store and the focus's tenant directory share one database (SQLite embedded,
PostgreSQL for scale-out), so they must open it the same way: SQLite in WAL mode (readers
run beside the single writer; NORMAL sync is durable in WAL) with foreign keys on and a
generous busy timeout; a pre-pinged pool elsewhere.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def open_engine(url: str, *, pool_size: int = 10, max_overflow: int = 20) -> AsyncEngine:
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    else:
        kwargs.update(pool_size=pool_size, max_overflow=max_overflow, pool_pre_ping=True)
    engine = create_async_engine(url, **kwargs)
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
