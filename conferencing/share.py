"""The file share: ciphertext blobs under opaque names.

Layout: `<root>/ab/cd/<32 hex>` where the name is 128 random bits; temp files are
`<root>/.tmp/<32 hex>.part`. Nothing on the share names a tenant, conference or file, and
only Cobblestone ciphertext is ever written here.

Commit protocol (docs/protocol.md §6): write the temp file, fsync it, rename it into place,
fsync the blob's directory; only then does the caller commit the metadata row. A crash
before the rename leaves a temp file, a crash after it leaves a blob without a row: the
sweep removes both, at a WCS's startup and every `wcs.share_sweep_seconds` while it runs
(conferencing/app.py).

Several writers (nodes, workers) may share one share directory. Their names cannot collide:
temp and blob names are 128 random bits, and a temp file is created with O_EXCL. What one
process sees as a leftover may be another's write in progress, though: a temp file being
filled, or a blob renamed into place whose row is not committed yet. So a sweep of a
shared share spares every file younger than `sweep_age` (`wcs.upload_deadline_seconds`,
which bounds an upload, plus `SWEEP_MARGIN_SECONDS` for its row's commit); only a single
process (SQLite, one node) sweeps everything at startup; a running WCS's periodic sweep
always spares young files, on every backend (its own uploads are in flight). Files that
vanish under a sweep (another process renamed, removed or swept them) are skipped.

No blocking file call runs in the event loop. The cold paths (a blob's writes, its fsync,
rename and removal) go through aiofiles' worker pool. `stream()`, the download hot path,
is hand-made: it copies a chunk that is already in the page cache in the event loop
(`preadv` with `RWF_NOWAIT`: the read fails instead of waiting for the disk) into a pooled
buffer, which aiofiles cannot do, and only otherwise hands the read to a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import stat
import time
from collections.abc import AsyncGenerator, Iterable
from pathlib import Path

import aiofiles
import aiofiles.os
from aiofiles.threadpool.binary import AsyncFileIO

BLOB_ID_RE = re.compile(r"^[0-9a-f]{32}$")
TMP_DIR = ".tmp"
WRITE_BUFFER = 1024 * 1024
READ_POOL_BYTES = 16 * 1024 * 1024
"""Read buffers `stream()` keeps for reuse (beyond that they are freed after the request)."""
_RWF_NOWAIT: int = getattr(os, "RWF_NOWAIT", 0)
SWEEP_MARGIN_SECONDS = 600.0
"""Beyond the upload deadline: how long a shared share's sweep leaves an unreferenced file
alone, for the writer that renamed it into place to commit its row."""


def sweep_age(upload_deadline_seconds: float, *, shared: bool) -> float:
    """The `min_age_seconds` of a startup sweep: 0 for a share only this process writes;
    else older than any upload still in progress (its last write is at most the deadline
    after its start) plus the margin for its row."""
    return upload_deadline_seconds + SWEEP_MARGIN_SECONDS if shared else 0.0


class ShareError(Exception):
    """A blob is missing or the share is unusable."""


def new_blob_id() -> str:
    return secrets.token_hex(16)


class BlobWriter:
    """Buffered writer of one blob's ciphertext into a temp file, committed atomically."""

    def __init__(self, share: FileShare, blob_id: str, file: AsyncFileIO,
                 tmp_path: Path) -> None:
        self.share = share
        self.blob_id = blob_id
        self._file = file
        self._tmp_path = tmp_path
        # One fixed buffer, filled by copying and written from in place: growing a
        # bytearray from empty for every MiB (and copying it out to bytes) measured a fifth
        # of the WCS's CPU per uploaded byte.
        self._buffer = bytearray(WRITE_BUFFER)
        self._fill = 0
        self.size = 0
        self._done = False

    async def write(self, data: bytes | bytearray | memoryview) -> None:
        src = memoryview(data).cast("B")
        self.size += len(src)
        while len(src):
            if self._fill == 0 and len(src) >= WRITE_BUFFER:
                await _write_all(self._file, src)  # big: no copy
                return
            take = min(len(src), WRITE_BUFFER - self._fill)
            self._buffer[self._fill : self._fill + take] = src[:take]
            self._fill += take
            src = src[take:]
            if self._fill == WRITE_BUFFER:
                await self._flush()

    async def _flush(self) -> None:
        if self._fill:
            await _write_all(self._file, memoryview(self._buffer)[: self._fill])
            self._fill = 0

    async def commit(self) -> None:
        """Flush, fsync, rename into place and fsync the directory."""
        await self._flush()
        final = self.share.blob_path(self.blob_id)
        await _fsync(self._file.fileno())  # unbuffered: nothing left to flush
        await self._file.close()
        await aiofiles.os.makedirs(final.parent, exist_ok=True, mode=0o700)
        await aiofiles.os.replace(self._tmp_path, final)
        await _fsync_dir(final.parent)
        self._done = True
        self._buffer = bytearray()

    async def abort(self) -> None:
        """Drop the temp file; safe to call more than once."""
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        try:
            await self._file.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                await aiofiles.os.unlink(self._tmp_path)


class FileShare:
    """A directory (local disk or a shared NFS/SMB mount) holding ciphertext blobs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / TMP_DIR
        self._read_pool: list[bytearray] = []
        self._nowait = bool(_RWF_NOWAIT) and hasattr(os, "preadv")

    def prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.tmp_dir.mkdir(exist_ok=True, mode=0o700)

    def blob_path(self, blob_id: str) -> Path:
        if not BLOB_ID_RE.match(blob_id):
            raise ShareError("invalid blob id")
        return self.root / blob_id[:2] / blob_id[2:4] / blob_id

    async def create(self) -> BlobWriter:
        blob_id = new_blob_id()
        tmp_path = self.tmp_dir / f"{blob_id}.part"
        # "xb": O_CREAT | O_EXCL; unbuffered, as BlobWriter buffers itself.
        file = await aiofiles.open(tmp_path, "xb", buffering=0, opener=_owner_only)
        return BlobWriter(self, blob_id, file, tmp_path)

    async def read_at(self, fd: int, length: int, pos: int) -> bytes:
        """Up to `length` bytes of an open blob from `pos` (fewer at its end): in the event
        loop when the page cache holds them, else in a worker thread (`_pread`)."""
        buf = bytearray(length)
        with memoryview(buf) as view:
            n = await self._pread(fd, view, pos)
        return bytes(buf[:n])

    async def open_blob(self, blob_id: str) -> tuple[int, int]:
        """(a read-only descriptor of the blob, its size), in one worker-thread hop (a
        download's existence check, Content-Length and stream). The caller closes it
        (`os.close`: closing a read-only descriptor waits for no disk)."""
        path = self.blob_path(blob_id)

        def opened() -> tuple[int, int]:
            fd = os.open(path, os.O_RDONLY)
            try:
                return fd, os.fstat(fd).st_size
            except BaseException:
                os.close(fd)
                raise

        try:
            return await asyncio.to_thread(opened)
        except FileNotFoundError:
            raise ShareError("blob missing") from None

    async def stream(self, blob_id: str, offset: int = 0, length: int | None = None,
                     chunk_size: int = 1024 * 1024, *,
                     fd: int | None = None) -> AsyncGenerator[memoryview, None]:
        """Stream `length` bytes of the blob from `offset` as views of reused buffers.

        A fresh 1 MiB `bytes` per chunk costs page faults (zeroing new pages) that measured
        a fifth of the WCS's CPU per downloaded byte, and a thread hop per chunk costs more
        than copying 1 MiB from the page cache. So a chunk is read into a pooled buffer,
        in the event loop when the page cache holds it (`preadv` with `RWF_NOWAIT`, which
        returns what is cached instead of waiting for the disk), else in a worker thread.
        A buffer is refilled only once nothing exports it any more (`_unexported`), so a
        view still held by the consumer or queued in a transport is never overwritten.
        With `fd` (from `open_blob`) it reads that descriptor and leaves it open.
        """
        own = fd is None
        if fd is None:
            try:
                fd = await asyncio.to_thread(os.open, self.blob_path(blob_id), os.O_RDONLY)
            except FileNotFoundError:
                raise ShareError("blob missing") from None
        held: list[bytearray] = []
        try:
            pos = offset
            remaining = length
            while remaining is None or remaining > 0:
                want = chunk_size if remaining is None else min(chunk_size, remaining)
                buf = self._take_buffer(chunk_size, held)
                view = memoryview(buf)[:want]
                n = await self._pread(fd, view, pos)
                if n == 0:
                    break
                pos += n
                if remaining is not None:
                    remaining -= n
                chunk = view if n == want else view[:n]
                del view  # hold no view of our own across the yield (see _unexported)
                yield chunk
                del chunk
        finally:
            self._give_back(held, chunk_size)
            if own:
                os.close(fd)  # read-only: no flush to wait for

    async def _pread(self, fd: int, view: memoryview, pos: int) -> int:
        if self._nowait:
            try:
                return os.preadv(fd, [view], pos, _RWF_NOWAIT)
            except BlockingIOError:
                pass  # not (all) in the page cache: wait for the disk in a thread
            except OSError:
                self._nowait = False  # e.g. a network share without RWF_NOWAIT support
        return await asyncio.to_thread(os.preadv, fd, [view], pos)

    def _take_buffer(self, size: int, held: list[bytearray]) -> bytearray:
        """A free buffer of `size` bytes: this stream's own, a pooled one, or a new one."""
        for buf in held:
            if _unexported(buf):
                return buf
        for i, buf in enumerate(self._read_pool):
            if len(buf) == size and _unexported(buf):
                del self._read_pool[i]
                held.append(buf)
                return buf
        buf = bytearray(size + 1)  # one spare byte so `_unexported` never reallocates
        del buf[-1]
        held.append(buf)
        return buf

    def _give_back(self, held: list[bytearray], size: int) -> None:
        keep = max(2, READ_POOL_BYTES // max(size, 1))
        for buf in held:
            if len(self._read_pool) < keep:
                self._read_pool.append(buf)
        held.clear()

    async def remove(self, blob_id: str) -> None:
        path = self.blob_path(blob_id)
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.unlink(path)
        await _fsync_dir(path.parent)

    def sweep(self, known_blob_ids: Iterable[str], *,
              min_age_seconds: float = 0.0) -> dict[str, int]:
        """Remove temp files and blobs without a metadata row (run at startup).

        `min_age_seconds` spares files last written more recently than that, for a share
        used by several processes, where another one may be writing a temp file or be
        between its rename and its row commit (`sweep_age`). `known_blob_ids` must be read
        before the sweep starts: a row committed later is younger than the cutoff.
        """
        known = set(known_blob_ids)
        cutoff = time.time() - min_age_seconds
        removed = {"temp": 0, "orphan": 0}
        for entry in _entries(self.tmp_dir):
            if _older(entry, cutoff) and _unlink(entry):
                removed["temp"] += 1
        for first in _entries(self.root):
            if first.name == TMP_DIR or not first.is_dir():
                continue
            for second in _entries(first):
                if not second.is_dir():
                    continue
                for blob in _entries(second):
                    if blob.name not in known and _older(blob, cutoff) and _unlink(blob):
                        removed["orphan"] += 1
        return removed


def _entries(directory: Path) -> list[Path]:
    """The entries of `directory`; none when it is missing (or was removed meanwhile)."""
    try:
        return list(directory.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def _older(path: Path, cutoff: float) -> bool:
    """A regular file last written at `cutoff` or before; False if it is gone already."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_mtime <= cutoff


def _unlink(path: Path) -> bool:
    """Remove `path`; False if another process renamed or removed it first."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


async def _write_all(file: AsyncFileIO, data: memoryview) -> None:
    """Write all of `data` to an unbuffered file (a raw write may be partial)."""
    while len(data):
        n: int | None = await file.write(data)
        if n is None:  # non-blocking file would block: cannot happen for our regular files
            raise ShareError("short write to the share")
        data = data[n:]


def _owner_only(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


def _unexported(buf: bytearray) -> bool:
    """True when no memoryview of `buf` is alive: resizing a bytearray fails while one is."""
    try:
        buf.append(0)
    except BufferError:
        return False
    del buf[-1]
    return True


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fsync = aiofiles.os.wrap(os.fsync)
_fsync_dir = aiofiles.os.wrap(_sync_dir)
"""aiofiles has no fsync: its own `wrap` runs these in the same worker pool."""
