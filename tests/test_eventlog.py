"""The event log (docs/protocol.md §4.3, §5.3): seqs, resume, cross-node delivery, NOTIFY.

Two WCS nodes here are two real `WcsServer`s on one database and one share, each with its
own listeners; a channel on one must hear of what the other commits. The NOTIFY tests need
PostgreSQL (SQLite is one node: its commits wake the feed in process).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select, text

from conferencing.app import WcsServer
from conferencing.eventlog import APPLICATION_NAME
from conferencing.store.schema import conference_events
from webconf.deploy.config import Config
from webconf.deploy.db import open_engine
from webconf.deploy.local import init_deployment

from .conftest import TENANTS, Participant, Wcs, free_port, wait_for
from .test_channel import channel_url, connect, expect_close, meeting, recv_json, recv_type

TIMEOUT = 10.0
ORGANIZER = "alice@contoso.example"


@contextlib.asynccontextmanager
async def two_nodes(cfg: Config, second: Callable[[Config], None] | None = None
                    ) -> AsyncIterator[tuple[Wcs, Wcs]]:
    """Two WCS nodes of one deployment (one database, one share), on their own ports;
    `second` adjusts the second node's settings."""
    cfg.wcs.https_port = cfg.wcs.internal_port = 0
    cfg.wcs.shutdown_grace_seconds = 1.0
    other = copy.deepcopy(cfg)
    if second is not None:
        second(other)
    servers = [WcsServer(cfg), WcsServer(other)]
    clients: list[Wcs] = []
    try:
        for server in servers:
            await server.start()
            clients.append(Wcs(server.cfg, server))
        yield clients[0], clients[1]
    finally:
        for client in clients:
            await client.close()
        for server in servers:
            await server.stop()


async def ws_at(wcs: Wcs, who: Participant, after: int | None = None
                ) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    url = channel_url(wcs, who.conference) + ("" if after is None else f"?after={after}")
    ws = await asyncio.wait_for(wcs.http.ws_connect(url, headers=who.headers, heartbeat=None),
                                TIMEOUT)
    return ws, await recv_json(ws)


async def share(wcs: Wcs, who: Participant, data: bytes, name: str) -> dict[str, Any]:
    status, body = await wcs.upload(who, data, name=name, content_type="text/plain")
    assert status == 201, body
    item: dict[str, Any] = body["item"]
    return item


async def logged(cfg: Config) -> list[dict[str, Any]]:
    engine = open_engine(cfg.store_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(conference_events).order_by(
                conference_events.c.conference_id, conference_events.c.seq))).all()
    finally:
        await engine.dispose()
    return [dict(r._mapping) for r in rows]


async def test_every_event_has_its_seq_in_order_without_gaps(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "S1", "bob@contoso.example", role="presenter")
    ws, hello = await connect(wcs, alice)
    try:
        assert hello["seq"] == 2  # two joins so far
        seqs = []
        for i in range(3):
            await share(wcs, bob, b"x" * (i + 1), name=f"{i}.txt")
            seqs.append((await recv_type(ws, "item.shared"))["seq"])
        assert await wcs.revoke(bob) == 204
        left = await recv_type(ws, "participant.left")
        assert seqs == [3, 4, 5] and left["seq"] == 7  # 6: bob's own `revoked`
    finally:
        await ws.close()
    rows = [r for r in await logged(wcs.cfg) if r["conference_id"] == alice.conference]
    assert [r["seq"] for r in rows] == list(range(1, 8))
    revoked = rows[5]
    assert (revoked["type"], revoked["participant_id"], revoked["final"]) == (
        "revoked", bob.pid, True)


async def test_the_log_and_notify_hold_no_key(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "K1", "bob@contoso.example", role="presenter")
    ws, _ = await connect(wcs, alice)
    try:
        await share(wcs, bob, os.urandom(100), name="secret-name.pdf")
        pushed = await recv_type(ws, "item.shared")
    finally:
        await ws.close()
    key = pushed["key"]
    dump = json.dumps([{k: v for k, v in r.items()} for r in await logged(wcs.cfg)],
                      default=str)
    assert key not in dump and base64.urlsafe_b64decode(key + "=").hex() not in dump
    assert "secret-name" not in dump  # names are sealed in `items`, not logged
    assert pushed["item"]["id"] in dump


async def test_after_resumes_with_exactly_the_missed_events(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "R1", "bob@contoso.example", role="presenter")
    ws, hello = await connect(wcs, alice)
    await ws.close()
    first = await share(wcs, bob, b"one", name="1.txt")
    second = await share(wcs, bob, b"two", name="2.txt")
    async with wcs.http.delete(f"{wcs.items_url(bob.conference)}/{first['id']}",
                               headers=bob.headers) as resp:
        assert resp.status == 204
    ws, resumed = await ws_at(wcs, alice, after=hello["seq"])
    try:
        assert resumed == {"type": "resumed", "conference": alice.conference,
                           "participant": alice.pid, "role": "organizer",
                           "seq": hello["seq"]}
        got = [await recv_json(ws) for _ in range(2)]
        # seq 3 shared the first item, deleted since: its key is gone, so the replay
        # skips it and says only that it was removed.
        assert [(e["type"], e["seq"]) for e in got] == [("item.shared", 4),
                                                          ("item.removed", 5)]
        assert got[0]["item"]["id"] == second["id"]
        assert got[1]["item"]["id"] == first["id"]
        # Live events continue after the replay, nothing twice.
        third = await share(wcs, bob, b"three", name="3.txt")
        live = await recv_json(ws)
        assert live["item"]["id"] == third["id"] and live["seq"] == 6
    finally:
        await ws.close()


async def test_after_at_the_last_seq_replays_nothing(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "R2")
    _, hello = await connect(wcs, alice)
    ws, resumed = await ws_at(wcs, alice, after=hello["seq"])
    try:
        assert resumed["type"] == "resumed"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(0.3):
                extra = await ws.receive()
                raise AssertionError(f"unexpected frame {extra!r}")
    finally:
        await ws.close()


async def test_after_past_the_retention_gets_a_full_welcome(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "R3", "bob@contoso.example", role="presenter")
    await share(wcs, bob, b"kept", name="k.txt")
    assert wcs.server is not None and wcs.server.service is not None
    assert await wcs.server.service.trim_events(time.time() + 10**9) >= 3
    ws, hello = await ws_at(wcs, alice, after=1)
    try:
        assert hello["type"] == "welcome" and hello["seq"] == 3
        assert [e["item"]["name"] for e in hello["items"]] == ["k.txt"]
    finally:
        await ws.close()


@pytest.mark.parametrize("after", ["x", "-1", "1.5", "99", "1&after=2", "%31", "", "0" * 19])
async def test_bad_after_is_a_json_400(wcs: Wcs, after: str) -> None:
    (alice,) = await meeting(wcs, "R4")
    url = channel_url(wcs, alice.conference).replace("wss://", "https://", 1)
    hdrs = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), **alice.headers}
    async with wcs.http.get(f"{url}?after={after}", headers=hdrs) as resp:
        if after == "%31":  # "1" percent-encoded is 1: a valid resume
            assert resp.status == 101
            return
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_request"
    assert wcs.server is not None and wcs.server.service is not None
    await wait_for(lambda: not wcs.server.service.events.active)  # type: ignore[union-attr]


async def test_a_refused_item_logs_no_event(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "N1", "bob@contoso.example", role="presenter")
    ws, hello = await connect(wcs, alice)
    try:
        assert await wcs.revoke(bob) == 204
        await recv_type(ws, "participant.left")
        status, _ = await wcs.upload(bob, b"late", name="late.txt")
        assert status in (401, 403)
    finally:
        await ws.close()
    rows = [r for r in await logged(wcs.cfg) if r["conference_id"] == alice.conference]
    assert [r["type"] for r in rows] == [
        "participant.joined", "participant.joined", "revoked", "participant.left"]


async def test_a_share_on_one_node_reaches_channels_on_the_other(deployment: Config) -> None:
    async with two_nodes(deployment) as (node1, node2):
        alice, bob = await meeting(node1, "X1", "bob@contoso.example", role="presenter")
        ws2, _ = await connect(node2, alice)
        ws1, _ = await connect(node1, alice)
        try:
            item = await share(node1, bob, b"cross", name="x.txt")
            for ws in (ws2, ws1):
                pushed = await recv_type(ws, "item.shared")
                assert pushed["item"]["id"] == item["id"] and pushed["seq"] == 3
        finally:
            await ws1.close()
            await ws2.close()


async def test_revocation_on_one_node_closes_the_channel_on_the_other(
        deployment: Config) -> None:
    async with two_nodes(deployment) as (node1, node2):
        alice, bob = await meeting(node1, "X2", "bob@contoso.example")
        ws, _ = await connect(node2, bob)
        try:
            started = time.monotonic()
            assert await node1.revoke(bob) == 204
            assert (await recv_type(ws, "revoked"))["reason"] == "left"
            assert await expect_close(ws) == 1008
            assert time.monotonic() - started < 1.0 + 4.0  # 1 s goal; slack for CI
            for node in (node1, node2):
                async with node.http.get(node.items_url(bob.conference),
                                         headers=bob.headers) as resp:
                    assert resp.status == 401
        finally:
            await ws.close()


@pytest.fixture
def pg_deployment(tmp_path: Any, pg_url: str) -> Config:
    return init_deployment(tmp_path / "dep", https_port=free_port(),
                           internal_port=free_port(), sip_port=free_port(), tenants=TENANTS,
                           database=pg_url)


async def test_notify_wakes_the_other_node_without_the_poll(pg_deployment: Config) -> None:
    """With the poll slowed to a minute, only NOTIFY can carry the event across in time."""
    pg_deployment.wcs.event_poll_seconds = 60.0
    async with two_nodes(pg_deployment) as (node1, node2):
        alice, bob = await meeting(node1, "P1", "bob@contoso.example", role="presenter")
        ws, _ = await connect(node2, alice)
        try:
            item = await share(node1, bob, b"n", name="n.txt")
            pushed = await recv_type(ws, "item.shared", timeout=5.0)
            assert pushed["item"]["id"] == item["id"]
        finally:
            await ws.close()


async def test_a_killed_notify_connection_loses_no_event(pg_deployment: Config) -> None:
    """pg_terminate_backend on node 2's LISTEN connection: events committed meanwhile are
    caught up from the log when it reconnects, none lost, none twice."""
    pg_deployment.wcs.event_poll_seconds = 60.0  # the reconnect must do the catching up
    pg_deployment.wcs.event_listener_keepalive_seconds = 0.2
    async with two_nodes(pg_deployment) as (node1, node2):
        alice, bob = await meeting(node1, "P2", "bob@contoso.example", role="presenter")
        ws, _ = await connect(node2, alice)
        assert node2.server is not None and node2.server.service is not None
        listener = node2.server.service.feed.listener
        assert listener is not None and listener.connects == 1
        engine = open_engine(pg_deployment.store_url)
        try:
            async with engine.begin() as conn:
                killed = await conn.scalar(text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name = :name"),
                    {"name": APPLICATION_NAME})
            assert killed == 2  # both nodes' listeners
            ids = [(await share(node1, bob, bytes([i]), name=f"{i}.bin"))["id"]
                   for i in range(5)]
            got = [(await recv_type(ws, "item.shared", timeout=10.0))["item"]["id"]
                   for _ in ids]
            assert got == ids
            await wait_for(lambda: listener.connects >= 2, timeout=10.0)
            with contextlib.suppress(TimeoutError):  # nothing twice
                async with asyncio.timeout(0.5):
                    extra = await recv_json(ws)
                    assert extra["type"] != "item.shared", extra
        finally:
            await ws.close()
            await engine.dispose()
