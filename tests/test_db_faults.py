"""The database out of reach (issue 10, item 8): at startup every server process and
`webconf serve` say so in one line and exit 2; while serving, a request that needs the
database answers 503 `unavailable` with Retry-After, the outage is logged once when it
starts and once when it ends, and requests succeed again once the database is back, with
no restart. The outage is real: a TCP relay between the servers and PostgreSQL
(tests/tcp_relay.py) aborts every connection and refuses new ones."""

from __future__ import annotations

import asyncio
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
from webconf.deploy.db import RETRY_AFTER_SECONDS
from webconf.deploy.init import init_deployment
from webconf.deploy.local import ServeProcess, free_port

from .conftest import TENANTS, Wcs
from .tcp_relay import TcpRelay

ROOT = Path(__file__).resolve().parents[1]
SECRET = "s3cret-pw"


def run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", [["-m", "conferencing"], ["-m", "focus"],
                                     ["-m", "webconf", "serve"]],
                         ids=["wcs", "focus", "serve"])
def test_unreachable_database_at_start_is_one_line_and_exit_2(tmp_path: Path,
                                                              command: list[str]) -> None:
    cfg = init_deployment(tmp_path / "dep", https_port=free_port(),
                          internal_port=free_port(), sip_port=free_port(), tenants=TENANTS)
    closed = free_port()  # nothing listens there
    url = f"postgresql+asyncpg://webconf:{SECRET}@127.0.0.1:{closed}/webconf"
    proc = run(*command, str(cfg.base_dir), env={"WEBCONF_STORE_URL": url})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    prog = {"conferencing": "wcs", "focus": "focus", "webconf": "webconf serve"}[command[1]]
    assert lines[0] == (f"{prog}: cannot reach the database at postgresql+asyncpg://webconf@"
                        f"127.0.0.1:{closed}/webconf (connection refused); is it running?")
    assert SECRET not in proc.stderr
    assert proc.stdout == ""
    assert not (cfg.log_dir / "wcs.log").exists()  # serve started no child


# -- lost while serving ---------------------------------------------------------------------------

@pytest.fixture
def pg_deployment(tmp_path: Path, pg_url: str) -> Config:
    """A deployment on this test's PostgreSQL database (migrated directly, not through
    the relay)."""
    return init_deployment(tmp_path / "dep", https_port=free_port(), internal_port=free_port(),
                           sip_port=free_port(), tenants=TENANTS, database=pg_url)


def log_events(path: Path) -> list[dict[str, object]]:
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"raw": line})
    return events


async def assert_unavailable(resp: aiohttp.ClientResponse) -> None:
    assert resp.status == 503, await resp.text()
    assert resp.headers["Retry-After"] == str(RETRY_AFTER_SECONDS)
    body = await resp.json()
    assert body["error"]["code"] == "unavailable"


async def test_database_lost_while_serving_is_503_then_recovers(pg_deployment: Config,
                                                                relay: TcpRelay,
                                                                pg_url: str) -> None:
    cfg = pg_deployment
    serve = ServeProcess(cfg.base_dir, {"WEBCONF_STORE_URL": relay.url_for(pg_url)})
    wcs = Wcs(cfg)
    try:
        await serve.astart()
        alice = await wcs.admit("DBF1", "alice@contoso.example", role="organizer")
        status, body = await wcs.upload(alice, b"before the outage", name="a.txt")
        assert status == 201, body
        items_url = wcs.items_url("DBF1")
        async with wcs.http.get(items_url, headers=alice.headers) as resp:
            assert resp.status == 200
        assert relay.accepted > 0  # the servers do reach the database through the relay

        await asyncio.to_thread(relay.cut)
        for _ in range(5):  # every request: 503 + Retry-After, never a 500
            async with wcs.http.get(items_url, headers=alice.headers) as resp:
                await assert_unavailable(resp)
        status, body = await wcs.upload(alice, b"during the outage", name="b.txt")
        assert status == 503 and body["error"]["code"] == "unavailable", body
        async with wcs.internal.post(
                f"{wcs.internal_url}/internal/v1/conferences/DBF1/participants",
                json={"tenant": "contoso.example", "organizer": "alice@contoso.example",
                      "user": "bob@contoso.example", "role": "attendee"}) as resp:
            await assert_unavailable(resp)  # the focus answers its SIP client 503 too
        async with wcs.http.get(f"{wcs.url}/healthz") as resp:
            assert resp.status == 200  # the process itself is fine

        await asyncio.to_thread(relay.reopen)
        async with wcs.http.get(items_url, headers=alice.headers) as resp:
            assert resp.status == 200, await resp.text()
            names = [item["name"] for item in (await resp.json())["items"]]
        assert names == ["a.txt"]  # the upload refused during the outage left nothing
        bob = await wcs.admit("DBF1", "bob@contoso.example", organizer="alice@contoso.example")
        assert bob.role == "attendee"
        status, body = await wcs.upload(alice, b"after the outage", name="c.txt")
        assert status == 201, body
        assert serve.proc is not None and serve.proc.poll() is None
        assert "restarting" not in serve.stderr_text()  # no process died of it
    finally:
        await wcs.close()
        await serve.astop()

    events = log_events(cfg.log_dir / "wcs.log")
    outages = [e for e in events if str(e.get("event", "")).startswith("database.")]
    assert [e["event"] for e in outages] == ["database.unavailable", "database.available"]
    assert outages[0]["level"] == "warning"
    assert str(relay.port) in str(outages[0]["database"])
    unavailable = [e for e in events if e.get("event") == "http" and e.get("status") == 503]
    assert len(unavailable) >= 7
    assert not [e for e in events if e.get("event") == "http" and e.get("status") == 500]
    assert not [e for e in events if "unhandled error" in str(e.get("msg", ""))]
    shares = [p for p in cfg.share_dir.rglob("*") if p.is_file()]
    assert len(shares) == 2  # a.txt and c.txt: the refused upload's blob was removed


async def test_pool_recovers_without_a_request_failing_twice(pg_deployment: Config,
                                                             relay: TcpRelay,
                                                             pg_url: str) -> None:
    """Every pooled connection dies in the cut: after the reopen, the first request already
    succeeds (pre-ping replaces the dead connections instead of handing them out)."""
    from .conftest import running_wcs

    cfg = pg_deployment
    cfg.store.url = relay.url_for(pg_url)
    async with running_wcs(cfg) as wcs:
        alice = await wcs.admit("DBF2", "alice@contoso.example")
        url = wcs.items_url("DBF2")
        # Several connections in the pool at once.
        statuses = await asyncio.gather(*(_status(wcs, url, alice.headers) for _ in range(8)))
        assert statuses == [200] * 8
        await asyncio.to_thread(relay.cut)
        assert await _status(wcs, url, alice.headers) == 503
        await asyncio.to_thread(relay.reopen)
        statuses = await asyncio.gather(*(_status(wcs, url, alice.headers) for _ in range(8)))
        assert statuses == [200] * 8


async def _status(wcs: Wcs, url: str, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(wcs.cfg))) as http:
        async with http.get(url, headers=headers) as resp:
            return resp.status


async def test_a_server_restarted_during_an_outage_waits_for_the_database(
        pg_deployment: Config, relay: TcpRelay, pg_url: str) -> None:
    """A WCS that dies while the database is away cannot start (exit 2) until it is back:
    `serve` keeps retrying with backoff instead of calling it a crash loop."""
    cfg = pg_deployment
    serve = ServeProcess(cfg.base_dir, {"WEBCONF_STORE_URL": relay.url_for(pg_url)},
                         args=["--max-restarts", "2", "--restart-window", "60"])
    try:
        await serve.astart()
        await asyncio.to_thread(relay.cut)
        wcs_pid = next(pid for pid in _children(serve.pid) if _runs(pid, "conferencing"))
        os.kill(wcs_pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while serve.stderr_text().count("wcs cannot start: cannot reach the database") < 3:
            assert serve.proc is not None and serve.proc.poll() is None, serve.stderr_text()
            assert time.monotonic() < deadline, serve.stderr_text()
            await asyncio.sleep(0.1)
        assert "crash loop" not in serve.stderr_text()
        await asyncio.to_thread(relay.reopen)
        deadline = time.monotonic() + 60
        while "webconf: wcs restarted" not in serve.stderr_text():
            assert serve.proc is not None and serve.proc.poll() is None, serve.stderr_text()
            assert time.monotonic() < deadline, serve.stderr_text()
            await asyncio.sleep(0.1)
        wcs = Wcs(cfg)
        try:
            alice = await wcs.admit("DBF3", "alice@contoso.example")
            async with wcs.http.get(wcs.items_url("DBF3"), headers=alice.headers) as resp:
                assert resp.status == 200
        finally:
            await wcs.close()
    finally:
        code = await serve.astop()
    assert code == 0


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _runs(pid: int, module: str) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return False
    return b"-m" in argv and module.encode() in argv
