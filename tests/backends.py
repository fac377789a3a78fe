"""The store backends the tests run on: SQLite (embedded) and PostgreSQL (scale-out).

Which backends: `WEBCONF_TEST_BACKENDS` (comma-separated, default both). PostgreSQL is the
server at 127.0.0.1:5432 (trust auth, database `test`) when one answers; else a throwaway
cluster that `initdb` makes in a temp dir and `postgres` serves on a free loopback port
and a socket in that dir, as `nobody` when we are root (initdb refuses root). The
postmaster is our child and dies with us (`die_with_parent`), so a killed run leaves no
postgres behind. Neither available: `PgUnavailable`, which the fixtures turn into a
failure that says what to install; never a silent skip.

Each test gets its own database `webconf_t_<random>`. DROP DATABASE forces a checkpoint
(about 1 s here), so a database is not dropped after its test: its backends are
terminated, every schema and large object is dropped, and the now-empty database goes
back to a pool for the next test. The pool is dropped at the end of the session.

Admin SQL runs on a private event loop in its own thread, so it never touches the loop
that pytest-asyncio gives a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from webconf.deploy.lifetime import die_with_parent
from webconf.deploy.local import free_port

BACKENDS_ENV = "WEBCONF_TEST_BACKENDS"
ALL_BACKENDS = ("sqlite", "postgresql")
DEFAULT_SERVER = ("127.0.0.1", 5432, "postgres", "test")
"""host, port, user, admin database of a PostgreSQL server the machine may run."""
DB_PREFIX = "webconf_t_"

T = TypeVar("T")


class PgUnavailable(RuntimeError):
    """No PostgreSQL to test on: neither a server nor initdb."""


def selected_backends() -> tuple[str, ...]:
    """The backends named by `WEBCONF_TEST_BACKENDS`, in the order of `ALL_BACKENDS`."""
    raw = os.environ.get(BACKENDS_ENV, "").strip()
    if not raw:
        return ALL_BACKENDS
    names = {name.strip().lower() for name in raw.split(",") if name.strip()}
    unknown = names - set(ALL_BACKENDS)
    if unknown or not names:
        raise ValueError(f"{BACKENDS_ENV}={raw!r}: expected a comma-separated subset of "
                         f"{', '.join(ALL_BACKENDS)}")
    return tuple(name for name in ALL_BACKENDS if name in names)


class _LoopThread:
    """An event loop in a daemon thread, for admin SQL from sync fixtures."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="pg-admin",
                                        daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


_RESET_SQL = r"""
DO $$
DECLARE name text;
BEGIN
  FOR name IN SELECT nspname FROM pg_namespace
              WHERE nspname NOT LIKE 'pg\_%' AND nspname <> 'information_schema' LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', name);
  END LOOP;
END $$;
CREATE SCHEMA public;
SELECT lo_unlink(oid) FROM pg_largeobject_metadata;
"""
"""Empties a test database: every user schema (tables, sequences, types) and large object."""


class PgServer:
    """A PostgreSQL server for the tests, and the per-test databases made on it."""

    def __init__(self, host: str, port: int, user: str, admin_db: str,
                 cluster: _Cluster | None = None) -> None:
        self.host = host
        self.port = port
        self.user = user
        self.admin_db = admin_db
        self._cluster = cluster
        self._admin = _LoopThread()
        self._free: list[str] = []
        self._all: set[str] = set()
        self._lock = threading.Lock()

    def url(self, database: str, driver: str = "postgresql+asyncpg") -> str:
        return f"{driver}://{self.user}@{self.host}:{self.port}/{database}"

    @property
    def description(self) -> str:
        where = f"{self.host}:{self.port}"
        return f"throwaway cluster on {where}" if self._cluster else f"server on {where}"

    async def _connect(self, database: str) -> asyncpg.Connection:
        return await asyncpg.connect(host=self.host, port=self.port, user=self.user,
                                     database=database, timeout=10)

    async def _execute(self, database: str, sql: str) -> None:
        conn = await self._connect(database)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def acquire(self) -> str:
        """An empty database of our own; its name."""
        with self._lock:
            if self._free:
                return self._free.pop()
        name = DB_PREFIX + secrets.token_hex(6)
        self._admin.run(self._execute(self.admin_db, f'CREATE DATABASE "{name}"'))
        with self._lock:
            self._all.add(name)
        return name

    def release(self, name: str) -> None:
        """Empty the database (whatever the test left connected) and pool it."""
        self._admin.run(self._reset(name))
        with self._lock:
            self._free.append(name)

    async def _reset(self, name: str) -> None:
        admin = await self._connect(self.admin_db)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = $1 AND pid <> pg_backend_pid()", name)
        finally:
            await admin.close()
        await self._execute(name, _RESET_SQL)

    def close(self) -> None:
        """Drop every database we made, then stop our cluster if we started one."""
        try:
            if self._cluster is None:
                for name in sorted(self._all):
                    with contextlib.suppress(Exception):
                        self._admin.run(self._execute(
                            self.admin_db, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            self._admin.close()
            if self._cluster is not None:
                self._cluster.stop()


async def _answers(host: str, port: int, user: str, database: str) -> bool:
    try:
        conn = await asyncpg.connect(host=host, port=port, user=user, database=database,
                                     timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def _pg_tool(name: str) -> str | None:
    """Debian keeps initdb and postgres in /usr/lib/postgresql/VERSION/bin; newest first."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"),
                      key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
                      reverse=True)
    for directory in [*versions, Path("/usr/local/bin")]:
        path = directory / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


CLUSTER_PREFIX = "webconf-pg-"
STALE_AFTER_SECONDS = 600.0


def _sweep_stale_clusters() -> None:
    """Remove the temp dirs of throwaway clusters whose run was killed (the postmaster died
    with it, the files stayed): older than `STALE_AFTER_SECONDS`, no live postmaster."""
    for path in Path(tempfile.gettempdir()).glob(CLUSTER_PREFIX + "*"):
        with contextlib.suppress(OSError, ValueError):
            if time.time() - path.stat().st_mtime < STALE_AFTER_SECONDS:
                continue
            pid_file = path / "data" / "postmaster.pid"
            if pid_file.exists():
                pid = int(pid_file.read_text().split()[0])
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 0)
                    continue  # still serving someone
            shutil.rmtree(path, ignore_errors=True)


class _Cluster:
    """A throwaway cluster: initdb in a temp dir, the postmaster our child."""

    def __init__(self, initdb: str, postgres: str) -> None:
        _sweep_stale_clusters()
        self.dir = Path(tempfile.mkdtemp(prefix=CLUSTER_PREFIX))
        self.port = free_port()
        user: str | None = None
        if os.geteuid() == 0:  # initdb refuses root; the files must be the server's
            user = "nobody"
            entry = pwd.getpwnam(user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        as_user: dict[str, Any] = {} if user is None else {"user": user, "group":
                                                             pwd.getpwnam(user).pw_gid,
                                                             "extra_groups": []}
        data = self.dir / "data"
        log = self.dir / "log"
        env = {**os.environ, "LC_ALL": "C"}
        subprocess.run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust",
                        "--no-sync", "-E", "UTF8", "--locale=C"], check=True, env=env,
                       cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       timeout=120, **as_user)
        with open(os.open(log, os.O_CREAT | os.O_WRONLY, 0o644), "wb") as log_file:
            if user is not None:
                os.chown(log, pwd.getpwnam(user).pw_uid, -1)
            # fsync off: a test cluster need not survive a power cut, and is much faster.
            self.proc = subprocess.Popen(
                [postgres, "-D", str(data), "-p", str(self.port), "-k", str(self.dir),
                 "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
                 "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                 "-c", "max_connections=200"],
                cwd=self.dir, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=die_with_parent(signal.SIGQUIT), **as_user)
        self.log = log

    def wait_ready(self, timeout: float = 30.0) -> None:
        loop = asyncio.new_event_loop()
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                if loop.run_until_complete(_answers("127.0.0.1", self.port, "postgres",
                                                    "postgres")):
                    return
                time.sleep(0.1)
        finally:
            loop.close()
        tail = self.log.read_text(errors="replace")[-2000:]
        self.stop()
        raise PgUnavailable(f"the throwaway PostgreSQL cluster did not start:\n{tail}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_server() -> PgServer:
    """The machine's server if one answers, else a throwaway cluster; `PgUnavailable`."""
    host, port, user, admin_db = DEFAULT_SERVER
    probe = asyncio.new_event_loop()
    try:
        running = probe.run_until_complete(_answers(host, port, user, admin_db))
    finally:
        probe.close()
    if running:
        return PgServer(host, port, user, admin_db)
    initdb, postgres = _pg_tool("initdb"), _pg_tool("postgres")
    if initdb is None or postgres is None:
        raise PgUnavailable(
            f"PostgreSQL tests need a server at {host}:{port} (trust auth, user {user}, "
            f"database {admin_db}) or initdb and postgres to start a throwaway one: install "
            f"Debian's postgresql (scripts/system-deps.sh does), or set {BACKENDS_ENV}=sqlite "
            "to test SQLite only")
    cluster = _Cluster(initdb, postgres)
    cluster.wait_ready()
    return PgServer("127.0.0.1", cluster.port, "postgres", "postgres", cluster)
