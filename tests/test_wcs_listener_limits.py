"""The WCS's listeners time out idle and slow connections and cap them (issue 15.2).

Over real TLS on loopback, with the limits set small through the config: a connection that
sends half a request head, or nothing after the handshake, or stalls in the handshake, or
sits idle between requests, is closed; the cap `wcs.max_connections` closes connections
beyond it while a request still succeeds once the idle ones are gone. A data channel and a
long upload are never cut by these timers (docs/protocol.md §4, `conferencing.listener`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from webconf.deploy import tls
from webconf.deploy.config import Config

from .conftest import Wcs, running_wcs, wait_for
from .test_channel import connect, recv_type
from .test_hostile_http import Raw, request_head, upload_head

ALICE = "alice@contoso.example"
HEAD_TIMEOUT = 0.5
KEEPALIVE = 1.5
HANDSHAKE = 0.5
SLACK = 1.5
"""How much later than its timer a close may come (a loaded 2-core machine)."""
LIMITS = {"header_timeout_seconds": HEAD_TIMEOUT, "keepalive_timeout_seconds": KEEPALIVE,
          "tls_handshake_timeout_seconds": HANDSHAKE}


@contextlib.asynccontextmanager
async def limited_wcs(cfg: Config, **settings: Any) -> AsyncIterator[Wcs]:
    for name, value in {**LIMITS, **settings}.items():
        setattr(cfg.wcs, name, value)
    async with running_wcs(cfg) as wcs:
        yield wcs


@pytest.fixture
async def wcs(deployment: Config) -> AsyncIterator[Wcs]:
    async with limited_wcs(deployment) as server:
        yield server


async def closed_after(conn: Raw, started: float, *, at_least: float, at_most: float) -> float:
    """Wait for the server to close `conn`; check when, from `started`; return when."""
    assert await conn.closed_by_server(timeout=at_most + SLACK), "still open"
    elapsed = time.monotonic() - started
    assert at_least <= elapsed <= at_most + SLACK, elapsed
    return elapsed


def open_connections(wcs: Wcs, listener: str = "public") -> int:
    assert wcs.server is not None
    return len(wcs.server.guards[listener].open)


# -- the head timer ----------------------------------------------------------------------------

async def test_nothing_after_the_handshake_is_closed(wcs: Wcs) -> None:
    conn = await Raw.open(wcs)
    started = time.monotonic()
    await closed_after(conn, started, at_least=HEAD_TIMEOUT * 0.8, at_most=HEAD_TIMEOUT)
    await conn.close()
    await wait_for(lambda: open_connections(wcs) == 0)


async def test_half_a_head_is_closed_even_when_dripped(wcs: Wcs) -> None:
    head = request_head("GET", "/healthz")
    conn = await Raw.open(wcs)
    started = time.monotonic()
    await conn.send(head[:20])  # half a head, then one byte at a time: no extension
    with contextlib.suppress(ConnectionError, OSError):
        for byte in head[20:40]:
            await asyncio.sleep(0.05)
            await conn.send(bytes([byte]))
    await closed_after(conn, started, at_least=HEAD_TIMEOUT * 0.8, at_most=HEAD_TIMEOUT)
    await conn.close()


async def test_half_a_head_after_a_response_is_closed(wcs: Wcs) -> None:
    """The timer runs again from the first byte of the next request on the connection."""
    conn = await Raw.open(wcs)
    await conn.send(request_head("GET", "/healthz"))
    resp = await conn.response()
    assert resp is not None and resp.status == 200
    await asyncio.sleep(HEAD_TIMEOUT * 1.5)  # idle, within keep-alive: still open
    started = time.monotonic()
    await conn.send(b"GET /healthz HTTP/1.1\r\nHost:")
    await closed_after(conn, started, at_least=HEAD_TIMEOUT * 0.8, at_most=HEAD_TIMEOUT)
    await conn.close()


async def test_stalled_handshake_is_closed(wcs: Wcs) -> None:
    url = urlsplit(wcs.url)
    for first in (b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"):  # none, half a hello
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        started = time.monotonic()
        writer.write(first)
        conn = Raw(reader, writer)
        await closed_after(conn, started, at_least=HANDSHAKE * 0.8, at_most=HANDSHAKE)
        writer.close()
    assert open_connections(wcs) == 0  # never reached aiohttp


async def test_internal_listener_has_the_same_timers(wcs: Wcs) -> None:
    url = urlsplit(wcs.internal_url)
    reader, writer = await asyncio.open_connection(
        url.hostname, url.port, ssl=tls.client_context(wcs.cfg, client_cert="focus-client"))
    conn = Raw(reader, writer)
    await closed_after(conn, time.monotonic(), at_least=HEAD_TIMEOUT * 0.8,
                       at_most=HEAD_TIMEOUT)
    await conn.close()


# -- keep-alive ----------------------------------------------------------------------------------

async def test_idle_keep_alive_is_closed(wcs: Wcs) -> None:
    conn = await Raw.open(wcs)
    for _ in range(3):  # requests within the idle timeout keep the connection
        await conn.send(request_head("GET", "/healthz"))
        resp = await conn.response()
        assert resp is not None and resp.status == 200
        await asyncio.sleep(KEEPALIVE / 3)
    started = time.monotonic() - KEEPALIVE / 3
    await closed_after(conn, started, at_least=KEEPALIVE * 0.8, at_most=KEEPALIVE)
    await conn.close()


async def test_data_channel_and_long_upload_outlive_every_timer(wcs: Wcs) -> None:
    alice = await wcs.admit("KEEP", ALICE)
    ws, _ = await connect(wcs, alice)
    try:
        await asyncio.sleep(KEEPALIVE + HEAD_TIMEOUT + 0.5)
        await ws.send_json({"type": "ping"})
        await recv_type(ws, "pong")
        # An upload whose body takes longer than the head and keep-alive timers.
        conn = await Raw.open(wcs)
        total = 40 * 64 * 1024
        await conn.send(upload_head(alice, f"Content-Length: {total}"))
        for _ in range(40):
            await conn.send(os.urandom(64 * 1024))
            await asyncio.sleep((KEEPALIVE + HEAD_TIMEOUT) / 40)
        resp = await conn.response()
        assert resp is not None and resp.status == 201, resp
        await conn.close()
        event = await recv_type(ws, "item.shared")
        assert event["item"]["size"] == total
        assert not ws.closed
    finally:
        await ws.close()


# -- the connection cap --------------------------------------------------------------------------

async def refused(wcs: Wcs) -> bool:
    """Whether a new TLS connection is closed by the server before any request."""
    try:
        conn = await Raw.open(wcs)
    except (ConnectionError, OSError, asyncio.IncompleteReadError):
        return True
    try:
        return await conn.closed_by_server(timeout=2.0)
    finally:
        await conn.close()


async def test_max_connections_is_enforced(deployment: Config) -> None:
    cap = 5
    # Long timers: only the cap may close anything here.
    async with limited_wcs(deployment, max_connections=cap, header_timeout_seconds=60.0,
                           keepalive_timeout_seconds=60.0) as wcs:
        alice = await wcs.admit("CAP", ALICE)  # the internal listener has its own count
        idle = [await Raw.open(wcs) for _ in range(cap)]
        await wait_for(lambda: open_connections(wcs) == cap)
        for _ in range(3):
            assert await refused(wcs)
        assert wcs.server is not None and wcs.server.guards["public"].refused == 3
        for conn in idle[:-1]:  # the ones at the cap are still served
            assert not await conn.closed_by_server(timeout=0.05)
        await idle[-1].send(request_head("GET", "/healthz"))
        resp = await idle[-1].response()
        assert resp is not None and resp.status == 200
        for conn in idle:
            await conn.close()
        await wait_for(lambda: open_connections(wcs) == 0)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls.client_context(wcs.cfg))) as http:
            async with http.get(wcs.items_url(alice.conference), headers=alice.headers) as r:
                assert r.status == 200, await r.text()
