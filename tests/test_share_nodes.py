"""One share directory, several writers (issue 10, item 6): nodes and workers write into the
same share at once. Their names never collide, and a sweep by one (a WCS starting) never
removes another's upload in progress: neither its temp file nor its blob renamed into place
whose row is not committed yet. Only leftovers older than any upload go."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from pathlib import Path

from conferencing.share import TMP_DIR, WRITE_BUFFER, FileShare, sweep_age
from webconf.deploy.config import Config
from webconf.deploy.init import init_deployment
from webconf.deploy.local import free_port

from .conftest import TENANTS, running_wcs

DEADLINE = 3600.0


async def read(share: FileShare, blob_id: str) -> bytes:
    return b"".join([bytes(chunk) async for chunk in share.stream(blob_id)])


async def write(share: FileShare, data: bytes, pieces: int = 4) -> str:
    writer = await share.create()
    step = max(1, len(data) // pieces)
    for start in range(0, len(data), step):
        await writer.write(data[start:start + step])
        await asyncio.sleep(0)  # let the other writer in between
    await writer.commit()
    return writer.blob_id


def age(path: Path, seconds: float) -> None:
    """Make `path` look last written `seconds` ago."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def stale_leftovers(root: Path, older_than: float) -> tuple[Path, Path]:
    """A crashed writer's temp file and blob without a row, both older than any upload."""
    temp = root / TMP_DIR / f"{secrets.token_hex(16)}.part"
    temp.write_bytes(b"half")
    blob_id = secrets.token_hex(16)
    blob = root / blob_id[:2] / blob_id[2:4] / blob_id
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"orphan")
    age(temp, older_than + 60)
    age(blob, older_than + 60)
    return temp, blob


async def test_two_writers_on_one_share_write_concurrently(tmp_path: Path) -> None:
    one, two = FileShare(tmp_path / "share"), FileShare(tmp_path / "share")
    one.prepare()
    two.prepare()
    payloads = [os.urandom(WRITE_BUFFER + 1000 * i) for i in range(12)]
    ids = await asyncio.gather(*(write(one if i % 2 else two, data)
                                 for i, data in enumerate(payloads)))
    assert len(set(ids)) == len(ids)
    for blob_id, data in zip(ids, payloads, strict=True):
        assert await read(one, blob_id) == data and await read(two, blob_id) == data
    assert list((tmp_path / "share" / TMP_DIR).iterdir()) == []


async def test_a_sweep_spares_another_writers_upload_in_progress(tmp_path: Path) -> None:
    root = tmp_path / "share"
    sweeper, other = FileShare(root), FileShare(root)
    sweeper.prepare()
    other.prepare()
    min_age = sweep_age(DEADLINE, shared=True)
    assert min_age > DEADLINE

    filling = await other.create()  # a temp file being filled, written to a while ago
    first = os.urandom(2 * WRITE_BUFFER)
    await filling.write(first)
    temp = root / TMP_DIR / f"{filling.blob_id}.part"
    age(temp, DEADLINE / 2)  # a slow client, still within the upload deadline
    renamed = await other.create()  # renamed into place, its row not committed yet
    renamed_data = os.urandom(WRITE_BUFFER // 3)
    await renamed.write(renamed_data)
    await renamed.commit()
    stale_temp, stale_blob = stale_leftovers(root, min_age)

    removed = await asyncio.to_thread(sweeper.sweep, set(), min_age_seconds=min_age)
    assert removed == {"temp": 1, "orphan": 1}
    assert not stale_temp.exists() and not stale_blob.exists()
    assert temp.exists()
    assert await read(other, renamed.blob_id) == renamed_data

    rest = os.urandom(WRITE_BUFFER // 2)
    await filling.write(rest)
    await filling.commit()
    assert await read(sweeper, filling.blob_id) == first + rest


async def test_a_starting_wcs_spares_another_nodes_upload(tmp_path: Path, pg_url: str) -> None:
    """The sweep a WCS runs at startup, on PostgreSQL (several nodes may share the share)."""
    cfg: Config = init_deployment(tmp_path / "dep", https_port=free_port(),
                                  internal_port=free_port(), sip_port=free_port(),
                                  tenants=TENANTS, database=pg_url)
    other = FileShare(cfg.share_dir)
    other.prepare()
    filling = await other.create()
    await filling.write(os.urandom(WRITE_BUFFER + 1))
    renamed = await other.create()
    data = os.urandom(5000)
    await renamed.write(data)
    await renamed.commit()
    stale_temp, stale_blob = stale_leftovers(
        cfg.share_dir, sweep_age(cfg.wcs.upload_deadline_seconds, shared=True))

    async with running_wcs(cfg):
        assert not stale_temp.exists() and not stale_blob.exists()
        assert (cfg.share_dir / TMP_DIR / f"{filling.blob_id}.part").exists()
        assert await read(other, renamed.blob_id) == data
    await filling.commit()
    assert other.blob_path(filling.blob_id).stat().st_size == WRITE_BUFFER + 1


def test_sweep_survives_files_vanishing_under_it(tmp_path: Path) -> None:
    """Another process renames and removes files while this one sweeps: the sweep skips
    what vanished instead of failing (which would stop a WCS from starting)."""
    root = tmp_path / "share"
    share = FileShare(root)
    share.prepare()
    stop = threading.Event()
    churned = 0

    prefixes = [secrets.token_hex(2) for _ in range(16)]  # the directories it writes in
    for prefix in prefixes:
        (root / prefix[:2] / prefix[2:]).mkdir(parents=True, exist_ok=True)

    def churn() -> None:
        nonlocal churned
        while not stop.is_set():
            blob_id = prefixes[churned % len(prefixes)] + secrets.token_hex(14)
            temp = root / TMP_DIR / f"{blob_id}.part"
            final = root / blob_id[:2] / blob_id[2:4] / blob_id
            try:
                temp.write_bytes(b"x")
                os.replace(temp, final)
                final.unlink()
            except FileNotFoundError:
                pass  # the sweep took it first
            churned += 1

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        for _ in range(2000):
            share.sweep(set(), min_age_seconds=0.0)  # must not raise
    finally:
        stop.set()
        thread.join(10)
    assert churned > 0
