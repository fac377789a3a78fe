"""An upload in flight cannot outlive its presenter's rights or its conference (issue 15.1).

A presenter starts an upload and sends 10 bytes; the organizer then ejects them (and ends
the conference, or ends and reopens it); the presenter sends the rest. The item is
committed only if the cookie and the conference are still current in the transaction that
writes its row (docs/protocol.md §4.1): otherwise `401`, no row, no blob, no temp file, and
no `item.shared` on anyone's channel. And an upload has a pace: a body that trickles in
(1 byte/s) or runs past its deadline gets `408` quickly and leaves nothing.

Real in-process WCS over real TLS; the uploads go out as raw bytes so the test controls
when each part of the body is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from webconf.deploy.config import Config

from .conftest import Participant, Wcs, running_wcs, wait_for
from .test_channel import connect
from .test_hostile_http import Raw, blob_files, item_ids, settled, temp_files, upload_head

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
CAROL = "carol@contoso.example"
TIMEOUT = 5.0
FIRST = b"0123456789"


async def channel_events(ws: aiohttp.ClientWebSocketResponse, seconds: float) -> list[str]:
    """The types of the events `ws` receives within `seconds` (or until it closes)."""
    kinds: list[str] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await asyncio.wait_for(ws.receive(), left)
        except TimeoutError:
            break
        if msg.type != WSMsgType.TEXT:
            break
        kinds.append(msg.json()["type"])
    return kinds


async def start_upload(wcs: Wcs, who: Participant, total: int) -> Raw:
    """An upload of `total` bytes with only its first 10 sent, already being written."""
    before = set(temp_files(wcs))
    conn = await Raw.open(wcs)
    await conn.send(upload_head(who, f"Content-Length: {total}") + FIRST)
    # The handler authenticated the request and opened the blob's temp file.
    await wait_for(lambda: set(temp_files(wcs)) - before, TIMEOUT)
    return conn


@pytest.mark.parametrize("what", ["nothing", "revoke", "revoke_and_end", "end_and_reopen"])
async def test_upload_in_flight_after_revocation_commits_nothing(what: str, wcs: Wcs) -> None:
    alice = await wcs.admit("UPREV", ALICE)
    bob = await wcs.admit("UPREV", BOB, organizer=ALICE, role="presenter")
    carol = await wcs.admit("UPREV", CAROL, organizer=ALICE)
    ws, _ = await connect(wcs, carol)
    blobs = blob_files(wcs)
    rest = os.urandom(200_000)
    conn = await start_upload(wcs, bob, len(FIRST) + len(rest))
    try:
        if what != "nothing":
            assert await wcs.revoke(bob) == 204
        if what in ("revoke_and_end", "end_and_reopen"):
            assert await wcs.end("UPREV") == 204
        if what == "end_and_reopen":
            alice = await wcs.admit("UPREV", ALICE)  # the organizer reopens it
        await conn.send(rest)
        resp = await conn.response()
    finally:
        await conn.close()
    assert resp is not None
    if what == "nothing":  # the harness itself: the same upload, left alone, is shared
        assert resp.status == 201, resp
        assert "item.shared" in await channel_events(ws, 1.0)
        await ws.close()
        return
    assert resp.status == 401, resp
    assert resp.json()["error"]["code"] == "unauthorized"
    assert resp.headers["www-authenticate"].startswith("Bearer")
    # Nothing was pushed: carol (still in, or until the end) saw no item.shared.
    assert "item.shared" not in await channel_events(ws, 0.5)
    await ws.close()
    # No row, no blob, no temp file; in the conference as it is now or once reopened.
    if what == "revoke_and_end":
        alice = await wcs.admit("UPREV", ALICE)
    await settled(wcs, alice, set(), blobs)
    assert blob_files(wcs) == blobs
    assert await item_ids(wcs, alice) == set()


async def test_item_committed_before_the_end_is_shredded_by_it(wcs: Wcs) -> None:
    """An upload that commits before the end is an ordinary item: an end that shreds
    (the tenant's `shred_content_at_end`, docs/protocol.md §8.6) shreds it."""
    assert wcs.server is not None and wcs.server.service is not None
    alice = await wcs.admit("UPEND", ALICE)  # the tenant exists from its first admit on
    await wcs.server.service.store.set_tenant_settings(
        "contoso.example", {"shred_content_at_end": True}, time.time())
    blobs = blob_files(wcs)
    status, body = await wcs.upload(alice, os.urandom(10_000))
    assert status == 201, body
    assert await wcs.end("UPEND") == 204
    alice = await wcs.admit("UPEND", ALICE)
    await settled(wcs, alice, set(), blobs)


# -- the upload's pace -----------------------------------------------------------------------

@contextlib.asynccontextmanager
async def paced_wcs(cfg: Config, **settings: Any) -> AsyncIterator[Wcs]:
    for name, value in settings.items():
        setattr(cfg.wcs, name, value)
    async with running_wcs(cfg) as wcs:
        yield wcs


async def drip(conn: Raw, piece: bytes, interval: float) -> None:
    """Send `piece` every `interval` seconds until the server closes the connection."""
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        while not conn.writer.is_closing():
            await conn.send(piece)
            await asyncio.sleep(interval)


async def assert_408_and_closed(conn: Raw, within: float) -> None:
    started = time.monotonic()
    resp = await conn.response(timeout=within + TIMEOUT)
    elapsed = time.monotonic() - started
    assert resp is not None and resp.status == 408, resp
    assert resp.json()["error"]["code"] == "request_timeout"
    assert elapsed < within, elapsed
    assert await conn.closed_by_server(timeout=1.0)


@pytest.mark.parametrize("case", ["min_rate", "deadline"])
async def test_slow_upload_gets_408_quickly_and_leaves_nothing(
        case: str, deployment: Config) -> None:
    settings: dict[str, Any] = {
        "min_rate": {"upload_min_bytes_per_second": 1000, "upload_rate_grace_seconds": 0.5,
                     "upload_deadline_seconds": 60.0},
        # Fast enough for any minimum rate, but past the whole upload's deadline.
        "deadline": {"upload_min_bytes_per_second": 0, "upload_deadline_seconds": 1.0},
    }[case]
    async with paced_wcs(deployment, **settings) as wcs:
        alice = await wcs.admit("PACE", ALICE)
        status, _ = await wcs.upload(alice, os.urandom(100_000))  # a brisk upload is fine
        assert status == 201
        items, blobs = await item_ids(wcs, alice), blob_files(wcs)
        conn = await start_upload(wcs, alice, 10 * 1024 * 1024)
        piece, interval = (b"x", 1.0) if case == "min_rate" else (os.urandom(2000), 0.02)
        dripping = asyncio.create_task(drip(conn, piece, interval))
        try:
            await assert_408_and_closed(conn, within=2.5)
        finally:
            dripping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dripping
            await conn.close()
        await settled(wcs, alice, items, blobs)
