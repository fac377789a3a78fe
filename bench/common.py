"""Shared pieces of the benchmarks: a real deployment, process RSS, medians and percentiles.

Every benchmark module exposes `run(smoke: bool) -> list[Row]`: it runs our side and its
baseline in the same run, on the same machine, several rounds, and reports medians and
the ratio ours/baseline (higher is better unless `lower_is_better`). `smoke=True` is the
short CI variant that only proves the script still works.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webconf import stats
from webconf.deploy.config import Config
from webconf.deploy.local import LocalDeployment, ServeProcess
from webconf.deploy.local import free_port as free_port  # the one copy, re-exported

from .report import print_table


def median(values: Sequence[float]) -> float:
    """The median (webconf.stats' 50th percentile); 0.0 for no values, as rows hold numbers."""
    return percentile(values, 50)


def percentile(values: Sequence[float], p: float) -> float:
    """`webconf.stats.percentile` (the loadtest's definition too); 0.0 for no values."""
    value = stats.percentile(values, p)
    return 0.0 if value is None else value


def peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident set) of a live process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_mib(pid: int) -> float:
    """Current VmRSS of a live process, in MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads) so far; 0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def stop_baseline(proc: subprocess.Popen[Any], timeout: float) -> None:
    """SIGTERM a baseline server (started in its own session), SIGKILL its group if it lingers."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def require(*tools: str) -> list[str]:
    """The tools of `tools` that are missing from PATH (benchmarks skip their rows)."""
    return [t for t in tools if shutil.which(t) is None]


@dataclass
class Stack:
    """A real deployment served by `webconf serve` (focus + WCS processes)."""

    cfg: Config
    serve: ServeProcess
    workdir: Path

    @property
    def pids(self) -> dict[str, int]:
        out = {}
        for child in children(self.serve.pid):
            line = cmdline(child)
            if "-m conferencing" in line:
                out["wcs"] = child
            elif "-m focus" in line:
                out["focus"] = child
        return out

    def peak_rss(self) -> dict[str, float]:
        return {name: round(peak_rss_mib(pid), 1) for name, pid in self.pids.items()}

    def current_rss(self) -> dict[str, float]:
        return {name: round(rss_mib(pid), 1) for name, pid in self.pids.items()}


@contextlib.contextmanager
def stack(*, users: Sequence[tuple[str, str]] = (), env: dict[str, str] | None = None,
          tenants: Sequence[str] = ("contoso.example",), tcp_sip: bool = False,
          ready_timeout: float = 90.0) -> Iterator[Stack]:
    """Init a deployment in a temp dir, add users, run `webconf serve`; always clean up.
    The servers die with this process (`webconf.deploy.local.LocalDeployment`)."""
    full_env = {"WEBCONF_FOCUS_MAX_CONNECTIONS_PER_SOURCE": "1000000",
                "WEBCONF_FOCUS_MAX_CONNECTIONS": "1000000", **(env or {})}
    with LocalDeployment(tenants=tenants, users=users, env=full_env, prefix="webconf-bench-",
                         tcp_sip=tcp_sip, ready_timeout=ready_timeout) as local:
        assert local.serve is not None and local.workdir is not None
        yield Stack(local.config, local.serve, local.workdir)


def machine() -> dict[str, Any]:
    import platform

    return {"cores": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version(), "host": platform.node(),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def standalone(prog: str, doc: str | None, run: Any) -> None:
    """`python -m bench.<module> [--smoke]`: one module's rows as a table, with details."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    rows = run(args.smoke)
    print_table(rows)
    for r in rows:
        print(r.metric, r.detail)



# -- PostgreSQL (the scale-out benches) -----------------------------------------------------
PG_SERVER = ("127.0.0.1", 5432, "postgres", "test")
"""host, port, user, admin database of the PostgreSQL server the scale-out rows run on by
default (the one the tests use: trust auth on loopback)."""
PG_ENV = "WEBCONF_BENCH_PG"
"""Another server: `postgresql://USER@HOST:PORT/ADMIN_DB` (trust auth; the smoke test
points it at the tests' server, which may be a throwaway cluster)."""


def pg_server() -> tuple[str, int, str, str]:
    """(host, port, user, admin database): `$WEBCONF_BENCH_PG` if set, else `PG_SERVER`."""
    raw = os.environ.get(PG_ENV, "").strip()
    if not raw:
        return PG_SERVER
    from urllib.parse import urlsplit

    url = urlsplit(raw)
    if url.scheme != "postgresql" or not url.hostname or not url.path.strip("/"):
        raise ValueError(f"{PG_ENV}={raw!r}: expected postgresql://USER@HOST:PORT/DATABASE")
    return (url.hostname, url.port or 5432, url.username or "postgres", url.path.strip("/"))


def _pg_admin(sql: str) -> list[Any]:
    """One statement on the admin database, on a private event loop (callers are sync or
    in a thread); its rows."""
    import asyncio

    import asyncpg

    host, port, user, admin_db = pg_server()

    async def go() -> list[Any]:
        conn = await asyncpg.connect(host=host, port=port, user=user, database=admin_db,
                                     timeout=5)
        try:
            return list(await conn.fetch(sql))
        finally:
            await conn.close()

    return asyncio.run(go())


def pg_missing() -> str | None:
    """Why no PostgreSQL bench can run here (no server answers), or None."""
    try:
        _pg_admin("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - any failure means: no server to bench on
        host, port, user, admin_db = pg_server()
        return (f"no PostgreSQL at {host}:{port} (user {user}, database {admin_db}; "
                f"{PG_ENV} names another): {type(exc).__name__}: {exc}")
    return None


def pg_backend_pids(database_url: str) -> list[int]:
    """The PostgreSQL backends serving the database of `database_url` now."""
    name = database_url.rsplit("/", 1)[1]
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unexpected database name {name!r}")
    rows = _pg_admin(f"SELECT pid FROM pg_stat_activity WHERE datname = '{name}'")
    return [int(r["pid"]) for r in rows]


@contextlib.contextmanager
def pg_database(prefix: str = "webconf_bench_") -> Iterator[str]:
    """A fresh database of our own on `pg_server()`, dropped afterwards (WITH (FORCE): the
    servers' connections may outlive their stop by a moment); yields its asyncpg URL."""
    import secrets

    host, port, user, _ = pg_server()
    name = prefix + secrets.token_hex(5)
    _pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+asyncpg://{user}@{host}:{port}/{name}"
    finally:
        with contextlib.suppress(Exception):
            _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
