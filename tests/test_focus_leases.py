"""Focus leases (issue 10, DESIGN §8): a dead focus leaves no live cookie behind.

Real processes: `webconf serve` of a deployment on each store backend, with a short lease
timeout; the focus is killed with SIGKILL (the WCS runs on), a live focus is left alone for
several timeouts, and the internal API is given bad lease names.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, text

from clients.sip import ConferenceDialog, JoinResult, SipConnection
from conferencing.leases import check_interval
from conferencing.store import Store
from conferencing.store.schema import focus_nodes
from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.deploy.local import ServeProcess, add_users

from .conftest import Wcs, running_wcs, wait_for

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the focus child is found through Linux's /proc")

USERS = {"alice@contoso.example": "alice-pw", "bob@contoso.example": "bob-pw"}
CONF = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:LEASE1"
NODE = "node-a"
TIMEOUT = 3.0
"""focus.node_timeout_seconds of these deployments."""
HEARTBEAT = 0.5
"""focus.heartbeat_seconds: six beats per timeout."""
REVOKED_WITHIN = TIMEOUT + check_interval(TIMEOUT) + 10.0
"""A sanity bound on kill -> revoked: the timeout, one check, and room for a busy machine."""


@pytest.fixture
async def node(deployment: Config) -> AsyncIterator[tuple[Config, ServeProcess]]:
    """`webconf serve` of the deployment with a short lease timeout, as node `NODE`."""
    await asyncio.to_thread(add_users, deployment.base_dir, USERS.items())
    serve = ServeProcess(deployment.base_dir, {
        "WEBCONF_SERVER_NODE": NODE,
        "WEBCONF_FOCUS_NODE_TIMEOUT_SECONDS": str(TIMEOUT),
        "WEBCONF_FOCUS_HEARTBEAT_SECONDS": str(HEARTBEAT),
    }, stop_timeout=20)
    try:
        await serve.astart()
        yield deployment, serve
    finally:
        await serve.astop()


# -- helpers ----------------------------------------------------------------------------------

def focus_pid(serve: ServeProcess) -> int:
    """The pid of the supervisor's `python -m focus` child."""
    children = Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()
    for pid in map(int, children):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if b"focus" in argv and b"-m" in argv:
            return pid
    raise AssertionError(f"no focus child of {serve.pid}")


def log_events(cfg: Config, name: str, event: str) -> list[dict[str, Any]]:
    path = cfg.log_dir / f"{name}.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            out.append(record)
    return out


async def logged_events(cfg: Config, name: str, event: str, count: int,
                        timeout: float = 10.0) -> list[dict[str, Any]]:
    """The first `count` `event` lines of a log once they are there: a line may follow
    the effect a test saw (the expiry logs after its round's revocations committed)."""
    deadline = time.monotonic() + timeout
    while True:
        found = log_events(cfg, name, event)
        if len(found) >= count:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} {event} in {name}.log: {found}")
        await asyncio.sleep(0.05)


async def wait_for_lease(cfg: Config, count: int, timeout: float = 30.0) -> dict[str, Any]:
    """The `count`-th `lease.start` of the focus log (one per focus process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = log_events(cfg, "focus", "lease.start")
        if len(started) >= count:
            return started[count - 1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no focus process number {count} renewed a lease in {timeout} s")


async def join(cfg: Config, address: str) -> tuple[SipConnection, JoinResult]:
    deadline = time.monotonic() + 30
    while True:  # a restarted focus is ready once it accepts a join on its SIP port
        try:
            conn = await SipConnection.open("127.0.0.1", cfg.focus.sip_port,
                                            ssl_context=tls.client_context(cfg),
                                            server_hostname="contoso.example")
            break
        except OSError:
            assert time.monotonic() < deadline, "the focus did not accept connections"
            await asyncio.sleep(0.1)
    result = await ConferenceDialog(conn, CONF, address, USERS[address]).join()
    return conn, result


async def items_status(http: aiohttp.ClientSession, result: JoinResult) -> int:
    async with http.get(f"{result.webconf_url}/v1/conferences/{result.conference}/items",
                        headers={"Authorization": f"Bearer {result.cookie}"}) as resp:
        return resp.status


async def open_channel(http: aiohttp.ClientSession,
                       result: JoinResult) -> aiohttp.ClientWebSocketResponse:
    url = (result.webconf_url.replace("https", "wss")
           + f"/v1/conferences/{result.conference}/channel")
    ws = await http.ws_connect(url, headers={"Authorization": f"Bearer {result.cookie}"})
    welcome = await asyncio.wait_for(ws.receive_json(), 10)
    assert welcome["type"] == "welcome"
    return ws


async def next_event(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict[str, Any]:
    """The next event on the channel that is not about another participant's comings and
    goings."""
    deadline = time.monotonic() + timeout
    while True:
        msg = await asyncio.wait_for(ws.receive(), max(0.01, deadline - time.monotonic()))
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        event: dict[str, Any] = json.loads(msg.data)
        if event["type"] not in ("participant.joined", "participant.left"):
            return event


async def participant_lease(cfg: Config, pid: str) -> str | None:
    store = await Store.open(cfg.store_url, create=False)
    try:
        row = await store.participant(pid)
        assert row is not None
        return row.focus_node
    finally:
        await store.close()


async def leases(cfg: Config) -> set[str]:
    store = await Store.open(cfg.store_url, create=False)
    try:
        async with store.engine.connect() as conn:
            return {r.name for r in (await conn.execute(select(focus_nodes.c.name))).all()}
    finally:
        await store.close()


@pytest.fixture
async def http(deployment: Config) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(deployment))) as session:
        yield session


# -- (a) + (c): a killed focus's participants are revoked, a restart does not save them -------

async def test_killed_focus_participants_are_revoked_even_after_its_restart(
        node: tuple[Config, ServeProcess], http: aiohttp.ClientSession) -> None:
    cfg, serve = node
    first = await wait_for_lease(cfg, 1)
    old_lease = first["lease"]
    assert first["renewed"] is True
    assert old_lease.startswith(f"{NODE}.") and len(old_lease) == len(NODE) + 9
    conn, alice = await join(cfg, "alice@contoso.example")
    assert await participant_lease(cfg, alice.participant) == old_lease  # recorded at admit
    assert await items_status(http, alice) == 200
    ws = await open_channel(http, alice)
    try:
        os.kill(focus_pid(serve), signal.SIGKILL)  # the WCS runs on; the dialog is lost
        killed_at = time.monotonic()
        # (c) the supervisor restarts the focus: a new incarnation of the same node, which
        # renews a lease of its own, not the dead one's.
        second = await wait_for_lease(cfg, 2)
        new_lease = second["lease"]
        assert new_lease.startswith(f"{NODE}.") and new_lease != old_lease
        assert second["renewed"] is True
        # (a) within the timeout (plus a check and a margin) the channel hears `revoked`
        # and is closed, and the cookie is refused.
        event = await next_event(ws, REVOKED_WITHIN)
        assert event["type"] == "revoked", event
        closing = await asyncio.wait_for(ws.receive(), 5)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.CLOSING)
        revoked_after = time.monotonic() - killed_at
        assert revoked_after < REVOKED_WITHIN
    finally:
        await ws.close()
        await conn.close()
    assert await items_status(http, alice) == 401
    [expired] = await logged_events(cfg, "wcs", "focus.lease_expired", 1)
    assert expired["node"] == old_lease and expired["revoked"] == 1
    # The new incarnation was renewing before the dead one's lease was judged, and that
    # did not keep the dead one's participant alive.
    assert second["ts"] < expired["ts"]
    assert await leases(cfg) == {new_lease}

    # The restarted focus admits under its own lease, which it keeps alive.
    conn, bob = await join(cfg, "bob@contoso.example")
    try:
        assert await participant_lease(cfg, bob.participant) == new_lease
        await asyncio.sleep(2 * TIMEOUT)
        assert await items_status(http, bob) == 200
    finally:
        await conn.close()
    assert len(log_events(cfg, "wcs", "focus.lease_expired")) == 1
    async with http.get(f"{cfg.public_url}/metrics") as resp:
        assert "webconf_focus_leases_expired_total 1.0" in await resp.text()


# -- (b): a focus that keeps renewing keeps its participants ----------------------------------

async def test_live_focus_keeps_its_participants_and_releases_its_lease_on_stop(
        node: tuple[Config, ServeProcess], http: aiohttp.ClientSession) -> None:
    cfg, serve = node
    lease = (await wait_for_lease(cfg, 1))["lease"]
    conn, alice = await join(cfg, "alice@contoso.example")
    ws = await open_channel(http, alice)
    try:
        with pytest.raises(TimeoutError):  # several timeouts pass in silence
            await next_event(ws, 3 * TIMEOUT)
        assert await items_status(http, alice) == 200
        assert not log_events(cfg, "wcs", "focus.lease_expired")
        assert not log_events(cfg, "focus", "lease.renew_failed")
        assert await leases(cfg) == {lease}
        # A clean stop revokes the open dialog, then releases the lease.
        assert await serve.astop() == 0
        event = await next_event(ws, 10)
        assert event["type"] == "revoked", event
    finally:
        await ws.close()
        await conn.close()
    [released] = log_events(cfg, "focus", "lease.released")
    assert released["lease"] == lease
    assert await leases(cfg) == set()


# -- (d): the internal API refuses bad lease names --------------------------------------------

BAD_NAMES = ["a" * 129, "a%20b", "a%0A", "a%0Ab", "%C3%A9t%C3%A9", "a:b", "a%2Fb", "a*"]


async def test_bad_lease_names_are_400(wcs: Wcs) -> None:
    base = f"{wcs.internal_url}/internal/v1/focus-nodes"
    for name in BAD_NAMES:
        for method in ("PUT", "DELETE"):
            async with wcs.internal.request(method, f"{base}/{name}") as resp:
                body = await resp.json()
                assert resp.status == 400, (method, name, body)
                assert body["error"]["code"] == "bad_request"
    good = "n-1_x.AbCdEf12"
    for method, status in (("PUT", 204), ("PUT", 204), ("DELETE", 204), ("DELETE", 204)):
        async with wcs.internal.request(method, f"{base}/{good}") as resp:
            assert resp.status == status, (method, await resp.text())
    admit = f"{wcs.internal_url}/internal/v1/conferences/LEASE1/participants"
    alice = {"tenant": "contoso.example", "organizer": "alice@contoso.example",
             "user": "alice@contoso.example"}
    for bad in ["", "a" * 129, "a b", "a\nb", "été", 7, ["x"], {"x": 1}]:
        async with wcs.internal.post(admit, json={**alice, "focus_node": bad}) as resp:
            body = await resp.json()
            assert resp.status == 400, (bad, body)
            assert body["error"]["code"] == "bad_request"
    async with wcs.internal.post(admit, json={**alice, "focus_node": good}) as resp:
        assert resp.status == 201, await resp.text()
        pid = (await resp.json())["participant"]
    store = wcs.server.service.store if wcs.server and wcs.server.service else None
    assert store is not None
    row = await store.participant(pid)
    assert row is not None and row.focus_node == good
    async with wcs.internal.post(admit, json={**alice, "focus_node": None}) as resp:
        assert resp.status == 201, await resp.text()  # optional: null is no lease
        row = await store.participant((await resp.json())["participant"])
        assert row is not None and row.focus_node is None


# -- the WCS's lease task: survives store errors, stops on cancel -----------------------------

@pytest.fixture
async def short_wcs(deployment: Config) -> AsyncIterator[Wcs]:
    """An in-process WCS whose leases time out after one second."""
    deployment.focus.node_timeout_seconds = 1.0
    deployment.focus.heartbeat_seconds = 0.2
    async with running_wcs(deployment) as client:
        yield client


async def rename_table(store: Store, old: str, new: str) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(text(f"ALTER TABLE {old} RENAME TO {new}"))


async def test_lease_task_survives_store_errors_and_stops_on_cancel(
        short_wcs: Wcs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="webconf.wcs")
    wcs = short_wcs
    assert wcs.server is not None and wcs.server.service is not None
    store = wcs.server.service.store
    task = wcs.server.lease_task
    assert task is not None
    lease = f"{NODE}.GoneAway"
    async with wcs.internal.put(f"{wcs.internal_url}/internal/v1/focus-nodes/{lease}") as resp:
        assert resp.status == 204
    async with wcs.internal.post(
            f"{wcs.internal_url}/internal/v1/conferences/LEASE2/participants",
            json={"tenant": "contoso.example", "organizer": "alice@contoso.example",
                  "user": "alice@contoso.example", "focus_node": lease}) as resp:
        assert resp.status == 201
        alice = await resp.json()

    def logged(event: str) -> list[dict[str, Any]]:
        out = []
        for record in caplog.records:
            if record.name == "webconf.wcs" and record.getMessage().startswith("{"):
                data = json.loads(record.getMessage())
                if data.get("event") == event:
                    out.append(data)
        return out

    await rename_table(store, "focus_nodes", "focus_nodes_away")  # the store now fails
    try:
        await wait_for(lambda: logged("focus.lease_expiry_failed"), timeout=15)
        await asyncio.sleep(4 * check_interval(1.0))  # several failed rounds ...
        assert len(logged("focus.lease_expiry_failed")) == 1  # ... logged once
        assert not task.done()
    finally:
        await rename_table(store, "focus_nodes_away", "focus_nodes")
    await wait_for(lambda: logged("focus.lease_expired"), timeout=15)
    assert logged("focus.lease_expired") == [
        {"event": "focus.lease_expired", "node": lease, "revoked": 1}]
    assert logged("focus.lease_expiry_restored")
    async with wcs.http.get(f"{wcs.url}/v1/conferences/{alice['conference']}/items",
                            headers={"Authorization": f"Bearer {alice['cookie']}"}) as resp:
        assert resp.status == 401
    await wcs.server.stop()  # the fixture's stop then finds nothing left to do
    assert task.cancelled() and wcs.server.lease_task is None


# -- settings ---------------------------------------------------------------------------------

def test_node_name_and_lease_settings(tmp_path: Path) -> None:
    import re
    import socket

    from focus.wcs_client import LEASE_RE, new_lease_name
    from webconf.deploy.config import ConfigError, load_config

    Config(base_dir=tmp_path).write()
    cfg = load_config(tmp_path, env={})
    assert (cfg.focus.node_timeout_seconds, cfg.focus.heartbeat_seconds) == (15.0, 3.0)
    assert cfg.server.node == "" and LEASE_RE.fullmatch(cfg.node_name)
    assert cfg.node_name == re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:100]
    cfg = load_config(tmp_path, env={"WEBCONF_SERVER_NODE": "eu 1/é:x" + "y" * 200})
    assert cfg.node_name == "eu-1---x" + "y" * 92  # sanitized, cut to 100
    names = {new_lease_name(cfg) for _ in range(50)}
    assert len(names) == 50  # a fresh incarnation every time
    for name in names:
        node, _, incarnation = name.rpartition(".")
        assert node == cfg.node_name and len(incarnation) == 8
        assert LEASE_RE.fullmatch(name) and len(name) <= 128
    for timeout, beat in (("2", "2"), ("2", "3"), ("2", "0")):
        with pytest.raises(ConfigError, match="heartbeat_seconds"):
            load_config(tmp_path, env={"WEBCONF_FOCUS_NODE_TIMEOUT_SECONDS": timeout,
                                       "WEBCONF_FOCUS_HEARTBEAT_SECONDS": beat})
    assert check_interval(15) == 2.0 and check_interval(2) == 0.5 and check_interval(5) == 1.0


# -- the focus's side: renewal outages are logged once, the lease comes back ----------------------

async def test_focus_renews_through_an_outage_and_releases_on_stop(
        deployment: Config, caplog: pytest.LogCaptureFixture) -> None:
    from conferencing.app import WcsServer
    from focus.directory import Directory
    from focus.server import FocusServer
    from focus.wcs_client import WcsClient
    from webconf.deploy import keys
    from webconf.deploy.config import load_config
    from webconf.deploy.local import free_port

    caplog.set_level(logging.INFO, logger="webconf.focus")
    cfg = deployment
    cfg.focus.sip_port = 0
    cfg.focus.node_timeout_seconds = 2.0
    cfg.focus.heartbeat_seconds = 0.1
    cfg.wcs.internal_port = free_port()  # no WCS there yet
    directory = await Directory.for_deployment(cfg)
    client = WcsClient(cfg)
    focus = FocusServer(cfg, directory, client, keys.load_nonce_secret(cfg))

    def logged(event: str) -> list[dict[str, Any]]:
        return [data for data in (json.loads(r.getMessage()) for r in caplog.records
                                  if r.name == "webconf.focus"
                                  and r.getMessage().startswith("{"))
                if data.get("event") == event]

    await focus.start()
    wcs: WcsServer | None = None
    try:
        assert logged("lease.start") == [
            {"event": "lease.start", "lease": client.lease_name, "renewed": False}]
        await asyncio.sleep(10 * cfg.focus.heartbeat_seconds)  # ten failed beats ...
        failed = logged("lease.renew_failed")
        assert len(failed) == 1 and failed[0]["lease"] == client.lease_name  # ... one line
        assert "Connect" in failed[0]["error"]
        assert not [r for r in caplog.records if r.exc_info]  # and no traceback
        wcs_cfg = load_config(cfg.base_dir)
        wcs_cfg.wcs.https_port = 0
        wcs_cfg.wcs.internal_port = cfg.wcs.internal_port
        wcs = WcsServer(wcs_cfg)
        await wcs.start()  # the WCS comes (back): the next beat makes the lease
        await wait_for(lambda: logged("lease.renewed"), timeout=15)
        [renewed] = logged("lease.renewed")
        assert renewed["lease"] == client.lease_name and renewed["outage_seconds"] > 0.5
        assert await leases(cfg) == {client.lease_name}
        await focus.stop()  # nothing open: the lease is released
        assert logged("lease.released") == [
            {"event": "lease.released", "lease": client.lease_name}]
        assert await leases(cfg) == set()
    finally:
        await focus.stop()
        await client.close()
        await directory.close()
        if wcs is not None:
            await wcs.stop()
