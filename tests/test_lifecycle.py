"""Content lifecycle (conferencing/lifecycle.py, docs/protocol.md §8.6): the organizer's
end, the idle end, the grace period and its shred, the tenant's shred-at-end, the quota.
In-process WCS on both store backends; the focus's BYE is tests/test_focus_bye.py."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from conferencing.audit import read_records
from conferencing.service import ConferenceService
from webconf.deploy.config import Config

from .conftest import Participant, Wcs, running_wcs, wait_for

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"


def blobs(cfg: Config) -> list[Path]:
    """Every file on the share (blobs and temp files alike)."""
    return [p for p in cfg.share_dir.rglob("*") if p.is_file()]


def service_of(wcs: Wcs) -> ConferenceService:
    assert wcs.server is not None and wcs.server.service is not None
    return wcs.server.service


async def items(wcs: Wcs, who: Participant) -> tuple[int, list[dict[str, object]]]:
    async with wcs.http.get(f"{wcs.url}/v1/conferences/{who.conference}/items",
                            headers=who.headers) as resp:
        body = await resp.json()
        return resp.status, body.get("items", [])


async def end(wcs: Wcs, who: Participant) -> tuple[int, dict[str, object] | None]:
    async with wcs.http.delete(f"{wcs.url}/v1/conferences/{who.conference}",
                               headers=who.headers) as resp:
        return resp.status, None if resp.status == 204 else await resp.json()


async def audit(wcs: Wcs, event: str, count: int = 1) -> list[dict[str, object]]:
    path = wcs.cfg.log_dir / "audit.log"
    await wait_for(lambda: len([r for r in read_records(path) if r["event"] == event]) >= count)
    return [r for r in read_records(path) if r["event"] == event]


async def test_organizer_ends_for_everyone(wcs: Wcs) -> None:
    alice = await wcs.admit("L1", ALICE)
    bob = await wcs.admit("L1", BOB, organizer=ALICE, role="presenter")
    status, error = await end(wcs, bob)  # a presenter is not the organizer
    assert status == 403 and error is not None
    assert error["error"]["code"] == "forbidden"  # type: ignore[index]
    async with wcs.http.ws_connect(
            f"{wcs.url.replace('https', 'wss')}/v1/conferences/{bob.conference}/channel",
            headers=bob.headers) as ws:
        assert (await asyncio.wait_for(ws.receive_json(), 5))["type"] == "welcome"
        assert (await end(wcs, alice))[0] == 204
        assert (await asyncio.wait_for(ws.receive_json(), 5))["type"] == "conference.ended"
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    for who in (alice, bob):
        assert (await items(wcs, who))[0] == 401
    # Ended: the organizer's cookie went with it, so a second DELETE is a 401.
    status, error = await end(wcs, alice)
    assert status == 401
    record, = await audit(wcs, "conference.end")
    assert (record["reason"], record["revoked"], record["conference"]) == (
        "organizer", 2, alice.conference)
    # An attendee cannot reopen it; the organizer can.
    await wcs.admit("L1", BOB, organizer=ALICE, expect=404)
    again = await wcs.admit("L1", ALICE)
    assert again.conference == alice.conference and (await items(wcs, again))[0] == 200


async def test_reopen_within_grace_keeps_items_then_shred_after(deployment: Config) -> None:
    deployment.wcs.content_grace_seconds = 1.0
    deployment.wcs.lifecycle_sweep_seconds = 0  # the test drives the sweep
    async with running_wcs(deployment) as wcs:
        service = service_of(wcs)
        alice = await wcs.admit("G1", ALICE)
        for data in (b"a" * 70_000, b"b" * 30_000):
            assert (await wcs.upload(alice, data))[0] == 201
        assert (await end(wcs, alice))[0] == 204
        assert len(blobs(deployment)) == 2
        assert await service.lifecycle.sweep(time.time()) == {"ended": 0, "shredded": 0}
        # Within the grace: the organizer's join reopens it, with its items.
        alice = await wcs.admit("G1", ALICE)
        status, listed = await items(wcs, alice)
        assert status == 200 and sorted(i["size"] for i in listed) == [30_000, 70_000]  # type: ignore[type-var]
        assert (await end(wcs, alice))[0] == 204
        # Past the grace: the sweep shreds rows (wrapped DEKs) and blobs.
        assert await service.lifecycle.sweep(time.time() + 2) == {"ended": 0, "shredded": 2}
        assert blobs(deployment) == []
        assert await service.store.items(alice.conference) == []
        shred, = await audit(wcs, "content.shred")
        assert (shred["conference"], shred["items"]) == (alice.conference, 2)
        # The URI now starts empty.
        alice = await wcs.admit("G1", ALICE)
        assert await items(wcs, alice) == (200, [])


async def test_reopen_after_grace_before_sweep_starts_empty(deployment: Config) -> None:
    deployment.wcs.content_grace_seconds = 0.3
    deployment.wcs.lifecycle_sweep_seconds = 0
    async with running_wcs(deployment) as wcs:
        alice = await wcs.admit("G2", ALICE)
        assert (await wcs.upload(alice, b"x" * 10_000))[0] == 201
        assert (await end(wcs, alice))[0] == 204
        await asyncio.sleep(0.5)
        alice = await wcs.admit("G2", ALICE)
        assert await items(wcs, alice) == (200, [])
        assert blobs(deployment) == []


async def test_periodic_task_ends_idle_and_shreds(deployment: Config) -> None:
    """The WCS's own task: an idle conference ends by itself, its content goes after the
    grace; one with a live cookie stays open."""
    deployment.wcs.idle_end_seconds = 0.5
    deployment.wcs.content_grace_seconds = 0.5
    deployment.wcs.lifecycle_sweep_seconds = 0.1
    async with running_wcs(deployment) as wcs:
        alice = await wcs.admit("I1", ALICE)
        assert (await wcs.upload(alice, b"y" * 5_000))[0] == 201
        assert await wcs.revoke(alice) == 204  # left: nobody holds a live cookie
        carol = await wcs.admit("I2", "carol@contoso.example")  # stays in her meeting
        service = service_of(wcs)

        async def ended(conference: str) -> bool:
            row = await service.store.conference(conference)
            return row is not None and row.ended_at is not None

        deadline = time.monotonic() + 10
        while not await ended(alice.conference):
            assert time.monotonic() < deadline, "the idle conference did not end"
            await asyncio.sleep(0.05)
        record, = await audit(wcs, "conference.end")
        assert (record["reason"], record["conference"]) == ("idle", alice.conference)
        await wait_for(lambda: blobs(deployment) == [], timeout=10)
        assert not await ended(carol.conference)
        assert (await items(wcs, carol))[0] == 200


async def test_idle_end_is_claimed_once(wcs: Wcs) -> None:
    """Two sweeps at once (two nodes): the conference ends once, audited once."""
    service = service_of(wcs)
    alice = await wcs.admit("I3", ALICE)
    assert await wcs.revoke(alice) == 204
    later = time.time() + service.cfg.wcs.idle_end_seconds + 1
    first, second = await asyncio.gather(service.lifecycle.sweep(later),
                                          service.lifecycle.sweep(later))
    assert first["ended"] + second["ended"] == 1
    # A join since the cutoff keeps it open: nobody to end.
    bob = await wcs.admit("I4", BOB)
    assert await wcs.revoke(bob) == 204
    assert (await service.lifecycle.sweep(time.time() + 1))["ended"] == 0


async def test_tenant_shreds_at_end(wcs: Wcs) -> None:
    service = service_of(wcs)
    alice = await wcs.admit("S1", ALICE)
    assert (await wcs.upload(alice, b"z" * 20_000))[0] == 201
    set_cmd = subprocess.run(  # the operator's command, against the running server's store
        [sys.executable, "-m", "webconf", "tenant", "set", str(wcs.cfg.base_dir),
         "contoso.example", "shred_content_at_end=true"], capture_output=True, text=True,
        timeout=60, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert set_cmd.returncode == 0, set_cmd.stderr
    assert await service.store.tenant_shreds_content_at_end("contoso.example")
    assert not await service.store.tenant_shreds_content_at_end("fabrikam.example")
    assert (await end(wcs, alice))[0] == 204
    assert blobs(wcs.cfg) == []
    assert await service.store.items(alice.conference) == []
    alice = await wcs.admit("S1", ALICE)
    assert await items(wcs, alice) == (200, [])


async def test_conference_quota(deployment: Config) -> None:
    deployment.wcs.max_conference_bytes = 100_000
    async with running_wcs(deployment) as wcs:
        alice = await wcs.admit("Q1", ALICE)
        assert (await wcs.upload(alice, b"a" * 60_000))[0] == 201
        status, body = await wcs.upload(alice, b"b" * 60_000)
        assert status == 413 and body["error"]["code"] == "conference_quota"
        assert len(blobs(deployment)) == 1
        # Exactly up to the quota is fine; one byte more is not.
        assert (await wcs.upload(alice, b"c" * 40_000))[0] == 201
        status, body = await wcs.upload(alice, b"d")
        assert status == 413 and body["error"]["code"] == "conference_quota"
        # Another conference has its own quota.
        other = await wcs.admit("Q2", ALICE)
        assert (await wcs.upload(other, b"e" * 90_000))[0] == 201


async def test_concurrent_uploads_cannot_both_squeeze_past(deployment: Config) -> None:
    """Each fits the room left when it starts; together they do not: the commit's check
    (under the conference's lock) lets one through and refuses the other."""
    deployment.wcs.max_conference_bytes = 100_000
    async with running_wcs(deployment) as wcs:
        alice = await wcs.admit("Q3", ALICE)
        results = await asyncio.gather(wcs.upload(alice, b"a" * 60_000, "a.pdf"),
                                       wcs.upload(alice, b"b" * 60_000, "b.pdf"))
        assert sorted(status for status, _ in results) == [201, 413]
        refused = next(body for status, body in results if status == 413)
        assert refused["error"]["code"] == "conference_quota"
        assert len(blobs(deployment)) == 1
        status, listed = await items(wcs, alice)
        assert status == 200 and len(listed) == 1
