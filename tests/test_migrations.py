"""Schema migrations (webconf/deploy/migrate.py): head equals the code's tables on both
backends, upgrades are idempotent and safe to run at once, and serving refuses a schema
that is behind or ahead of the code with one line naming `webconf db upgrade DIR`."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from conferencing.store.migrations import SCHEMA as WCS
from focus.migrations import SCHEMA as FOCUS
from webconf.deploy import migrate
from webconf.deploy.config import Config, load_config
from webconf.deploy.db import open_engine
from webconf.deploy.init import init_deployment

ROOT = Path(__file__).resolve().parents[1]
WCS_HEAD = migrate._head(WCS)
"""The WCS wing's newest revision (the code's), whichever revision that is."""


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


def test_both_wings_register_their_schema() -> None:
    assert {s.name for s in migrate.installed_schemas()} == {"wcs", "focus"}
    assert {s.version_table for s in (WCS, FOCUS)} == {"alembic_version_wcs",
                                                        "alembic_version_focus"}


async def test_empty_database_upgrades_to_the_metadata(store_url: str) -> None:
    """From nothing through every revision to head: autogenerate then finds no difference
    between the database and each wing's metadata (SQLite and PostgreSQL)."""
    schemas = [WCS, FOCUS]
    before = await migrate.status(store_url, schemas)
    assert [s.state for s in before] == ["empty", "empty"]
    results = await migrate.upgrade(store_url, schemas)
    assert [(b.state, a.state) for b, a in results] == [("empty", "current")] * 2
    engine = open_engine(store_url)
    try:
        async with engine.connect() as conn:
            for schema in schemas:
                assert await conn.run_sync(migrate.differences, schema) == [], schema.name
    finally:
        await engine.dispose()
    again = await migrate.upgrade(store_url, schemas)  # a second run is a no-op
    assert [(b.state, a.state) for b, a in again] == [("current", "current")] * 2


def _set_version(cfg: Config, table: str, revision: str | None) -> None:
    async def change() -> None:
        engine = open_engine(cfg.store_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text(f"DELETE FROM {table}"))
                if revision is not None:
                    await conn.execute(text(f"INSERT INTO {table} VALUES (:r)"),
                                       {"r": revision})
        finally:
            await engine.dispose()
    asyncio.run(change())


def test_db_upgrade_and_status_commands(deployment: Config) -> None:
    base = str(deployment.base_dir)
    status = run("-m", "webconf", "db", "status", base)
    assert status.returncode == 0, status.stderr
    assert f"wcs: current (database at {WCS_HEAD}, code at {WCS_HEAD})" in status.stdout
    upgraded = run("-m", "webconf", "db", "upgrade", base)  # init migrated: a no-op
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"wcs: already at {WCS_HEAD}" in upgraded.stdout
    assert "focus: already at 0001" in upgraded.stdout


def test_serve_refuses_a_schema_ahead_or_behind(deployment: Config) -> None:
    base = str(deployment.base_dir)
    _set_version(deployment, "alembic_version_wcs", "ffffffff")  # a newer release's
    wcs = run("-m", "conferencing", base, timeout=60)
    assert wcs.returncode == 2
    line = wcs.stderr.strip().splitlines()[-1]
    assert "ahead" in line and f"webconf db upgrade {base}" in line
    status = run("-m", "webconf", "db", "status", base)
    assert status.returncode == 1 and "wcs: ahead" in status.stdout
    served = run("-m", "webconf", "serve", base, timeout=120)
    assert served.returncode != 0
    assert f"webconf db upgrade {base}" in served.stderr  # the child's one line, relayed

    _set_version(deployment, "alembic_version_wcs", "0001")
    _set_version(deployment, "alembic_version_focus", None)  # tables, no history: behind
    focus = run("-m", "focus", base, timeout=60)
    assert focus.returncode == 2
    line = focus.stderr.strip().splitlines()[-1]
    assert "behind" in line and f"webconf db upgrade {base}" in line


def test_serve_refuses_an_empty_database(tmp_path: Path) -> None:
    """A deployment whose database was never migrated (here: moved aside) is refused."""
    cfg = init_deployment(tmp_path / "dep")
    db = Path(cfg.store_url.removeprefix("sqlite+aiosqlite:///"))
    db.rename(tmp_path / "aside.db")
    wcs = run("-m", "conferencing", str(cfg.base_dir), timeout=60)
    assert wcs.returncode == 2
    assert "no wcs tables yet" in wcs.stderr and "webconf db upgrade" in wcs.stderr
    assert run("-m", "webconf", "db", "upgrade", str(cfg.base_dir)).returncode == 0
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert {"conferences", "sip_users", "alembic_version_wcs"} <= tables


def test_concurrent_upgrades_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    """Two `webconf db upgrade` at once on an empty PostgreSQL: the advisory lock makes one
    wait, and both succeed."""
    base = tmp_path / "dep"
    result = run("-m", "webconf", "init", str(base), "--database", pg_url,
                 "--share", str(tmp_path / "shared"))
    assert result.returncode == 0, result.stderr
    cfg = load_config(base)
    assert cfg.store_url == pg_url and cfg.share_dir == tmp_path / "shared"
    assert cfg.share_dir.is_dir()

    async def drop_all() -> None:
        engine = open_engine(pg_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("DROP SCHEMA public CASCADE"))
                await conn.execute(text("CREATE SCHEMA public"))
        finally:
            await engine.dispose()
    asyncio.run(drop_all())
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "webconf", "db", "upgrade", str(base)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    texts = "".join(out for out, _ in outputs)
    assert texts.count(f"wcs: empty -> {WCS_HEAD}") + texts.count(
        f"wcs: already at {WCS_HEAD}") == 2
    assert texts.count("focus: empty -> 0001") + texts.count("focus: already at 0001") == 2
    assert texts.count("empty -> ") == 2  # one run made both schemas, the other waited
    assert asyncio.run(migrate.status(pg_url, [WCS, FOCUS]))[0].state == "current"
