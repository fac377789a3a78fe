"""The decrypting download's core (docs/protocol.md §8.3): verified plaintext of an item,
any byte range of it, streamed from the share with memory flat in the item's size.

Operations: `open_document` opens the blob (one worker-thread hop, as a ciphertext download
does), reads its 56-byte header, and checks its size against the item's row and the key
commitment (once per response), before any status is sent; `plaintext` then yields the
plaintext of `[start, end)` from that same descriptor, and `Document.close` closes it.

Plan: the Cobblestone chunk arithmetic (`RangeDecryptor.span`) maps the plaintext range to
the ciphertext chunks that hold it (plus the final chunk when the range reaches the end,
which authenticates the length), and only those are read, `READ_CHUNKS` chunks (1 MiB of
plaintext) per share read. Each batch is decrypted chunk by chunk into a reused buffer and
only the verified part is yielded: when chunk k fails its tag, the chunks before it are
yielded and `DocumentCorrupt` is raised, so the caller cuts the response after exactly the
verified prefix. A blob that ends early (cut on the share, or while being read) raises the
same way once the verified bytes are out.

Buffers: a yielded view may still sit in the TLS transport after the consumer's write
returned, so a buffer is refilled only once nothing exports it (as `FileShare.stream`
does); a stream holds a handful at most.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass

from webconf.crypto.cobblestone import (
    CHUNK_SIZE,
    CIPHERTEXT_CHUNK_SIZE,
    HEADER_SIZE,
    CobblestoneError,
    RangeDecryptor,
)

from .share import FileShare

READ_CHUNKS = 64
"""Ciphertext chunks per share read and per decrypted batch: 1 MiB of plaintext."""
READ_BYTES = READ_CHUNKS * CIPHERTEXT_CHUNK_SIZE


class DocumentCorrupt(Exception):
    """The blob failed verification; `kind` and `chunk` say where (for logs and metrics,
    never to choose anything but refusing). `sent` is how many verified plaintext bytes
    of the response went out before the failure."""

    def __init__(self, kind: str, chunk: int | None = None, sent: int = 0) -> None:
        super().__init__(f"blob failed verification: {kind}"
                         + ("" if chunk is None else f" (chunk {chunk})"))
        self.kind = kind
        """"size" (the share's size is not the row's), "commitment", "tag", "truncated",
        "trailing"."""
        self.chunk = chunk
        self.sent = sent


@dataclass(frozen=True)
class Document:
    """An open blob whose header and size checked out, ready for `plaintext`; the caller
    `close`s it (closing a read-only descriptor waits for no disk)."""

    blob_id: str
    decryptor: RangeDecryptor
    fd: int

    @property
    def size(self) -> int:
        return self.decryptor.plaintext_size

    def close(self) -> None:
        os.close(self.fd)


async def open_document(share: FileShare, blob_id: str, key: bytes, context: bytes,
                        ciphertext_size: int) -> Document:
    """Open the blob and check its size against its row's and its key commitment; raises
    `DocumentCorrupt` (or `ShareError` for a blob that is gone), with nothing left open."""
    fd, size = await share.open_blob(blob_id)
    try:
        if size != ciphertext_size:
            raise DocumentCorrupt("size")
        header = await share.read_at(fd, HEADER_SIZE, 0)
        try:
            return Document(blob_id, RangeDecryptor(key, context, header, size), fd)
        except CobblestoneError as exc:
            raise DocumentCorrupt(exc.kind, exc.chunk) from None
    except BaseException:
        os.close(fd)
        raise


async def plaintext(share: FileShare, doc: Document, start: int,
                    end: int) -> AsyncIterator[memoryview]:
    """Yield the verified plaintext of `[start, end)`, as views of reused buffers (each
    valid until the next step); raise `DocumentCorrupt` after the verified prefix."""
    if start >= end:
        return
    ct_offset, ct_length, index = doc.decryptor.span(start, end - start)
    skip = start - index * CHUNK_SIZE  # plaintext before `start` in the first chunk
    buffers = _Buffers()
    try:
        async for view in _verified(share, doc, ct_offset, ct_length, index, skip, end - start,
                                    buffers):
            yield view
            del view
    finally:
        buffers.release()


async def _verified(share: FileShare, doc: Document, ct_offset: int, ct_length: int, index: int,
                    skip: int, remaining: int, buffers: _Buffers) -> AsyncIterator[memoryview]:
    """`plaintext`'s loop: read whole chunks, decrypt, yield the verified part in range."""
    rd = doc.decryptor
    sent = 0
    carry = b""  # a partial chunk from a short read (never on a local disk)
    async for piece in share.stream(doc.blob_id, ct_offset, ct_length, READ_BYTES, fd=doc.fd):
        data: bytes | memoryview = piece
        if carry:
            data = carry + piece
        del piece
        usable = _whole_chunks(rd, index, len(data))
        out = buffers.take(_plain_room(usable))
        verified = 0
        failure: CobblestoneError | None = None
        try:
            verified = rd.decrypt_chunks_into(index, memoryview(data)[:usable], memoryview(out))
        except CobblestoneError as exc:
            failure = exc
            if exc.kind == "tag" and exc.chunk is not None:
                verified = (exc.chunk - index) * CHUNK_SIZE  # the chunks before it passed
        carry = bytes(memoryview(data)[usable:])
        del data
        index += -(-usable // CIPHERTEXT_CHUNK_SIZE)  # a final chunk may hold no plaintext
        take = min(max(verified - skip, 0), remaining)
        if take:
            view = memoryview(out)[skip : skip + take]
            remaining -= take
            sent += take
            yield view
            del view
        skip = max(skip - verified, 0)
        if failure is not None:
            raise DocumentCorrupt(failure.kind, failure.chunk, sent)
    if remaining > 0:  # the share ran out before the span did
        raise DocumentCorrupt("truncated", index, sent)


def _whole_chunks(rd: RangeDecryptor, index: int, available: int) -> int:
    """How many of `available` ciphertext bytes from chunk `index` on form whole chunks."""
    before_final = rd.final_chunk_index - index
    full = min(available // CIPHERTEXT_CHUNK_SIZE, before_final)
    usable = full * CIPHERTEXT_CHUNK_SIZE
    final_len = rd.ciphertext_size - HEADER_SIZE - rd.final_chunk_index * CIPHERTEXT_CHUNK_SIZE
    if full == before_final and available - usable >= final_len:
        usable += final_len
    return usable


def _plain_room(ciphertext_bytes: int) -> int:
    """Room for the plaintext of `ciphertext_bytes` of whole chunks (a final short chunk
    counts as a whole one)."""
    return -(-ciphertext_bytes // CIPHERTEXT_CHUNK_SIZE) * CHUNK_SIZE


class _Buffers:
    """This stream's plaintext buffers: one is refilled only when no view of it is alive.
    They come from, and go back to, a small pool shared by every stream of the process:
    zeroing a fresh 1 MiB per batch would cost page faults on every response."""

    def __init__(self) -> None:
        self._held: list[bytearray] = []

    def take(self, size: int) -> bytearray:
        for buf in self._held:
            if len(buf) >= size and _unexported(buf):
                return buf
        for i, buf in enumerate(_POOL):
            if len(buf) >= size and _unexported(buf):
                del _POOL[i]
                self._held.append(buf)
                return buf
        buf = bytearray(size + 1)  # one spare byte so `_unexported` never reallocates
        del buf[-1]
        self._held.append(buf)
        return buf

    def release(self) -> None:
        """Give this stream's buffers to the pool (a view still queued in a transport
        keeps its buffer from being refilled: `take` checks)."""
        for buf in self._held:
            if len(_POOL) < POOL_BUFFERS and len(buf) <= READ_CHUNKS * CHUNK_SIZE:
                _POOL.append(buf)
        self._held.clear()


POOL_BUFFERS = 16
"""Plaintext buffers kept between responses (at most 16 MiB)."""
_POOL: list[bytearray] = []


def _unexported(buf: bytearray) -> bool:
    """True when no memoryview of `buf` is alive: resizing a bytearray fails while one is."""
    try:
        buf.append(0)
    except BufferError:
        return False
    del buf[-1]
    return True
