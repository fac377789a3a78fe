"""`webconf serve --workers N` and `--node NAME` (issue 10, §8): N WCS processes share the
public and internal ports (SO_REUSEPORT) on PostgreSQL, each supervised and restarted on
its own, and what one worker stores (rows, share blobs) every other serves."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.deploy.init import init_deployment
from webconf.deploy.local import ServeProcess, free_port

from .conftest import TENANTS, Wcs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="children are found through Linux's /proc")
ROOT = Path(__file__).resolve().parents[1]


def children(serve: ServeProcess, module: str) -> list[int]:
    """The pids of the supervisor's children running `python -m <module>`."""
    found = []
    listed = Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()
    for pid in map(int, listed):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except FileNotFoundError:
            continue
        if module.encode() in argv and b"-m" in argv:
            found.append(pid)
    return found


def gone(pid: int) -> bool:
    """Exited with every thread. The leader of a threaded process shows "Z" while its other
    threads still hold the files, listening sockets included, so only a task list of
    zombies (or no /proc entry: reaped) means its sockets are closed."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks]
    except FileNotFoundError:
        return True
    return all(state in ("Z", "X") for state in states)


def listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port` (Linux's /proc/net/tcp, state 0A)."""
    local = f"0100007F:{port:04X}"
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1] == local and row.split()[3] == "0A")


def served(cfg: Config, worker: str, route: str) -> int:
    """How many requests of `route` the worker's log shows."""
    count = 0
    for line in (cfg.log_dir / f"{worker}.log").read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "http" and event.get("route") == route:
            count += 1
    return count


async def fresh_get(cfg: Config, path: str, headers: dict[str, str] | None = None
                    ) -> tuple[int, bytes]:
    """GET over a new TCP + TLS connection (the kernel picks a worker per connection)."""
    connector = aiohttp.TCPConnector(ssl=tls.client_context(cfg), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.get(f"{cfg.public_url}{path}", headers=headers or {}) as resp:
            return resp.status, await resp.read()


def restarts_metric(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("webconf_restarts{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('"')[1]] = float(value)
    return found


def test_workers_need_postgresql(tmp_path: Path) -> None:
    cfg = init_deployment(tmp_path / "dep", https_port=free_port(), internal_port=free_port(),
                          sip_port=free_port(), tenants=TENANTS)  # SQLite
    proc = subprocess.run(
        [sys.executable, "-m", "webconf", "serve", str(cfg.base_dir), "--workers", "2"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "webconf serve: --workers 2 needs a PostgreSQL store: SQLite serves one process "
        "(see `webconf init --database`)"]
    assert not cfg.log_dir.exists() or not any(cfg.log_dir.iterdir())


async def test_two_workers_share_the_ports_and_survive_a_kill(tmp_path: Path,
                                                              pg_url: str) -> None:
    cfg = init_deployment(tmp_path / "dep", https_port=free_port(), internal_port=free_port(),
                          sip_port=free_port(), tenants=TENANTS, database=pg_url)
    serve = ServeProcess(cfg.base_dir, args=["--workers", "2", "--node", "node-a"])
    wcs = Wcs(cfg)
    try:
        await serve.astart()
        assert serve.ready_line is not None
        assert " node=node-a " in serve.ready_line + " "
        assert serve.ready_line.endswith(" workers=2")
        assert any(line.startswith("wcs-2 ready https=") for line in serve.lines)
        workers = children(serve, "conferencing")
        assert len(workers) == 2

        # Many fresh connections to one port: both processes accept them.
        statuses = [(await fresh_get(cfg, "/healthz"))[0] for _ in range(40)]
        assert statuses == [200] * 40
        assert served(cfg, "wcs-1", "/healthz") > 0 and served(cfg, "wcs-2", "/healthz") > 0

        # The internal port too, and uploads stored by either worker are served by both.
        alice = await wcs.admit("WRK1", "alice@contoso.example")
        blobs = {f"f{i}.bin": os.urandom(200_000 + i) for i in range(8)}
        results = await asyncio.gather(*(_upload(cfg, alice.conference, alice.cookie, name,
                                                 data) for name, data in blobs.items()))
        assert all(status == 201 for status, _ in results), results
        uploaders = [served(cfg, w, "/v1/conferences/{conf}/items") for w in ("wcs-1", "wcs-2")]
        assert sum(uploaders) >= len(blobs)
        for status, body in results:
            item = body["item"]
            got, content = await fresh_get(cfg, f"/v1/conferences/{alice.conference}/items/"
                                           f"{item['id']}/content", alice.headers)
            assert got == 200 and len(content) == item["ciphertext_size"]
        assert not any((cfg.share_dir / ".tmp").iterdir())

        # kill -9 one worker: the other takes every new connection, and it comes back.
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        # Its listening socket leaves the port's group when the last of its threads exits.
        while not gone(victim) or listeners(cfg.wcs.https_port) != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        statuses = [(await fresh_get(cfg, "/healthz"))[0] for _ in range(20)]
        assert statuses == [200] * 20
        restarted = "wcs-1" if "wcs-1 exited with -9" in serve.stderr_text() else "wcs-2"
        assert f"webconf: {restarted} exited with -9; restarting it in" in serve.stderr_text()
        deadline = time.monotonic() + 30
        while f"webconf: {restarted} restarted (restart 1): {restarted} ready https=" \
                not in serve.stderr_text():  # listening again
            assert time.monotonic() < deadline, "the killed worker was not restarted"
            await asyncio.sleep(0.05)
        now = children(serve, "conferencing")
        assert len(now) == 2 and victim not in now
        status, text = await fresh_get(cfg, "/metrics")
        assert status == 200
        assert restarts_metric(text.decode()) == {"focus": 0, "wcs-1": 0, "wcs-2": 0,
                                                  restarted: 1}
        before = served(cfg, restarted, "/healthz")
        statuses = [(await fresh_get(cfg, "/healthz"))[0] for _ in range(40)]
        assert statuses == [200] * 40
        assert served(cfg, restarted, "/healthz") > before  # it takes connections again
        assert serve.proc is not None and serve.proc.poll() is None
    finally:
        await wcs.close()
        code = await serve.astop()
    assert code == 0


async def _upload(cfg: Config, conference: str, cookie: str, name: str,
                  data: bytes) -> tuple[int, dict[str, object]]:
    connector = aiohttp.TCPConnector(ssl=tls.client_context(cfg), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        async with http.post(f"{cfg.public_url}/v1/conferences/{conference}/items", data=data,
                             headers={"Authorization": f"Bearer {cookie}",
                                      "X-Item-Name": name,
                                      "Content-Type": "application/octet-stream",
                                      "X-Content-SHA256": hashlib.sha256(data).hexdigest()}
                             ) as resp:
            return resp.status, await resp.json()
