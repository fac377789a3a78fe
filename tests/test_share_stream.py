"""The share's download fast path (pooled buffers, page-cache reads) and its blob writer."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from aiofiles.threadpool.binary import AsyncFileIO

from conferencing import share as share_mod
from conferencing.share import WRITE_BUFFER, FileShare, ShareError

CHUNK = 64 * 1024


async def _blob(share: FileShare, data: bytes, pieces: list[int] | None = None) -> str:
    writer = await share.create()
    pos = 0
    for size in pieces or [len(data)]:
        await writer.write(data[pos : pos + size])
        pos += size
    await writer.write(data[pos:])
    await writer.commit()
    assert writer.size == len(data)
    return writer.blob_id


@pytest.fixture
def share(tmp_path: Path) -> FileShare:
    s = FileShare(tmp_path / "share")
    s.prepare()
    return s


async def _collect(share: FileShare, blob_id: str, offset: int, length: int | None) -> bytes:
    out = bytearray()
    async for view in share.stream(blob_id, offset, length, CHUNK):
        out += view
    return bytes(out)


@pytest.mark.parametrize("nowait", [True, False])
async def test_stream_returns_every_range(share: FileShare, nowait: bool) -> None:
    data = random.Random(1).randbytes(5 * CHUNK + 123)
    blob_id = await _blob(share, data)
    share._nowait = share._nowait and nowait
    for offset, length in [(0, None), (0, len(data)), (1, 10), (CHUNK - 1, CHUNK + 2),
                           (3 * CHUNK, None), (len(data) - 1, 1), (0, 0), (100, 5 * CHUNK)]:
        want = data[offset:] if length is None else data[offset : offset + length]
        assert await _collect(share, blob_id, offset, length) == want


async def test_views_held_by_a_consumer_are_never_overwritten(share: FileShare) -> None:
    data = random.Random(2).randbytes(8 * CHUNK)
    blob_id = await _blob(share, data)
    kept = []
    async for view in share.stream(blob_id, 0, None, CHUNK):
        kept.append(view)  # like a transport that queued the view instead of copying it
    assert b"".join(kept) == data
    for i, view in enumerate(kept):
        assert bytes(view) == data[i * CHUNK : (i + 1) * CHUNK]


async def test_buffers_are_reused_when_released(share: FileShare) -> None:
    data = random.Random(3).randbytes(16 * CHUNK)
    blob_id = await _blob(share, data)
    seen = set()
    got = bytearray()
    async for view in share.stream(blob_id, 0, None, CHUNK):
        seen.add(id(view.obj))
        got += view
        del view
    assert bytes(got) == data
    assert len(seen) <= 2  # two buffers ping-pong instead of 16 allocations
    assert share._read_pool  # and they go back to the pool for the next download
    again = set()
    async for view in share.stream(blob_id, 0, None, CHUNK):
        again.add(id(view.obj))
        del view
    assert again <= seen


async def test_not_cached_falls_back_to_a_thread(share: FileShare,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    data = random.Random(4).randbytes(3 * CHUNK + 7)
    blob_id = await _blob(share, data)
    real = os.preadv
    calls = {"nowait": 0, "blocking": 0}

    def preadv(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        if flags:
            calls["nowait"] += 1
            raise BlockingIOError  # as RWF_NOWAIT says when the page cache lacks the data
        calls["blocking"] += 1
        return real(fd, buffers, offset)

    monkeypatch.setattr(share_mod.os, "preadv", preadv)
    share._nowait = True
    assert await _collect(share, blob_id, 0, None) == data
    assert calls["blocking"] >= 4 and calls["nowait"] == calls["blocking"]


async def test_unsupported_nowait_is_remembered(share: FileShare,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    data = random.Random(5).randbytes(2 * CHUNK)
    blob_id = await _blob(share, data)
    real = os.preadv

    def preadv(fd: int, buffers: list[memoryview], offset: int, flags: int = 0) -> int:
        if flags:
            raise OSError(95, "Operation not supported")  # e.g. some network filesystems
        return real(fd, buffers, offset)

    monkeypatch.setattr(share_mod.os, "preadv", preadv)
    share._nowait = True
    assert await _collect(share, blob_id, 0, None) == data
    assert share._nowait is False


async def test_missing_blob(share: FileShare) -> None:
    with pytest.raises(ShareError):
        await _collect(share, "0" * 32, 0, None)


@pytest.mark.parametrize("pieces", [[1, 2, 3], [CHUNK] * 20, [WRITE_BUFFER],
                                    [WRITE_BUFFER - 1, 2], [3 * WRITE_BUFFER + 5]])
async def test_writer_keeps_every_byte(share: FileShare, pieces: list[int]) -> None:
    data = random.Random(sum(pieces)).randbytes(sum(pieces) + 11)
    blob_id = await _blob(share, data, pieces)
    assert share.blob_path(blob_id).read_bytes() == data


async def test_short_raw_writes_are_completed() -> None:
    class Dribble(io.RawIOBase):
        def __init__(self) -> None:
            self.out = bytearray()

        def writable(self) -> bool:
            return True

        def write(self, b: object) -> int:
            piece = bytes(memoryview(b)[:1000])  # type: ignore[arg-type]
            self.out += piece
            return len(piece)

    f = Dribble()
    data = os.urandom(10_000)
    await share_mod._write_all(AsyncFileIO(f, None, None), memoryview(data))
    assert bytes(f.out) == data
