"""Schema migrations: each wing's Alembic environment, run from code (docs/protocol.md §7).

The WCS store and the focus's directory share one database but are separate wings, so each
has its own Alembic environment (`script_location` inside its package, no alembic.ini) and
its own version table (`alembic_version_wcs`, `alembic_version_focus`). This module knows no
wing: a wing describes its environment as a `Schema`, and the wings register theirs as the
`webconf.schemas` entry points in pyproject.toml, which `installed_schemas` reads for
`webconf init` and `webconf db` (so the core imports no wing by name).

There is one way a schema is made: `upgrade`, which `webconf init`, `webconf db upgrade` and
the `create=True` open paths of the store and the directory all call. It runs on the async
engine through `run_sync`, in one transaction per run:
- PostgreSQL: `pg_advisory_xact_lock(MIGRATION_LOCK)` first, so concurrent runs (several
  nodes starting) queue and the later ones find the schema at head; DDL is transactional.
- SQLite: the transaction starts with `BEGIN IMMEDIATE` (the driver's own deferred BEGIN is
  turned off), which takes the single writer lock at once for the same effect.

`check` is what `serve` runs instead: it reads the version table and refuses a schema that
is behind or ahead of the code (`SchemaError`, whose message names `webconf db upgrade`).
A database that has a wing's tables but no version table was made before migrations existed
and is reported as behind; one that has neither is empty (also refused: `init` makes it).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import MetaData, event, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from .db import open_engine

ENTRY_POINT_GROUP = "webconf.schemas"
MIGRATION_LOCK = 0x77656263_6F6E66  # "webconf": the advisory lock key of every migration run
log = logging.getLogger("webconf.migrate")

State = Literal["current", "behind", "ahead", "unversioned", "empty"]
"""current: at head; behind: an older revision; ahead: a revision this code does not know
(a newer release migrated it); unversioned: the wing's tables without a version table (made
before migrations); empty: neither."""


@dataclass(frozen=True)
class Schema:
    """One wing's Alembic environment."""

    name: str
    """What `webconf db status` calls it (`wcs`, `focus`)."""
    script_location: Path
    """The environment's directory (env.py, versions/)."""
    version_table: str
    """This wing's own Alembic version table."""
    metadata: MetaData
    """The wing's tables as the code defines them (autogenerate and the migration test)."""


@dataclass(frozen=True)
class SchemaStatus:
    schema: str
    state: State
    current: tuple[str, ...]
    """The revisions in the version table (empty when there is none)."""
    head: str
    """The newest revision this code ships."""

    def describe(self) -> str:
        at = ",".join(self.current) or "none"
        return f"{self.schema}: {self.state} (database at {at}, code at {self.head})"


class SchemaError(RuntimeError):
    """The database's schema does not match the code; the message is one line."""

    def __init__(self, status: SchemaStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def upgrade_hint(where: str | None) -> str:
    """The command that fixes it, with the deployment directory when known."""
    return f"run `webconf db upgrade {where or 'DIR'}`"


def mismatch_message(status: SchemaStatus, where: str | None = None) -> str:
    """One line for a schema that `serve` refuses."""
    name, hint = status.schema, upgrade_hint(where)
    if status.state == "empty":
        return f"the database has no {name} tables yet: {hint}"
    if status.state == "unversioned":
        return (f"the database's {name} tables are behind the code (made before migrations, "
                f"no {status.head} history): {hint}, or move the database aside")
    at = ",".join(status.current)
    if status.state == "ahead":
        return (f"the database's {name} schema ({at}) is ahead of this code ({status.head}): "
                f"a newer release migrated it; upgrade webconf, or {hint} with this release")
    return f"the database's {name} schema ({at}) is behind the code ({status.head}): {hint}"


def installed_schemas() -> list[Schema]:
    """Every schema the installed wings register (`webconf.schemas` entry points)."""
    found = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        schema = entry.load()
        if not isinstance(schema, Schema):
            raise TypeError(f"entry point {entry.value} is not a webconf Schema")
        found.append(schema)
    return found


def _alembic_config(schema: Schema, connection: Connection | None = None) -> Any:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(schema.script_location))
    cfg.attributes["schema"] = schema
    cfg.attributes["connection"] = connection
    return cfg


def _head(schema: Schema) -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(_alembic_config(schema)).get_heads()
    if len(heads) != 1:
        raise RuntimeError(f"the {schema.name} migrations have {len(heads)} heads: {heads}")
    return str(heads[0])


def _status(sync: Connection, schema: Schema) -> SchemaStatus:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    head = _head(schema)
    tables = set(inspect(sync).get_table_names())
    if schema.version_table not in tables:
        state: State = "unversioned" if tables & set(schema.metadata.tables) else "empty"
        return SchemaStatus(schema.name, state, (), head)
    context = MigrationContext.configure(sync, opts={"version_table": schema.version_table})
    current = tuple(sorted(str(r) for r in context.get_current_heads()))
    script = ScriptDirectory.from_config(_alembic_config(schema))
    known = {str(r.revision) for r in script.walk_revisions()}
    if not current:
        state = "unversioned" if tables & set(schema.metadata.tables) else "empty"
    elif not set(current) <= known:
        state = "ahead"
    else:
        state = "current" if current == (head,) else "behind"
    return SchemaStatus(schema.name, state, current, head)


def _upgrade(sync: Connection, schema: Schema) -> tuple[SchemaStatus, SchemaStatus]:
    from alembic import command

    before = _status(sync, schema)
    if before.state == "unversioned":
        raise SchemaError(before, mismatch_message(before))
    if before.state == "ahead":
        raise SchemaError(before, mismatch_message(before))
    if before.state != "current":
        command.upgrade(_alembic_config(schema, sync), "head")
    return before, _status(sync, schema)


def _migration_engine(url: str) -> AsyncEngine:
    """An engine whose SQLite transactions are real (BEGIN IMMEDIATE, DDL included)."""
    engine = open_engine(url, pool_size=1, max_overflow=0)
    if engine.dialect.name == "sqlite":
        def no_driver_begin(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # the driver would COMMIT before DDL

        def begin_immediate(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        event.listen(engine.sync_engine, "connect", no_driver_begin)
        event.listen(engine.sync_engine, "begin", begin_immediate)
    return engine


async def upgrade(url: str, schemas: Iterable[Schema]
                  ) -> list[tuple[SchemaStatus, SchemaStatus]]:
    """Bring each schema to head in one locked transaction; (before, after) per schema.
    `SchemaError` for a database this cannot migrate (unversioned tables, or ahead)."""
    engine = _migration_engine(url)
    try:
        async with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": MIGRATION_LOCK})
            return [await conn.run_sync(_upgrade, schema) for schema in schemas]
    finally:
        await engine.dispose()


async def status(url: str, schemas: Iterable[Schema]) -> list[SchemaStatus]:
    """Where each schema stands (reads only)."""
    engine = open_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect() as conn:
            return [await conn.run_sync(_status, schema) for schema in schemas]
    finally:
        await engine.dispose()


async def check(engine: AsyncEngine, schema: Schema, where: str | None = None) -> None:
    """`SchemaError` unless `schema` is at head in `engine`'s database (what serve runs)."""
    async with engine.connect() as conn:
        found = await conn.run_sync(_status, schema)
    if found.state != "current":
        raise SchemaError(found, mismatch_message(found, where))


def run_env(context: Any) -> None:
    """The body of every wing's env.py: migrate the connection `upgrade` handed over, with
    the wing's version table. Online only (there is no offline SQL mode)."""
    cfg = context.config
    schema: Schema = cfg.attributes["schema"]
    connection: Connection | None = cfg.attributes.get("connection")
    if connection is None:
        raise RuntimeError("webconf migrations run through webconf.deploy.migrate.upgrade")
    context.configure(connection=connection, target_metadata=schema.metadata,
                      version_table=schema.version_table, render_as_batch=True,
                      compare_type=True, include_name=_own_tables(schema))
    with context.begin_transaction():
        context.run_migrations()


def _own_tables(schema: Schema) -> Any:
    """Autogenerate's filter: the other wing's tables in the same database are not ours."""
    def include_name(name: str | None, kind: str, _parents: Any) -> bool:
        return kind != "table" or name in schema.metadata.tables
    return include_name


def differences(sync: Connection, schema: Schema) -> list[Any]:
    """What autogenerate would change to make the database equal the wing's metadata
    (empty when a migrated database matches the code: tests/test_migrations.py)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(sync, opts={
        "compare_type": True, "include_name": _own_tables(schema),
        "version_table": schema.version_table})
    return list(compare_metadata(context, schema.metadata))


def upgrade_sync(url: str, schemas: Sequence[Schema]) -> list[tuple[SchemaStatus, SchemaStatus]]:
    """`upgrade` from synchronous code (`webconf init`, `init_deployment`). When the caller's
    thread already runs an event loop (an async test, the load tester), the upgrade runs on a
    private loop in a worker thread: `asyncio.run` cannot nest."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(upgrade(url, schemas))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="migrate") as pool:
        return pool.submit(lambda: asyncio.run(upgrade(url, schemas))).result()
