"""`webconf serve` as a real subprocess: crash safety, graceful drain, secrecy at rest."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from pathlib import Path

import pytest

from webconf.crypto.cobblestone import Decryptor
from webconf.deploy.config import Config
from webconf.deploy.local import ServeNotReady

from .conftest import ServeProcess, Wcs


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def share_files(cfg: Config) -> list[Path]:
    return [p for p in cfg.share_dir.rglob("*") if p.is_file()]


async def get_plaintext(wcs: Wcs, who, item_id: str) -> bytes:
    base = f"{wcs.items_url(who.conference)}/{item_id}"
    async with wcs.http.get(f"{base}/key", headers=who.headers) as resp:
        assert resp.status == 200
        body = await resp.json()
    async with wcs.http.get(f"{base}/content", headers=who.headers) as resp:
        assert resp.status == 200
        blob = await resp.read()
    dec = Decryptor(b64d(body["key"]), b64d(body["context"]))
    return dec.update(blob) + dec.finalize()


async def test_kill_9_mid_upload_leaves_no_half_item(deployment: Config,
                                                     serve: ServeProcess) -> None:
    serve.start()
    wcs = Wcs(deployment)
    try:
        alice = await wcs.admit("CR1", "alice@contoso.example")
        early = os.urandom(300_000)
        status, body = await wcs.upload(alice, early, name="early.bin")
        assert status == 201
        early_id = body["item"]["id"]

        sent = asyncio.Event()

        async def slow_body():
            for i in range(200):
                yield os.urandom(256 * 1024)
                if i == 8:
                    sent.set()
                await asyncio.sleep(0.05)

        upload = asyncio.ensure_future(wcs.upload(alice, slow_body(), name="half.bin"))
        await asyncio.wait_for(sent.wait(), 30)
        deadline = time.monotonic() + 10
        tmp_dir = deployment.share_dir / ".tmp"
        while time.monotonic() < deadline and not any(tmp_dir.iterdir()):
            await asyncio.sleep(0.05)
        assert any(tmp_dir.iterdir()), "the upload never reached the share"
        serve.kill9()
        with pytest.raises(Exception):  # noqa: B017 - the connection dies with the server
            await upload
    finally:
        await wcs.close()

    # Simulate the worst crash window too: a blob renamed into place with no row.
    orphan = deployment.share_dir / "ab" / "cd" / ("ab" + "cd" + "0" * 28)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"\x00" * 100)

    restarted = ServeProcess(deployment.base_dir)
    restarted.start()
    wcs = Wcs(deployment)
    try:
        assert list((deployment.share_dir / ".tmp").iterdir()) == []
        assert not orphan.exists()
        async with wcs.http.get(wcs.items_url(alice.conference), headers=alice.headers) as resp:
            assert resp.status == 200
            items = (await resp.json())["items"]
        assert [i["id"] for i in items] == [early_id]
        assert len(share_files(deployment)) == 1
        assert await get_plaintext(wcs, alice, early_id) == early
    finally:
        await wcs.close()
        assert restarted.terminate() == 0


async def test_sigterm_drains_in_flight_upload(deployment: Config, serve: ServeProcess) -> None:
    serve.start()
    wcs = Wcs(deployment)
    try:
        alice = await wcs.admit("DR1", "alice@contoso.example")
        payload = [os.urandom(128 * 1024) for _ in range(16)]
        started = asyncio.Event()

        async def body():
            for i, chunk in enumerate(payload):
                yield chunk
                if i == 1:
                    started.set()
                await asyncio.sleep(0.1)

        upload = asyncio.ensure_future(wcs.upload(alice, body(), name="drain.bin"))
        await asyncio.wait_for(started.wait(), 30)
        await asyncio.sleep(0.2)
        assert serve.proc is not None
        serve.proc.send_signal(15)
        status, result = await asyncio.wait_for(upload, 30)
        assert status == 201, result
        assert result["item"]["size"] == sum(map(len, payload))
        code = await asyncio.to_thread(serve.proc.wait, 30)
        assert code == 0
    finally:
        await wcs.close()


async def test_secrets_never_reach_disk_or_logs(deployment: Config, serve: ServeProcess) -> None:
    serve.start()
    wcs = Wcs(deployment)
    markers = []
    names = []
    keys: list[bytes] = []
    cookies = []
    try:
        alice = await wcs.admit("SEC1", "alice@contoso.example")
        bob = await wcs.admit("SEC1", "bob@contoso.example", organizer="alice@contoso.example")
        cookies += [alice.cookie, bob.cookie]
        for i, size in enumerate((10, 20_000, 70_000)):
            marker = f"TOP-SECRET-MARKER-{i}-{os.urandom(4).hex()}".encode()
            name = f"board-minutes-{i}-{os.urandom(3).hex()}.pdf"
            data = (marker * (size // len(marker) + 1))[:max(size, len(marker))]
            status, body = await wcs.upload(alice, data, name=name,
                                            content_type="application/x-secret-type")
            assert status == 201
            markers.append(marker)
            names.append(name.encode())
            async with wcs.http.get(f"{wcs.items_url('SEC1')}/{body['item']['id']}/key",
                                    headers=bob.headers) as resp:
                keys.append(b64d((await resp.json())["key"]))
            assert await get_plaintext(wcs, bob, body["item"]["id"]) == data
        assert await wcs.revoke(bob) == 204
    finally:
        await wcs.close()
        assert serve.terminate() == 0

    needles = [*markers, *names, b"application/x-secret-type", *keys]
    needles += [base64.urlsafe_b64encode(k).rstrip(b"=") for k in keys]
    needles += [base64.b64encode(k) for k in keys]
    needles += [k.hex().encode() for k in keys]
    needles += [c.encode() for c in cookies]
    needles += [c.split(".")[2].encode() for c in cookies]  # signatures alone
    scanned = 0
    for path in deployment.var_dir.rglob("*"):
        if not path.is_file():
            continue
        content = path.read_bytes()
        scanned += 1
        for needle in needles:
            assert needle not in content, f"{needle[:24]!r}... found in {path}"
    assert scanned >= 5  # db (+wal), log files, three blobs
    logs = list((deployment.var_dir / "log").glob("*.log"))
    assert logs and all(p.stat().st_size > 0 for p in logs)
    for path in (deployment.keys_dir).iterdir():
        assert path.stat().st_mode & 0o077 == 0, path
    # Share paths reveal nothing either: only random 128-bit hex names.
    for path in share_files(deployment):
        rel = path.relative_to(deployment.share_dir).parts
        assert len(rel) == 3 and len(rel[2]) == 32
        assert rel[0] == rel[2][:2] and rel[1] == rel[2][2:4]


def test_serve_that_cannot_start_reports_its_status_and_stderr(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path / "nowhere")
    with pytest.raises(ServeNotReady) as raised:
        serve.start(30)
    assert raised.value.returncode == 2
    assert "webconf serve:" in raised.value.stderr and "webconf init" in raised.value.stderr
    assert serve.stop() == 2  # already stopped: stop() is safe to repeat


async def test_serve_process_from_asyncio_stops_its_whole_group(deployment: Config) -> None:
    """The async form the load tester uses: ready, serving, then nothing of it left."""
    async with ServeProcess(deployment.base_dir) as serve:
        assert serve.ready_line is not None and serve.ready_line.startswith("webconf ready")
        wcs = Wcs(deployment)
        try:
            async with wcs.http.get(f"{wcs.url}/healthz") as resp:
                assert resp.status == 200
        finally:
            await wcs.close()
        pgid = serve.pid
    assert serve.proc is not None and serve.proc.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)
