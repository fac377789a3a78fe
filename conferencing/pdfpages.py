"""A shared PDF's page count (docs/protocol.md §9.1), read without plaintext on any disk.

The upload is encrypted as it streams (service.py); pypdf needs random access (a PDF's
cross-reference table is at its end), so feeding it the stream would mean holding the whole
plaintext in memory. Instead, once the blob is on the share and before its row commits, a
worker thread opens it through `SealedReader`: a read-only, seekable file that reads and
verifies only the Cobblestone chunks pypdf asks for, keeping a few of them decrypted in
memory. Bounds: the reader refuses (raises) past `MAX_READ_BYTES` of plaintext served or
past the deadline, both checked on every read; pypdf's own limits cap what it decompresses;
at most `MAX_WORKERS` counts run at once. A PDF pypdf cannot read, or that hits a bound,
gets no count (it is still shared); so does a count over `MAX_PAGES`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from webconf.crypto.cobblestone import (
    CHUNK_SIZE,
    CIPHERTEXT_CHUNK_SIZE,
    HEADER_SIZE,
    CobblestoneError,
    RangeDecryptor,
)

log = logging.getLogger("webconf.wcs.pdfpages")

DEADLINE_SECONDS = 10.0
"""A count that takes longer is abandoned: the item is shared without `pages`."""
MAX_READ_BYTES = 64 * 1024 * 1024
"""Plaintext bytes pypdf may read (re-reads included) before the count is abandoned."""
CACHED_CHUNKS = 16
"""Decrypted chunks kept per count (256 KiB): pypdf re-reads what it just looked at."""
MAX_PAGES = 100_000
MAX_WORKERS = 2
_POOL = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="pdf-pages")


class CountAbandoned(Exception):
    """A bound was hit: the deadline, the read budget, or a chunk failed verification."""


def is_pdf(name: str, content_type: str) -> bool:
    """Counted: `application/pdf` (parameters ignored) or a name ending in `.pdf`."""
    return (content_type.split(";", 1)[0].strip().lower() == "application/pdf"
            or name.lower().endswith(".pdf"))


class SealedReader(io.RawIOBase):
    """The plaintext of a Cobblestone blob as a seekable binary file, chunk by verified
    chunk; `deadline` (a `time.monotonic()` value) and `max_bytes` bound every read."""

    def __init__(self, path: Path, key: bytes, context: bytes, *, deadline: float,
                 max_bytes: int = MAX_READ_BYTES) -> None:
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        try:
            size = os.fstat(self._fd).st_size
            header = os.pread(self._fd, HEADER_SIZE, 0)
            self._rd = RangeDecryptor(key, context, header, size)
        except BaseException:
            os.close(self._fd)
            raise
        self._pos = 0
        self._deadline = deadline
        self._budget = max_bytes
        self._cache: OrderedDict[int, bytes] = OrderedDict()

    @property
    def size(self) -> int:
        return self._rd.plaintext_size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise OSError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        want = min(len(buffer), max(self.size - self._pos, 0))
        if want == 0:
            return 0
        if time.monotonic() > self._deadline:
            raise CountAbandoned("deadline")
        self._budget -= want
        if self._budget < 0:
            raise CountAbandoned("read budget")
        out = memoryview(buffer).cast("B")
        done = 0
        while done < want:
            index, skip = divmod(self._pos + done, CHUNK_SIZE)
            chunk = self._chunk(index)
            take = min(len(chunk) - skip, want - done)
            if take <= 0:
                break
            out[done:done + take] = chunk[skip:skip + take]
            done += take
        self._pos += done
        return done

    def _chunk(self, index: int) -> bytes:
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        start = HEADER_SIZE + index * CIPHERTEXT_CHUNK_SIZE
        length = min(CIPHERTEXT_CHUNK_SIZE, self._rd.ciphertext_size - start)
        data = os.pread(self._fd, length, start)
        try:
            plain = self._rd.decrypt_chunks(index, data)
        except CobblestoneError as exc:
            raise CountAbandoned(f"blob failed verification: {exc.kind}") from None
        self._cache[index] = plain
        if len(self._cache) > CACHED_CHUNKS:
            self._cache.popitem(last=False)
        return plain

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
            self._cache.clear()
        super().close()


def count_pages_sync(path: Path, key: bytes, context: bytes, *,
                     deadline_seconds: float = DEADLINE_SECONDS,
                     max_bytes: int = MAX_READ_BYTES) -> int | None:
    """The page count of the sealed PDF at `path`; None when pypdf cannot tell in bounds."""
    from pypdf import PdfReader  # imported on first use: a WCS that never counts pays nothing

    # pypdf logs every oddity it repairs as a warning: a hostile PDF would flood the log.
    logging.getLogger("pypdf").setLevel(logging.ERROR)
    deadline = time.monotonic() + deadline_seconds
    try:
        with SealedReader(path, key, context, deadline=deadline, max_bytes=max_bytes) as raw:
            stream = io.BufferedReader(raw, buffer_size=CHUNK_SIZE)
            pages = len(PdfReader(stream, strict=False).pages)
    except CountAbandoned as exc:
        log.warning('{"event": "pdf_pages.abandoned", "why": "%s"}', exc)
        return None
    except RecursionError:
        return None
    except Exception:  # pypdf raises many kinds for a file it cannot read: no count
        return None
    return pages if 1 <= pages <= MAX_PAGES else None


async def count_pages(path: Path, key: bytes, context: bytes, *,
                      deadline_seconds: float = DEADLINE_SECONDS) -> int | None:
    """`count_pages_sync` on the counting pool; None past the deadline (the thread stops at
    its next read)."""
    loop = asyncio.get_running_loop()
    job = loop.run_in_executor(_POOL, lambda: count_pages_sync(
        path, key, context, deadline_seconds=deadline_seconds))
    try:
        async with asyncio.timeout(deadline_seconds + 1.0):
            return await asyncio.shield(job)
    except TimeoutError:
        return None
