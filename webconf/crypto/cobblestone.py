"""Cobblestone-256: C2SP chunked encryption (c2sp.org/chunked-encryption) over AES-256-GCM.

Format (docs/protocol.md §5)::

    aead_key(32) || base_nonce(12) || commitment(32) = HKDF-Expand-SHA-512(
        prk  = input key (32 bytes, the item's DEK),
        info = b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM" || 0x00 || salt(24) || context)

    blob = salt(24) || commitment(32) || chunk_0 || chunk_1 || ... || chunk_n

Every chunk is AES-256-GCM with an empty AAD, under ``aead_key`` and the nonce
``base_nonce XOR i`` (``i`` the 0-based chunk number as a 12-byte big-endian integer, at most
2**38 chunks).  Plaintext chunks are 16384 bytes, except the final one, which is *always* shorter
(possibly empty): a 16384-byte message is one full chunk plus an empty final chunk.  There is no
"final" flag; the short final chunk is the end-of-message marker, which is why a full-size
ciphertext chunk (16400 bytes) can be decrypted and released the moment it arrives.

Goals, and why this scheme:

* Streaming both ways with 16 KiB of buffering: uploads and downloads of large files never hold
  the whole item in memory, and a chunk's plaintext is released only after its tag verified.
* Random access (HTTP Range) with a fixed plaintext->ciphertext offset mapping: plaintext byte
  ``p`` lives in chunk ``p // 16384`` at ciphertext offset ``56 + (p // 16384) * 16400``.
* Truncation and extension are detected: the final chunk must be short and must authenticate at
  its index, so dropping, cutting or appending chunks fails.
* Key commitment: the 32-byte commitment is checked before any chunk is decrypted, so a wrong key
  or a wrong *context* fails immediately.  webconf puts the tenant, conference and item id into
  the context (:func:`item_context`), so a blob copied to another item fails that check.
* A standard, reviewed design (TLS 1.3 record layer + HKDF) with public Wycheproof vectors,
  rather than an ad-hoc format.

This module is sans-IO: it only transforms bytes.  All decryption failures raise
:class:`CobblestoneError`; streaming decryptors fail and then keep failing.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

_NativeEncryptor: Any
try:  # cryptography >= 50 ships a native (Rust) Cobblestone-256 of the same format
    from cryptography.cobblestone import Cobblestone256Encryptor as _NativeEncryptor
except ImportError:  # pragma: no cover - older cryptography
    _NativeEncryptor = None

__all__ = [
    "CHUNK_SIZE",
    "CIPHERTEXT_CHUNK_SIZE",
    "COMMITMENT_SIZE",
    "HEADER_SIZE",
    "KEY_SIZE",
    "MAX_CHUNKS",
    "SALT_SIZE",
    "TAG_SIZE",
    "CobblestoneError",
    "CobblestoneErrorKind",
    "Decryptor",
    "Encryptor",
    "RangeDecryptor",
    "ciphertext_size",
    "decrypt",
    "derive_keys",
    "encrypt",
    "item_context",
    "plaintext_size",
]

KEY_SIZE = 32
NONCE_SIZE = 12
CHUNK_SIZE = 16384
TAG_SIZE = 16
SALT_SIZE = 24
COMMITMENT_SIZE = 32
HEADER_SIZE = SALT_SIZE + COMMITMENT_SIZE  # 56
CIPHERTEXT_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE  # 16400
MAX_CHUNKS = 1 << 38  # the spec's hard limit on the chunk counter (4 PiB)

_INFO_PREFIX = b"c2sp.org/chunked-encryption@v1+AEAD_AES_256_GCM\x00"
_ITEM_CONTEXT_PREFIX = b"webconf-item/v1"
_SCRATCH_LIMIT = 4 << 20  # larger outputs get a one-off buffer, so an instance never pins more


CobblestoneErrorKind: TypeAlias = Literal[
    "key", "commitment", "tag", "truncated", "trailing", "too-many-chunks", "chunk-range",
    "finalized",
]


class CobblestoneError(Exception):
    """Any decryption failure: bad key size, commitment mismatch, forged chunk, bad length.

    One type on purpose: callers must treat every failure the same way (reject the blob).
    `kind` and `chunk` say which check failed, for an error message only, so that no caller
    parses the text; never let them choose between accepting and rejecting.
    """

    def __init__(self, message: str, *, kind: CobblestoneErrorKind,
                 chunk: int | None = None) -> None:
        super().__init__(message)
        self.kind: CobblestoneErrorKind = kind
        """Which check failed: "key" (size), "commitment" (wrong key or context), "tag" (a
        chunk failed authentication), "truncated", "trailing" (data after the final chunk),
        "too-many-chunks", "chunk-range" (an index past the final chunk), "finalized"."""
        self.chunk = chunk
        """The index of the chunk that failed authentication ("tag" only), else None."""

    def copy(self) -> CobblestoneError:
        """A fresh error with the same message and fields (a failed decryptor re-raises)."""
        return CobblestoneError(str(self), kind=self.kind, chunk=self.chunk)


def derive_keys(key: bytes, salt: bytes, context: bytes) -> tuple[bytes, bytes, bytes]:
    """Return ``(aead_key, base_nonce, commitment)`` for one message (exposed for the vectors)."""
    if len(key) != KEY_SIZE:
        raise ValueError(f"Cobblestone-256 key must be {KEY_SIZE} bytes, got {len(key)}")
    if len(salt) != SALT_SIZE:
        raise ValueError(f"salt must be {SALT_SIZE} bytes, got {len(salt)}")
    okm = HKDFExpand(
        algorithm=hashes.SHA512(),
        length=KEY_SIZE + NONCE_SIZE + COMMITMENT_SIZE,
        info=_INFO_PREFIX + bytes(salt) + bytes(context),
    ).derive(bytes(key))
    return okm[:KEY_SIZE], okm[KEY_SIZE : KEY_SIZE + NONCE_SIZE], okm[KEY_SIZE + NONCE_SIZE :]


def ciphertext_size(plaintext_size: int) -> int:
    """Blob size for a plaintext size: header, full chunks, and the always-present final chunk."""
    if plaintext_size < 0:
        raise ValueError("plaintext size must be >= 0")
    full, _rest = divmod(plaintext_size, CHUNK_SIZE)
    if full + 1 > MAX_CHUNKS:
        raise ValueError("message too long for Cobblestone (max 2**38 chunks)")
    return HEADER_SIZE + plaintext_size + (full + 1) * TAG_SIZE


def plaintext_size(ciphertext_size: int) -> int:
    """Plaintext size for a blob size; raises :class:`CobblestoneError` for impossible sizes.

    Only the size is checked here; it is authenticated only by decrypting the final chunk.
    """
    if ciphertext_size < HEADER_SIZE + TAG_SIZE:
        raise CobblestoneError("truncated", kind="truncated")
    full, last = divmod(ciphertext_size - HEADER_SIZE, CIPHERTEXT_CHUNK_SIZE)
    if last < TAG_SIZE:  # no room for the final chunk's tag: cut at or just after a boundary
        raise CobblestoneError("truncated", kind="truncated")
    if full + 1 > MAX_CHUNKS:
        raise CobblestoneError("too many chunks", kind="too-many-chunks")
    return full * CHUNK_SIZE + last - TAG_SIZE


def item_context(tenant: str, conference_id: str, item_id: str) -> bytes:
    """Cobblestone context binding a blob to (tenant, conference, item), docs/protocol.md §5.

    Length-prefixed so that distinct triples can never encode to the same bytes.
    """
    out = bytearray(_ITEM_CONTEXT_PREFIX)
    for part in (tenant, conference_id, item_id):
        raw = part.encode("utf-8")
        if len(raw) > 0xFFFF:
            raise ValueError("context component longer than 65535 bytes")
        out += len(raw).to_bytes(2, "big") + raw
    return bytes(out)


# AESGCM.encrypt_into/decrypt_into (newer `cryptography`) write straight into our preallocated
# output buffer; older versions get an equivalent that copies.  Module-level so tests can force
# the fallback.
_HAS_INTO = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")

NATIVE = _NativeEncryptor is not None and os.environ.get("WEBCONF_COBBLESTONE_NATIVE") != "0"
"""Encryptors without a caller-chosen salt use `cryptography.cobblestone` when it exists
(~1.5x faster per 64 KiB piece than the pure engine below, which stays the fallback and the
one that serves a fixed salt, i.e. the test vectors). WEBCONF_COBBLESTONE_NATIVE=0, or
setting this to False, forces the pure engine. Decryption stays pure: its errors say which
check failed (commitment, chunk index, truncation), which the native one does not."""

_IntoFn = Callable[[bytes, memoryview, None, memoryview], int]


class _Cipher:
    """Derived per-message state: one AES-GCM object, the base nonce and the commitment."""

    __slots__ = ("aead", "base", "commitment", "decrypt_into", "encrypt_into")

    def __init__(self, key: bytes, salt: bytes, context: bytes) -> None:
        aead_key, base_nonce, commitment = derive_keys(key, salt, context)
        aead = AESGCM(aead_key)
        self.aead = aead
        self.base = int.from_bytes(base_nonce, "big")
        self.commitment = commitment
        self.encrypt_into: _IntoFn
        self.decrypt_into: _IntoFn
        if _HAS_INTO:
            self.encrypt_into = aead.encrypt_into
            self.decrypt_into = aead.decrypt_into
        else:

            def encrypt_into(nonce: bytes, data: memoryview, aad: None, out: memoryview) -> int:
                out[:] = aead.encrypt(nonce, data, aad)
                return len(out)

            def decrypt_into(nonce: bytes, data: memoryview, aad: None, out: memoryview) -> int:
                out[:] = aead.decrypt(nonce, data, aad)
                return len(out)

            self.encrypt_into = encrypt_into
            self.decrypt_into = decrypt_into

    def nonce(self, index: int) -> bytes:
        """Nonce for chunk ``index``: base nonce XOR the 96-bit big-endian counter."""
        return (self.base ^ index).to_bytes(NONCE_SIZE, "big")


class _ScratchBuffer:
    """A reusable output buffer: page-faulting a fresh one per call costs more than AES."""

    _scratch: bytearray

    def _scratch_view(self, need: int) -> memoryview:
        if need > _SCRATCH_LIMIT:
            return memoryview(bytearray(need))
        if len(self._scratch) < need:
            self._scratch = bytearray(max(need, CIPHERTEXT_CHUNK_SIZE))
        return memoryview(self._scratch)


class Encryptor(_ScratchBuffer):
    """Streaming encryptor: concatenating every output of update()/finalize() gives the blob.

    One instance encrypts exactly one message.  The 56-byte header leads the first output.
    Without a ``salt`` it runs on the native engine when there is one (see :data:`NATIVE`);
    both engines produce the same format and behave the same through this API.
    """

    def __init__(self, key: bytes, context: bytes, *, salt: bytes | None = None) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"Cobblestone-256 key must be {KEY_SIZE} bytes, got {len(key)}")
        self._native: Any = None
        self._header_sent = False
        self._done = False
        if salt is None and NATIVE and _NativeEncryptor is not None:
            native = _NativeEncryptor(bytes(key), bytes(context))
            header: bytes = native.update(b"")  # it draws the salt; its first output is the header
            if len(header) == HEADER_SIZE:
                self._native = native
                self._header = header
                return
        if salt is None:
            salt = os.urandom(SALT_SIZE)
        elif len(salt) != SALT_SIZE:
            raise ValueError(f"salt must be {SALT_SIZE} bytes, got {len(salt)}")
        self._cipher = _Cipher(key, salt, context)
        self._header = bytes(salt) + self._cipher.commitment
        self._buf = bytearray(CHUNK_SIZE)  # pending plaintext, always < one chunk
        self._fill = 0
        self._index = 0
        self._scratch = bytearray()

    @property
    def header(self) -> bytes:
        """``salt || commitment``; also emitted at the start of the first output."""
        return self._header

    def _encrypt_chunk(self, data: memoryview, out: memoryview) -> None:
        if self._index >= MAX_CHUNKS:
            raise ValueError("message too long for Cobblestone (max 2**38 chunks)")
        self._cipher.encrypt_into(self._cipher.nonce(self._index), data, None, out)
        self._index += 1

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Buffer ``data`` and return the header (first call) plus every complete chunk.

        A full chunk is never the final one, so it is emitted at once.  Whole chunks are
        encrypted straight from the caller's buffer into a reused scratch buffer: no
        quadratic re-buffering, one copy into the returned ``bytes``.
        """
        if self._done:
            raise ValueError("Encryptor already finalized")
        if self._native is not None:
            ct: bytes = self._native.update(data)
            if self._header_sent:
                return ct
            self._header_sent = True
            return self._header + ct
        src = memoryview(data).cast("B")
        total = self._fill + len(src)
        n_full = total // CHUNK_SIZE
        head = b"" if self._header_sent else self._header
        need = len(head) + n_full * CIPHERTEXT_CHUNK_SIZE
        out = self._scratch_view(need)
        out[: len(head)] = head
        pos = len(head)
        off = 0
        if n_full and self._fill:
            take = CHUNK_SIZE - self._fill
            self._buf[self._fill :] = src[:take]
            off = take
            self._encrypt_chunk(memoryview(self._buf), out[pos : pos + CIPHERTEXT_CHUNK_SIZE])
            pos += CIPHERTEXT_CHUNK_SIZE
            self._fill = 0
            n_full -= 1
        if n_full:
            # Hot loop, kept free of attribute lookups and calls: at 16 KiB per AES-GCM call
            # the Python overhead per chunk is a visible share of the total.
            index = self._index
            if index + n_full > MAX_CHUNKS:
                raise ValueError("message too long for Cobblestone (max 2**38 chunks)")
            encrypt_into = self._cipher.encrypt_into
            base = self._cipher.base
            for i in range(index, index + n_full):
                end = off + CHUNK_SIZE
                out_end = pos + CIPHERTEXT_CHUNK_SIZE
                encrypt_into((base ^ i).to_bytes(12, "big"), src[off:end], None, out[pos:out_end])
                off = end
                pos = out_end
            self._index = index + n_full
        rest = len(src) - off
        if rest:
            self._buf[self._fill : self._fill + rest] = src[off:]
            self._fill += rest
        self._header_sent = True
        return bytes(out[:pos])

    def finalize(self) -> bytes:
        """Emit the (header, if nothing was emitted yet, and the) short final chunk."""
        if self._done:
            raise ValueError("Encryptor already finalized")
        self._done = True
        head = b"" if self._header_sent else self._header
        self._header_sent = True
        if self._native is not None:
            last: bytes = self._native.finalize()
            self._native = None
            return head + last
        out = bytearray(len(head) + self._fill + TAG_SIZE)
        out[: len(head)] = head
        self._encrypt_chunk(memoryview(self._buf)[: self._fill], memoryview(out)[len(head) :])
        self._buf = bytearray()
        self._scratch = bytearray()
        return bytes(out)


class Decryptor(_ScratchBuffer):
    """Streaming decryptor: returns plaintext only for chunks whose tag verified.

    The commitment is checked as soon as the 56 header bytes are in, before any chunk.  A full
    16400-byte ciphertext chunk is never final, so it is decrypted as soon as it is buffered;
    whatever is left at finalize() must be the short final chunk.  Trailing data after the
    real final chunk therefore shows up as a chunk failing authentication (its bytes are read
    as part of a later chunk), and a message cut at a chunk boundary as "truncated".
    After any error, every later call raises the same error.
    """

    def __init__(self, key: bytes, context: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise CobblestoneError(
                f"invalid key size {len(key)}, expected {KEY_SIZE}", kind="key"
            )
        self._key = bytes(key)
        self._context = bytes(context)
        self._cipher: _Cipher | None = None
        self._header = bytearray()
        self._buf = bytearray(CIPHERTEXT_CHUNK_SIZE)  # pending ciphertext, < one full chunk
        self._fill = 0
        self._index = 0
        self._scratch = bytearray()
        self._error: CobblestoneError | None = None
        self._done = False

    def _fail(self, message: str, kind: CobblestoneErrorKind,
              chunk: int | None = None) -> CobblestoneError:
        self._error = CobblestoneError(message, kind=kind, chunk=chunk)
        self._buf = bytearray()
        self._scratch = bytearray()  # may hold unauthenticated plaintext from decrypt_into
        return self._error

    def _check(self) -> None:
        if self._error is not None:
            raise self._error.copy()
        if self._done:
            raise CobblestoneError("Decryptor already finalized", kind="finalized")

    def _decrypt_chunk(self, cipher: _Cipher, data: memoryview, out: memoryview) -> None:
        if self._index >= MAX_CHUNKS:
            raise self._fail("too many chunks", "too-many-chunks")
        try:
            cipher.decrypt_into(cipher.nonce(self._index), data, None, out)
        except Exception:  # InvalidTag; anything else is equally a rejection
            message = f"chunk {self._index} failed authentication"
            raise self._fail(message, "tag", self._index) from None
        self._index += 1

    def _take_header(self, src: memoryview) -> int:
        """Consume header bytes from ``src``; verify the commitment once all 56 are in."""
        take = min(HEADER_SIZE - len(self._header), len(src))
        self._header += src[:take]
        if len(self._header) == HEADER_SIZE:
            cipher = _Cipher(self._key, bytes(self._header[:SALT_SIZE]), self._context)
            if not hmac.compare_digest(cipher.commitment, bytes(self._header[SALT_SIZE:])):
                raise self._fail("commitment mismatch", "commitment")
            self._cipher = cipher
        return take

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Feed ciphertext of any length; return the plaintext of every verified full chunk."""
        self._check()
        src = memoryview(data).cast("B")
        off = 0
        if self._cipher is None:
            off = self._take_header(src)
            if self._cipher is None:
                return b""
        cipher = self._cipher
        total = self._fill + len(src) - off
        n_full = total // CIPHERTEXT_CHUNK_SIZE
        need = n_full * CHUNK_SIZE
        out = self._scratch_view(need)
        pos = 0
        if n_full and self._fill:
            take = CIPHERTEXT_CHUNK_SIZE - self._fill
            self._buf[self._fill :] = src[off : off + take]
            off += take
            self._decrypt_chunk(cipher, memoryview(self._buf), out[pos : pos + CHUNK_SIZE])
            pos += CHUNK_SIZE
            self._fill = 0
            n_full -= 1
        if n_full:
            # Hot loop, inlined like Encryptor.update's.
            index = self._index
            if index + n_full > MAX_CHUNKS:
                raise self._fail("too many chunks", "too-many-chunks")
            decrypt_into = cipher.decrypt_into
            base = cipher.base
            i = index
            try:
                for i in range(index, index + n_full):
                    end = off + CIPHERTEXT_CHUNK_SIZE
                    out_end = pos + CHUNK_SIZE
                    decrypt_into(
                        (base ^ i).to_bytes(12, "big"), src[off:end], None, out[pos:out_end]
                    )
                    off = end
                    pos = out_end
            except Exception:  # InvalidTag; anything else is equally a rejection
                raise self._fail(f"chunk {i} failed authentication", "tag", i) from None
            self._index = index + n_full
        rest = len(src) - off
        if rest:
            self._buf[self._fill : self._fill + rest] = src[off:]
            self._fill += rest
        return bytes(out[:pos])

    def finalize(self) -> bytes:
        """Decrypt the short final chunk; raise if the blob was truncated or forged."""
        self._check()
        if self._cipher is None:
            raise self._fail("truncated", "truncated")
        if self._fill < TAG_SIZE:  # includes 0: stream ended on a chunk boundary
            raise self._fail("truncated", "truncated")
        out = bytearray(self._fill - TAG_SIZE)
        self._decrypt_chunk(self._cipher, memoryview(self._buf)[: self._fill], memoryview(out))
        self._done = True
        self._buf = bytearray()
        self._scratch = bytearray()
        return bytes(out)


class RangeDecryptor:
    """Authenticated random access to a stored blob (e.g. for HTTP Range requests).

    Construct it from the blob's first 56 bytes and its total size (the commitment is checked
    here).  For a plaintext range ``[offset, offset + length)``::

        ct_off, ct_len, first = rd.span(offset, length)
        data = <read ct_len bytes of the blob at ct_off>
        chunk_plain = rd.decrypt_chunks(first, data)
        skip = offset - first * CHUNK_SIZE
        wanted = chunk_plain[skip : skip + length]

    (:meth:`decrypt_range` does the last three lines.)  ``decrypt_chunks`` covers whole chunks,
    so the plaintext it returns starts at plaintext offset ``first * CHUNK_SIZE``.

    The plaintext size derived from ``ciphertext_size`` is authenticated only once the final
    chunk (index :attr:`final_chunk_index`) decrypts; do that before trusting the size, e.g.
    before answering a suffix range (``bytes=-N``).  Calls are independent: a forged chunk
    fails its own call and does not poison others.
    """

    def __init__(self, key: bytes, context: bytes, header: bytes, ciphertext_size: int) -> None:
        if len(key) != KEY_SIZE:
            raise CobblestoneError(
                f"invalid key size {len(key)}, expected {KEY_SIZE}", kind="key"
            )
        if len(header) != HEADER_SIZE:
            raise CobblestoneError("truncated", kind="truncated")
        self.plaintext_size = plaintext_size(ciphertext_size)
        self.ciphertext_size = ciphertext_size
        cipher = _Cipher(key, bytes(header[:SALT_SIZE]), context)
        if not hmac.compare_digest(cipher.commitment, bytes(header[SALT_SIZE:])):
            raise CobblestoneError("commitment mismatch", kind="commitment")
        self._cipher = cipher
        self.final_chunk_index = (ciphertext_size - HEADER_SIZE) // CIPHERTEXT_CHUNK_SIZE
        self._final_len = (
            ciphertext_size - HEADER_SIZE - self.final_chunk_index * CIPHERTEXT_CHUNK_SIZE
        )

    def span(self, plaintext_offset: int, length: int) -> tuple[int, int, int]:
        """Return ``(ciphertext_offset, ciphertext_length, first_chunk_index)`` to read.

        The span covers every chunk holding a byte of the range, plus the final chunk when the
        range reaches the end of the message; an empty range gives a zero-length span.
        Raises ValueError for ranges outside the plaintext.
        """
        if plaintext_offset < 0 or length < 0:
            raise ValueError("negative offset or length")
        if plaintext_offset + length > self.plaintext_size:
            raise ValueError("range beyond end of plaintext")
        first = plaintext_offset // CHUNK_SIZE
        start = HEADER_SIZE + first * CIPHERTEXT_CHUNK_SIZE
        if length == 0:
            return start, 0, first
        if plaintext_offset + length == self.plaintext_size:
            # A range that reaches the end always includes the final chunk (even an empty
            # one), so reading to EOF also authenticates the message length.
            return start, self.ciphertext_size - start, first
        last = (plaintext_offset + length - 1) // CHUNK_SIZE
        return start, (last - first + 1) * CIPHERTEXT_CHUNK_SIZE, first

    def final_span(self) -> tuple[int, int, int]:
        """Span of the final chunk, to authenticate the plaintext size via decrypt_chunks."""
        start = HEADER_SIZE + self.final_chunk_index * CIPHERTEXT_CHUNK_SIZE
        return start, self._final_len, self.final_chunk_index

    def decrypt_chunks(self, first_chunk_index: int, data: bytes | bytearray | memoryview) -> bytes:
        """Decrypt consecutive whole chunks starting at ``first_chunk_index``.

        The blob's last chunk (known from ``ciphertext_size``) is decrypted as the final,
        short chunk; ``data`` must end on a chunk boundary of the blob.
        """
        if not 0 <= first_chunk_index <= self.final_chunk_index:
            raise CobblestoneError("chunk index out of range", kind="chunk-range")
        src = memoryview(data).cast("B")
        out = bytearray()
        index = first_chunk_index
        off = 0
        while off < len(src):
            if index > self.final_chunk_index:
                raise CobblestoneError("trailing data", kind="trailing")
            size = self._final_len if index == self.final_chunk_index else CIPHERTEXT_CHUNK_SIZE
            if len(src) - off < size:
                raise CobblestoneError("truncated", kind="truncated")
            nonce = self._cipher.nonce(index)
            try:
                out += self._cipher.aead.decrypt(nonce, src[off : off + size], None)
            except Exception:
                raise CobblestoneError(
                    f"chunk {index} failed authentication", kind="tag", chunk=index
                ) from None
            off += size
            index += 1
        return bytes(out)

    def decrypt_chunks_into(self, first_chunk_index: int, data: bytes | bytearray | memoryview,
                            out: memoryview) -> int:
        """:meth:`decrypt_chunks` without allocating: write the plaintext into ``out`` (at
        least ``CHUNK_SIZE`` per chunk of ``data``) and return its length.

        On a failed tag the :class:`CobblestoneError`'s ``chunk`` is the failing index: the
        first ``(chunk - first_chunk_index) * CHUNK_SIZE`` bytes of ``out`` are verified
        plaintext, and whatever follows them must never be released (``out`` may hold the
        failing chunk's unauthenticated plaintext).  ``data`` must hold whole chunks; it
        may stop before the final chunk.
        """
        if not 0 <= first_chunk_index <= self.final_chunk_index:
            raise CobblestoneError("chunk index out of range", kind="chunk-range")
        src = memoryview(data).cast("B")
        final = self.final_chunk_index
        decrypt_into = self._cipher.decrypt_into
        base = self._cipher.base
        # Full chunks first, in a loop kept free of attribute lookups and branches (like
        # Decryptor.update's): at 16 KiB per AES-GCM call the Python per chunk shows.
        n_full = min(len(src) // CIPHERTEXT_CHUNK_SIZE, final - first_chunk_index)
        index = first_chunk_index
        off = pos = 0
        try:
            for index in range(first_chunk_index, first_chunk_index + n_full):
                decrypt_into((base ^ index).to_bytes(NONCE_SIZE, "big"),
                             src[off : off + CIPHERTEXT_CHUNK_SIZE], None,
                             out[pos : pos + CHUNK_SIZE])
                off += CIPHERTEXT_CHUNK_SIZE
                pos += CHUNK_SIZE
        except Exception:  # InvalidTag; anything else is equally a rejection
            raise CobblestoneError(
                f"chunk {index} failed authentication", kind="tag", chunk=index
            ) from None
        index = first_chunk_index + n_full
        rest = len(src) - off
        if rest == 0:
            return pos
        if index < final:  # a partial full chunk
            raise CobblestoneError("truncated", kind="truncated")
        if rest < self._final_len:
            raise CobblestoneError("truncated", kind="truncated")
        if rest > self._final_len:
            raise CobblestoneError("trailing data", kind="trailing")
        plain = self._final_len - TAG_SIZE
        try:
            decrypt_into((base ^ index).to_bytes(NONCE_SIZE, "big"), src[off:], None,
                         out[pos : pos + plain])
        except Exception:
            raise CobblestoneError(
                f"chunk {index} failed authentication", kind="tag", chunk=index
            ) from None
        return pos + plain

    def decrypt_range(
        self, plaintext_offset: int, length: int, data: bytes | bytearray | memoryview
    ) -> bytes:
        """Given the bytes read for ``span(plaintext_offset, length)``, return exactly the range."""
        _start, ct_len, first = self.span(plaintext_offset, length)
        if len(data) != ct_len:
            if len(data) < ct_len:
                raise CobblestoneError("truncated", kind="truncated")
            raise CobblestoneError("trailing data", kind="trailing")
        plain = self.decrypt_chunks(first, data)
        skip = plaintext_offset - first * CHUNK_SIZE
        return plain[skip : skip + length]


def encrypt(
    key: bytes,
    context: bytes,
    plaintext: bytes | bytearray | memoryview,
    *,
    salt: bytes | None = None,
) -> bytes:
    """One-shot encryption: ``salt || commitment || chunks``."""
    enc = Encryptor(key, context, salt=salt)
    return enc.update(plaintext) + enc.finalize()


def decrypt(key: bytes, context: bytes, blob: bytes | bytearray | memoryview) -> bytes:
    """One-shot decryption; the blob's length is validated before any chunk is decrypted."""
    dec = Decryptor(key, context)
    src = memoryview(blob).cast("B")
    if len(src) >= HEADER_SIZE:
        dec.update(src[:HEADER_SIZE])  # commitment first, as the spec requires
    plaintext_size(len(src))  # then reject impossible lengths without touching any chunk
    return dec.update(src[HEADER_SIZE:]) + dec.finalize()
