"""The client library (clients.wcs, clients.download) against a real in-process WCS.

Participants are admitted through the internal API (as the focus would); everything after
that goes through the client library only. Every wait is bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import os
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from clients.download import (
    DownloadError,
    ItemIntegrityError,
    download_item,
    safe_filename,
)
from clients.wcs import (
    Channel,
    WcsAuthError,
    WcsError,
    WcsSession,
    b64url_decode,
    client_ssl_context,
    final_close_reason,
)
from conferencing.app import WcsServer
from webconf.deploy.config import Config
from webconf.retry import Backoff

from .conftest import Participant, Wcs, wait_for

TIMEOUT = 5.0
ORGANIZER = "alice@contoso.example"
MiB = 1024 * 1024


# -- helpers ---------------------------------------------------------------------------------

def session_for(wcs: Wcs, who: Participant, url: str | None = None) -> WcsSession:
    return WcsSession(url or wcs.url, who.conference, who.cookie,
                      ssl=client_ssl_context(wcs.cfg.certs_dir / "ca.pem"))


async def meeting(wcs: Wcs, conf: str) -> tuple[Participant, Participant]:
    alice = await wcs.admit(conf, ORGANIZER)
    bob = await wcs.admit(conf, "bob@contoso.example", organizer=ORGANIZER)
    return alice, bob


async def next_event(events: AsyncIterator[dict[str, Any]], *kinds: str,
                     timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next event of one of `kinds` (any kind if none given), skipping roster noise."""
    while True:
        event = await asyncio.wait_for(anext(events), timeout)
        if not kinds or event["type"] in kinds:
            return event


async def assert_ended(events: AsyncIterator[dict[str, Any]]) -> None:
    with pytest.raises(StopAsyncIteration):
        while True:
            await asyncio.wait_for(anext(events), TIMEOUT)


class Pump:
    """Iterates a channel in the background, as a real client's event loop would, so close
    frames are answered at once even while the test is busy elsewhere."""

    def __init__(self, channel: Channel) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self.task = asyncio.create_task(self._run(channel))

    async def _run(self, channel: Channel) -> None:
        try:
            async for event in channel.events():
                self.queue.put_nowait(event)
        finally:
            self.queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        while (event := await self.queue.get()) is not None:
            yield event


def find_blob(wcs: Wcs, ciphertext: bytes) -> Path:
    matches = [p for p in wcs.cfg.share_dir.rglob("*") if p.is_file()
               and p.stat().st_size == len(ciphertext) and p.read_bytes() == ciphertext]
    assert len(matches) == 1
    return matches[0]


async def ciphertext(session: WcsSession, item: dict[str, Any]) -> bytes:
    async with session.request("GET", item["url"]) as resp:
        return await resp.read()


# -- items -----------------------------------------------------------------------------------

async def test_upload_list_key_download(wcs: Wcs, tmp_path: Path) -> None:
    alice, bob = await meeting(wcs, "C1")
    data = os.urandom(3 * MiB + 12_345)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir()
    calls: list[tuple[int, int | None]] = []
    async with session_for(wcs, alice) as a, session_for(wcs, bob) as b:
        item = await a.upload(src, name="Q3 plan — ü.pdf", progress=lambda n, t: calls.append(
            (n, t)))
        assert item["name"] == "Q3 plan — ü.pdf"
        assert item["content_type"] == "application/pdf"
        assert item["size"] == len(data)
        assert item["sha256"] == hashlib.sha256(data).hexdigest()
        sent = [n for n, _ in calls]
        assert sent == sorted(sent) and calls[-1] == (len(data), len(data))
        assert {t for _, t in calls} == {len(data)} and len(calls) >= 4

        assert [i["id"] for i in await b.list_items()] == [item["id"]]
        key, context = await b.item_key(item["id"])
        assert len(key) == 32 and context.startswith(b"webconf-item/v1")

        seen: list[int] = []
        result = await download_item(b, item, key, context, out,
                                     progress=lambda n, t: seen.append(n))
        assert result.path == out / "Q3 plan — ü.pdf"
        assert result.path.read_bytes() == data
        assert result.sha256 == item["sha256"] and result.size == len(data)
        assert seen == sorted(seen) and seen[-1] == len(data)
        # A second download into the folder never replaces the first.
        again = await download_item(b, item, key, context, out)
        assert again.path == out / "Q3 plan — ü (2).pdf"
        assert sorted(os.listdir(out)) == ["Q3 plan — ü (2).pdf", "Q3 plan — ü.pdf"]
        # A file path is replaced; None only hashes.
        target = tmp_path / "exact.bin"
        target.write_bytes(b"old")
        assert (await download_item(b, item, key, context, target)).path == target
        assert target.read_bytes() == data
        counted = await download_item(b, item, key, context, None)
        assert counted.path is None and counted.sha256 == result.sha256

        with pytest.raises(WcsError) as refused:
            await b.delete(item["id"])
        assert (refused.value.status, refused.value.code) == (403, "forbidden")
        await a.delete(item["id"])
        assert await b.list_items() == []


async def test_upload_stream_with_explicit_size(wcs: Wcs) -> None:
    alice, _ = await meeting(wcs, "C2")
    data = os.urandom(MiB + 7)
    digest = hashlib.sha256(data).hexdigest()

    async def stream() -> AsyncIterator[bytes]:
        for off in range(0, len(data), 100_000):
            yield data[off:off + 100_000]

    async with session_for(wcs, alice) as a:
        item = await a.upload(stream(), name="notes.txt", size=len(data), sha256=digest)
        assert item["size"] == len(data) and item["sha256"] == digest
        assert item["content_type"] == "text/plain"
        # A stream that does not match its digest is aborted before its last byte.
        with pytest.raises(ValueError, match="sha256 does not match"):
            await a.upload(stream(), name="bad.txt", size=len(data), sha256="0" * 64)
        with pytest.raises(ValueError, match="stream ended after"):
            await a.upload(stream(), name="short.txt", size=len(data) + 1)
        with pytest.raises(ValueError, match="longer than its declared size"):
            await a.upload(stream(), name="long.txt", size=len(data) - 1)
        assert [i["name"] for i in await a.list_items()] == ["notes.txt"]
        # The WCS kept nothing of the aborted uploads.
        await wait_for(lambda: len([p for p in wcs.cfg.share_dir.rglob("*") if p.is_file()])
                       == 1)


async def test_empty_file_round_trip(wcs: Wcs, tmp_path: Path) -> None:
    alice, bob = await meeting(wcs, "C5")
    (tmp_path / "empty").write_bytes(b"")
    out = tmp_path / "out"
    out.mkdir()
    calls: list[tuple[int, int | None]] = []
    async with session_for(wcs, alice) as a, session_for(wcs, bob) as b:
        item = await a.upload(tmp_path / "empty", name="empty.txt",
                              progress=lambda n, t: calls.append((n, t)))
        assert calls == [(0, 0)] and item["size"] == 0
        assert item["sha256"] == hashlib.sha256(b"").hexdigest()
        key, context = await b.item_key(item["id"])
        result = await download_item(b, item, key, context, out)
        assert result.path == out / "empty.txt" and result.path.read_bytes() == b""


async def test_file_changed_during_upload_is_not_shared(wcs: Wcs, tmp_path: Path) -> None:
    alice, _ = await meeting(wcs, "C4")
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * MiB))

    def tamper(sent: int, total: int | None) -> None:
        if sent == MiB:  # the first pass hashed the old bytes; the second reads these
            with src.open("r+b") as f:
                f.seek(2 * MiB)
                f.write(b"changed")

    async with session_for(wcs, alice) as a:
        with pytest.raises(ValueError, match="sha256 does not match"):
            await a.upload(src, name="moving.bin", progress=tamper)
        assert await a.list_items() == []


async def test_errors_are_parsed(wcs: Wcs, tmp_path: Path) -> None:
    alice, bob = await meeting(wcs, "C3")
    (tmp_path / "f").write_bytes(b"x")
    async with session_for(wcs, bob) as b:
        with pytest.raises(WcsError) as exc:
            await b.upload(tmp_path / "f", name="f")
        assert (exc.value.status, exc.value.code) == (403, "forbidden")
        assert "presenters" in exc.value.message
        with pytest.raises(WcsError) as missing:
            await b.item_key("nope")
        assert missing.value.status == 404
    forged = Participant("C3", bob.pid, bob.role, bob.cookie[:-4] + "AAAA", bob.user)
    async with session_for(wcs, forged) as f:
        with pytest.raises(WcsAuthError) as auth:
            await f.list_items()
        assert auth.value.status == 401 and auth.value.code == "unauthorized"
        with pytest.raises(WcsAuthError):
            await Channel.connect(f)


# -- integrity -------------------------------------------------------------------------------

TAMPER_CASES = {
    "flip": ("chunk 5", lambda b: b[:56 + 5 * 16400 + 99] + bytes([b[56 + 5 * 16400 + 99] ^ 1])
             + b[56 + 5 * 16400 + 100:]),
    "flip-final": ("chunk 64", lambda b: b[:-3] + bytes([b[-3] ^ 0x80]) + b[-2:]),
    "truncate": ("truncated", lambda b: b[:-10]),
    "extend": ("failed authentication", lambda b: b + b"\0" * 7),
    "commitment": ("key commitment", lambda b: b[:30] + bytes([b[30] ^ 1]) + b[31:]),
}


@pytest.mark.parametrize("case", sorted(TAMPER_CASES))
async def test_tampered_blob_leaves_nothing(case: str, wcs: Wcs, tmp_path: Path) -> None:
    alice, bob = await meeting(wcs, "T1")
    data = os.urandom(64 * 16384 + 500)  # 65 chunks; the final one is short
    out = tmp_path / "out"
    out.mkdir()
    async with session_for(wcs, alice) as a, session_for(wcs, bob) as b:
        item = await a.upload(_stream_of(data), name="deck.pdf", size=len(data))
        blob_path = find_blob(wcs, await ciphertext(b, item))
        expected, tamper = TAMPER_CASES[case]
        blob_path.write_bytes(tamper(blob_path.read_bytes()))
        key, context = await b.item_key(item["id"])
        with pytest.raises(ItemIntegrityError) as exc:
            await download_item(b, item, key, context, out)
        assert str(exc.value).startswith("item deck.pdf: ")
        assert expected in str(exc.value)
        assert os.listdir(out) == []


async def test_truncation_on_a_chunk_boundary_caught_by_the_decryptor(
        wcs: Wcs, tmp_path: Path) -> None:
    """Without the size hint the Cobblestone framing alone still rejects a cut blob."""
    alice, bob = await meeting(wcs, "T2")
    data = os.urandom(3 * 16384 + 10)
    async with session_for(wcs, alice) as a, session_for(wcs, bob) as b:
        item = await a.upload(_stream_of(data), name="a.bin", size=len(data))
        blob_path = find_blob(wcs, await ciphertext(b, item))
        blob_path.write_bytes(blob_path.read_bytes()[:56 + 2 * 16400])
        key, context = await b.item_key(item["id"])
        out = tmp_path / "out"
        out.mkdir()
        with pytest.raises(ItemIntegrityError, match="truncated"):
            await download_item(b, {**item, "ciphertext_size": None}, key, context, out)
        assert os.listdir(out) == []


async def test_sha256_and_size_mismatch(wcs: Wcs, tmp_path: Path) -> None:
    alice, bob = await meeting(wcs, "T3")
    data = os.urandom(40_000)
    out = tmp_path / "out"
    out.mkdir()
    async with session_for(wcs, alice) as a, session_for(wcs, bob) as b:
        # The WCS stores the presenter's declared digest as given: a lie is caught here.
        item = await a.upload(_stream_of(data), name="x.bin", size=len(data))
        key, context = await b.item_key(item["id"])
        with pytest.raises(ItemIntegrityError, match="item x.bin: sha256 mismatch"):
            await download_item(b, item, key, context, out, expected_sha256="0" * 64)
        with pytest.raises(ItemIntegrityError, match="size mismatch|truncated"):
            await download_item(b, {**item, "size": len(data) - 1}, key, context, out)
        with pytest.raises(ItemIntegrityError, match="truncated"):
            await download_item(b, {**item, "size": len(data) + 1}, key, context, out)
        with pytest.raises(ItemIntegrityError, match="failed authentication"):
            await download_item(b, item, bytes(32), context, out)
        # The cookie goes nowhere but this conference's items on this WCS.
        with pytest.raises(DownloadError, match="foreign_url|refusing"):
            await download_item(b, {**item, "url": "https://evil.example/v1/x"}, key, context,
                                out)
        assert os.listdir(out) == []


async def test_cancelled_download_leaves_nothing(wcs: Wcs, tmp_path: Path) -> None:
    alice, bob = await meeting(wcs, "T4")
    data = os.urandom(4 * MiB)
    out = tmp_path / "out"
    out.mkdir()
    started = asyncio.Event()
    async with session_for(wcs, alice) as a, session_for(wcs, bob) as b:
        item = await a.upload(_stream_of(data), name="big.bin", size=len(data))
        key, context = await b.item_key(item["id"])
        task = asyncio.create_task(download_item(
            b, item, key, context, out, progress=lambda n, t: n and started.set()))
        await asyncio.wait_for(started.wait(), TIMEOUT)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert os.listdir(out) == []


async def _stream_of(data: bytes) -> AsyncIterator[bytes]:
    for off in range(0, len(data), 256 * 1024):
        yield data[off:off + 256 * 1024]


# -- hostile names ---------------------------------------------------------------------------

def test_safe_filename() -> None:
    assert safe_filename("../../etc/passwd") == "etc_passwd"
    assert safe_filename("..\\x") == "x"
    assert safe_filename("..") == "item"
    assert safe_filename("..", "Ab3_x") == "Ab3_x"
    assert safe_filename(".bashrc") == "bashrc"
    assert safe_filename("a\x00b\x1fc\x7f.txt") == "abc.txt"
    assert safe_filename("slides\u202efdp.exe") == "slidesfdp.exe"
    assert safe_filename("CON.txt") == "_CON.txt"
    assert safe_filename('a<b>c:d"e|f?g*h') == "a_b_c_d_e_f_g_h"
    assert safe_filename("name. . ") == "name"
    long = safe_filename("é" * 300 + ".pdf")
    assert len(long.encode()) <= 200 and long.endswith(".pdf")
    assert safe_filename("\u0301" * 300).encode().__len__() <= 200


@pytest.mark.parametrize("name", ["../../etc/passwd", "..\\x", "..", "/abs/path.txt",
                                  ".hidden", "dir/../../up.txt"])
async def test_hostile_name_saved_inside_folder(name: str, wcs: Wcs, tmp_path: Path) -> None:
    alice, bob = await meeting(wcs, "N1")
    root = tmp_path / "dl"
    out = root / "a" / "b" / "out"
    out.mkdir(parents=True)
    async with session_for(wcs, alice) as a, session_for(wcs, bob) as b:
        item = await a.upload(_stream_of(b"payload"), name=name, size=7)
        assert item["name"] == name
        key, context = await b.item_key(item["id"])
        result = await download_item(b, item, key, context, out)
    assert result.path is not None and result.path.parent == out
    assert not result.path.name.startswith(".") and result.path.read_bytes() == b"payload"
    everything = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    assert everything == ["a", "a/b", "a/b/out", f"a/b/out/{result.path.name}"]


# -- data channel ----------------------------------------------------------------------------

async def test_channel_welcome_then_item_shared(wcs: Wcs, tmp_path: Path) -> None:
    alice, bob = await meeting(wcs, "H1")
    first = os.urandom(50_000)
    async with session_for(wcs, alice) as a, session_for(wcs, bob) as b:
        old = await a.upload(_stream_of(first), name="old.bin", size=len(first))
        channel = await Channel.connect(b)
        events = channel.events()
        try:
            welcome = await next_event(events)
            assert welcome["type"] == "welcome" and welcome["participant"] == bob.pid
            assert [e["item"]["id"] for e in welcome["items"]] == [old["id"]]
            data = os.urandom(200_000)
            new = await a.upload(_stream_of(data), name="new.bin", size=len(data))
            shared = await next_event(events, "item.shared")
            assert shared["item"]["id"] == new["id"] and "synthetic" not in shared
            result = await download_item(b, shared["item"], b64url_decode(shared["key"]),
                                         b64url_decode(shared["context"]), tmp_path)
            assert result.path is not None and result.path.read_bytes() == data
            await a.delete(old["id"])
            removed = await next_event(events, "item.removed")
            assert removed["item"]["id"] == old["id"]
            closer = asyncio.create_task(channel.close())
            await assert_ended(events)
            await closer
            assert channel.end_reason == "closed"
        finally:
            await channel.close()


async def test_channel_keepalives_are_invisible(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "K1")
    async with session_for(wcs, alice) as a, session_for(wcs, bob) as b:
        # Pings every 0.4 s, so the idle timeout is 1 s: a loaded test machine's stall of
        # a few hundred ms must not count as a dead channel.
        async with await Channel.connect(b, ping_interval=0.4) as channel:
            pump = Pump(channel)
            events = aiter(pump)
            await next_event(events, "welcome")
            await asyncio.sleep(2.4)  # ~6 pings and pongs, each well inside the timeout
            item = await a.upload(_stream_of(b"x"), name="x", size=1)
            event = await next_event(events)
            while event["type"].startswith("participant."):
                event = await next_event(events)
            assert event["type"] == "item.shared" and event["item"]["id"] == item["id"]
            assert channel.reconnects == 0
        await asyncio.wait_for(pump.task, TIMEOUT)
        assert channel.end_reason == "closed"


@pytest.mark.parametrize("how", ["revoked", "conference.ended"])
async def test_channel_ends_when_revoked_or_ended(how: str, wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "E1")
    async with session_for(wcs, bob) as b:
        channel = await Channel.connect(b)
        events = channel.events()
        await next_event(events, "welcome")
        if how == "revoked":
            assert await wcs.revoke(bob) == 204
        else:
            assert await wcs.end("E1") == 204
        assert (await next_event(events, how))["type"] == how
        await assert_ended(events)
        assert channel.end_reason == how


def test_backoff_and_close_classification() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    backoff = Backoff(rng=Top())
    delays = [backoff.next_delay() for _ in range(9)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0])
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.2)
    jittered = Backoff()
    for _ in range(50):
        ceiling = min(10.0, 0.2 * 2 ** jittered.attempt)
        assert ceiling / 2 <= jittered.next_delay() <= ceiling
    assert final_close_reason(1008, "revoked") == "revoked"
    assert final_close_reason(1000, "conference ended") == "conference.ended"
    for code, reason in [(1001, "server shutting down"), (1006, ""), (1008, "message flood"),
                         (1013, "too slow"), (None, "")]:
        assert final_close_reason(code, reason) is None


@pytest.mark.parametrize("log_kept", [True, False], ids=["resumed", "welcome"])
async def test_channel_reconnects_across_a_restart(deployment: Config, log_kept: bool) -> None:
    """Node 1 restarts while node 2 (same database and share) changes the items.

    The channel must reconnect to node 1 and resume after its last seq: with the log
    still holding the missed events, they arrive as sent, in order (`resumed`); with the
    log trimmed meanwhile, the new welcome is turned into exactly the missed changes. It
    keeps delivering live events, and ends as "unauthorized" once a reconnect is refused
    because the participant was revoked while the socket was down.
    """
    cfg = deployment
    cfg.wcs.https_port = cfg.wcs.internal_port = 0
    cfg.wcs.shutdown_grace_seconds = 1.0
    other_cfg = copy.deepcopy(cfg)
    node1, node2 = WcsServer(cfg), WcsServer(other_cfg)
    await node1.start()
    await node2.start()
    wcs1, wcs2 = Wcs(cfg, node1), Wcs(other_cfg, node2)
    running = [node1, node2]
    channel: Channel | None = None
    try:
        alice, bob = await meeting(wcs1, "R1")
        a1, a2 = session_for(wcs1, alice), session_for(wcs2, alice)
        b1 = session_for(wcs1, bob)
        first = await a1.upload(_stream_of(b"A" * 1000), name="a.txt", size=1000)
        channel = await Channel.connect(b1, backoff=Backoff(0.05, 0.2))
        pump = Pump(channel)
        events = aiter(pump)
        await next_event(events, "welcome")

        async def restart_node1() -> WcsServer:
            await running.pop(0).stop()
            return WcsServer(cfg)  # same port: cfg now holds the bound one

        fresh = await restart_node1()
        second = await a2.upload(_stream_of(b"B" * 2000), name="b.txt", size=2000)
        await a2.delete(first["id"])
        await a2.set_presentation(second["id"], 1)  # docs/protocol.md §9.1
        if not log_kept:
            assert node2.service is not None
            assert await node2.service.trim_events(time.time() + 10**9) > 0
        await fresh.start()
        running.insert(0, fresh)

        reconnected = await next_event(events, "channel.reconnected")
        assert reconnected["reconnects"] == 1 and reconnected["resumed"] is log_kept
        if log_kept:  # the missed events themselves, in their order, with their seqs
            shared = await next_event(events, "item.removed", "item.shared")
            assert shared["item"]["id"] == second["id"] and "synthetic" not in shared
            removed = await next_event(events, "item.removed", "item.shared")
            assert removed == {"type": "item.removed", "item": {"id": first["id"]},
                               "seq": shared["seq"] + 1}
        else:
            removed = await next_event(events, "item.removed", "item.shared")
            assert removed == {"type": "item.removed", "item": {"id": first["id"]},
                               "synthetic": True}
            shared = await next_event(events, "item.removed", "item.shared")
            assert shared["item"]["id"] == second["id"] and shared["synthetic"] is True
        # The presentation set meanwhile: replayed, or from the new welcome.
        shown = await next_event(events, "presentation.changed")
        assert (shown["item"], shown["page"]) == (second["id"], 1)
        assert ("synthetic" in shown) is not log_kept
        assert b64url_decode(shared["key"]) == (await b1.item_key(second["id"]))[0]
        third = await a1.upload(_stream_of(b"C" * 10), name="c.txt", size=10)
        live = await next_event(events, "item.shared", "item.removed")
        assert live["item"]["id"] == third["id"] and "synthetic" not in live
        assert channel.reconnects == 1

        # Revoked while the socket is down: the reconnect gets 401 and the channel ends.
        fresh = await restart_node1()
        assert await wcs2.revoke(bob) == 204
        await fresh.start()
        running.insert(0, fresh)
        await assert_ended(events)
        await asyncio.wait_for(pump.task, TIMEOUT)
        assert channel.end_reason == "unauthorized"
        for s in (a1, a2, b1):
            await s.close()
    finally:
        if channel is not None:
            await channel.close()
        await wcs1.close()
        await wcs2.close()
        for server in running:
            await server.stop()
