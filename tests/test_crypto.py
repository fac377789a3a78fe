"""Tests for the sans-IO crypto core: Cobblestone-256 blobs and the key hierarchy.

The C2SP/Wycheproof vectors are part of the clone (tests/vectors, or $WEBCONF_VECTORS); a
missing vector file is a collection error, not a skip, so a broken clone cannot pass quietly.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conferencing.crypto import keywrap as kw
from conferencing.crypto.keywrap import KeyWrapError
from webconf.crypto import cobblestone as cs
from webconf.crypto.cobblestone import (
    CHUNK_SIZE,
    CIPHERTEXT_CHUNK_SIZE,
    HEADER_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    CobblestoneError,
    Decryptor,
    Encryptor,
    RangeDecryptor,
    ciphertext_size,
    decrypt,
    derive_keys,
    encrypt,
    item_context,
    plaintext_size,
)

VECTORS = Path(os.environ.get("WEBCONF_VECTORS") or Path(__file__).resolve().parent / "vectors")


def _vector_params(filename: str, tests: Any) -> list[Any]:
    """pytest params for a vector file; the file ships with the clone, so absence is an error."""
    path = VECTORS / filename
    return [pytest.param(t, id=tid) for tid, t in tests(json.loads(path.read_text()))]


def _cobblestone_tests(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for group in doc["testGroups"]:
        assert group["aead"] == "AEAD_AES_256_GCM" and group["sha"] == "SHA-512"
        for t in group["tests"]:
            yield f"tc{t['tcId']}", t


def _gcm_tests(doc: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for group in doc["testGroups"]:
        if group["ivSize"] == 96 and group["tagSize"] == 128:
            for t in group["tests"]:
                yield f"k{group['keySize']}-tc{t['tcId']}", t


CS_FILE = "c2sp_chunked_encryption_aes_256_gcm_test.json"
CS_VECTORS = _vector_params(CS_FILE, _cobblestone_tests)
CS_VALID = _vector_params(
    CS_FILE, lambda d: ((i, t) for i, t in _cobblestone_tests(d) if t["result"] == "valid")
)
CS_WITH_KEYS = _vector_params(
    CS_FILE, lambda d: ((i, t) for i, t in _cobblestone_tests(d) if "aeadKey" in t)
)
GCM_VECTORS = _vector_params("aes_gcm_test.json", _gcm_tests)


def _ct(t: dict[str, Any]) -> bytes:
    """Vector ciphertexts are zlib-compressed, then hex-encoded (Wycheproof doc)."""
    return zlib.decompress(bytes.fromhex(t["ct"]))


def _pieces(data: bytes, sizes: Iterator[int]) -> Iterator[bytes]:
    off = 0
    while off < len(data):
        n = next(sizes)
        yield data[off : off + n]
        off += n


def _fixed(n: int) -> Iterator[int]:
    while True:
        yield n


def _random_sizes(seed: int, hi: int) -> Iterator[int]:
    rng = random.Random(seed)
    while True:
        yield rng.randint(0, hi)  # 0 exercises empty updates


def _stream_decrypt(key: bytes, ctx: bytes, blob: bytes, sizes: Iterator[int]) -> bytes:
    dec = Decryptor(key, ctx)
    out = bytearray()
    for piece in _pieces(blob, sizes):
        out += dec.update(piece)
    out += dec.finalize()
    return bytes(out)


def _stream_encrypt(
    key: bytes, ctx: bytes, pt: bytes, sizes: Iterator[int], salt: bytes | None = None
) -> bytes:
    enc = Encryptor(key, ctx, salt=salt)
    out = bytearray()
    for piece in _pieces(pt, sizes):
        out += enc.update(piece)
    out += enc.finalize()
    return bytes(out)


def _assert_keeps_failing(dec: Decryptor) -> None:
    for _ in range(2):
        with pytest.raises(CobblestoneError):
            dec.update(b"")
        with pytest.raises(CobblestoneError):
            dec.update(b"\x00" * 100)
        with pytest.raises(CobblestoneError):
            dec.finalize()


def _streaming_rejects(key: bytes, ctx: bytes, blob: bytes, sizes: Iterator[int]) -> bytes:
    """Feed ``blob`` until the decryptor fails; return the plaintext released before that."""
    dec = Decryptor(key, ctx)
    out = bytearray()
    with pytest.raises(CobblestoneError):
        for piece in _pieces(blob, sizes):
            out += dec.update(piece)
        out += dec.finalize()
    _assert_keeps_failing(dec)
    return bytes(out)


def _rejects_everywhere(key: bytes, ctx: bytes, blob: bytes) -> None:
    """One-shot, streaming in several piece sizes, and random access all reject ``blob``."""
    with pytest.raises(CobblestoneError):
        decrypt(key, ctx, blob)
    for sizes in (
        _fixed(len(blob) + 1),
        _fixed(1000),
        _fixed(CIPHERTEXT_CHUNK_SIZE),
        _random_sizes(len(blob), 20000),
    ):
        _streaming_rejects(key, ctx, blob, sizes)
    with pytest.raises(CobblestoneError):
        rd = RangeDecryptor(key, ctx, blob[:HEADER_SIZE], len(blob))
        ct_off, ct_len, first = rd.span(0, rd.plaintext_size)
        rd.decrypt_chunks(first, blob[ct_off : ct_off + ct_len])


KEY = bytes(range(32))
CTX = item_context("acme", "conf-1", "item-1")
# 40000 bytes = two full chunks + a 7232-byte final chunk
PT = random.Random(1).randbytes(40000)
SALT = bytes(range(100, 100 + SALT_SIZE))
BLOB = encrypt(KEY, CTX, PT, salt=SALT)


# ---------------------------------------------------------------- Cobblestone vectors


@pytest.mark.parametrize("t", CS_WITH_KEYS)
def test_vector_key_derivation(t: dict[str, Any]) -> None:
    ct = _ct(t)
    aead_key, base_nonce, commitment = derive_keys(
        bytes.fromhex(t["key"]), ct[:SALT_SIZE], bytes.fromhex(t["ctx"])
    )
    assert aead_key.hex() == t["aeadKey"]
    assert base_nonce.hex() == t["baseNonce"]
    if "HeaderFailure" not in t["flags"]:
        assert commitment == ct[SALT_SIZE:HEADER_SIZE]


@pytest.mark.parametrize("t", CS_VECTORS)
def test_vector_decrypt(t: dict[str, Any]) -> None:
    key, ctx, ct = bytes.fromhex(t["key"]), bytes.fromhex(t["ctx"]), _ct(t)
    small = len(ct) < 100_000
    piece_sizes = [len(ct) + 1, 7, 4099, CIPHERTEXT_CHUNK_SIZE, CIPHERTEXT_CHUNK_SIZE + 1, 65537]
    if small:
        piece_sizes.append(1)
    if t["result"] == "valid":
        pt = decrypt(key, ctx, ct)
        assert len(pt) == t["msgLength"]
        assert hashlib.sha512(pt).hexdigest() == t["msgSha512"]
        for n in piece_sizes:
            assert _stream_decrypt(key, ctx, ct, _fixed(n)) == pt
        assert _stream_decrypt(key, ctx, ct, _random_sizes(t["tcId"], 40000)) == pt
        assert plaintext_size(len(ct)) == len(pt)
        assert ciphertext_size(len(pt)) == len(ct)
        return
    assert t["result"] == "invalid"
    if "InvalidKeySize" in t["flags"]:
        with pytest.raises(CobblestoneError):
            Decryptor(key, ctx)
        with pytest.raises(CobblestoneError):
            RangeDecryptor(key, ctx, ct[:HEADER_SIZE], len(ct))
        with pytest.raises(ValueError):
            Encryptor(key, ctx)
    with pytest.raises(CobblestoneError):
        decrypt(key, ctx, ct)
    if "InvalidKeySize" in t["flags"]:
        return
    prefix_len = t.get("msgLength", 0)
    iters = [_fixed(n) for n in piece_sizes] + [_random_sizes(t["tcId"], 40000)]
    for sizes in iters:
        released = _streaming_rejects(key, ctx, ct, sizes)
        assert len(released) <= prefix_len
        assert len(released) % CHUNK_SIZE == 0  # only whole verified chunks
        if len(released) == prefix_len and "msgSha512" in t:
            assert hashlib.sha512(released).hexdigest() == t["msgSha512"]
    if "HeaderFailure" in t["flags"] and len(ct) >= HEADER_SIZE:
        # Rejected on the header alone, before any chunk is looked at.
        dec = Decryptor(key, ctx)
        with pytest.raises(CobblestoneError):
            dec.update(ct[:HEADER_SIZE])
        _assert_keeps_failing(dec)


@pytest.mark.parametrize("t", CS_VECTORS)
def test_vector_random_access(t: dict[str, Any]) -> None:
    key, ctx, ct = bytes.fromhex(t["key"]), bytes.fromhex(t["ctx"]), _ct(t)

    def read_all() -> tuple[bytes, RangeDecryptor]:
        rd = RangeDecryptor(key, ctx, ct[:HEADER_SIZE], len(ct))
        ct_off, ct_len, first = rd.span(0, rd.plaintext_size)
        return rd.decrypt_chunks(first, ct[ct_off : ct_off + ct_len]), rd

    def authenticate_length() -> None:
        rd = RangeDecryptor(key, ctx, ct[:HEADER_SIZE], len(ct))
        ct_off, ct_len, idx = rd.final_span()
        rd.decrypt_chunks(idx, ct[ct_off : ct_off + ct_len])

    if t["result"] == "valid":
        pt, rd = read_all()
        assert hashlib.sha512(pt).hexdigest() == t["msgSha512"]
        authenticate_length()
        n = t["msgLength"]
        for off, length in [(0, 0), (0, min(n, 10)), (n // 2, min(n - n // 2, 20000)), (n, 0)]:
            ct_off, ct_len, _first = rd.span(off, length)
            assert (
                rd.decrypt_range(off, length, ct[ct_off : ct_off + ct_len])
                == pt[off : off + length]
            )
        return
    with pytest.raises(CobblestoneError):
        read_all()
    if "ValidFinalChunk" not in t["flags"]:
        with pytest.raises(CobblestoneError):
            authenticate_length()


@pytest.mark.parametrize("t", CS_VALID)
def test_vector_reencrypt(t: dict[str, Any]) -> None:
    """Known-answer encryption: the salt is injectable, so re-encrypting reproduces ``ct``."""
    key, ctx, ct = bytes.fromhex(t["key"]), bytes.fromhex(t["ctx"]), _ct(t)
    pt = decrypt(key, ctx, ct)
    salt = ct[:SALT_SIZE]
    assert encrypt(key, ctx, pt, salt=salt) == ct
    assert _stream_encrypt(key, ctx, pt, _random_sizes(t["tcId"], 40000), salt=salt) == ct
    assert Encryptor(key, ctx, salt=salt).header == ct[:HEADER_SIZE]


# ---------------------------------------------------------------- Wycheproof AES-GCM


@pytest.mark.parametrize("t", GCM_VECTORS)
def test_wycheproof_aes_gcm(t: dict[str, Any]) -> None:
    """The keywrap primitive (nonce || ct || tag) against Wycheproof, 96-bit IV, 128-bit tag."""
    key, iv = bytes.fromhex(t["key"]), bytes.fromhex(t["iv"])
    aad, msg = bytes.fromhex(t["aad"]), bytes.fromhex(t["msg"])
    sealed = iv + bytes.fromhex(t["ct"]) + bytes.fromhex(t["tag"])
    if t["result"] == "valid":
        assert kw._seal_with_nonce(key, iv, msg, aad) == sealed
        assert kw.aead_open(key, sealed, aad) == msg
    else:
        with pytest.raises(KeyWrapError):
            kw.aead_open(key, sealed, aad)


# ---------------------------------------------------------------- sizes


def test_size_functions_agree() -> None:
    for n in list(range(0, 3 * CHUNK_SIZE + 50)) + [10 << 20, (1 << 40) + 3]:
        c = ciphertext_size(n)
        assert plaintext_size(c) == n
    assert ciphertext_size(0) == HEADER_SIZE + TAG_SIZE
    assert ciphertext_size(CHUNK_SIZE) == HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE + TAG_SIZE
    with pytest.raises(ValueError):
        ciphertext_size(-1)
    with pytest.raises(ValueError):
        ciphertext_size(cs.MAX_CHUNKS * CHUNK_SIZE)


def test_plaintext_size_rejects_impossible_lengths() -> None:
    valid = 0
    for c in range(0, 3 * CIPHERTEXT_CHUNK_SIZE + HEADER_SIZE + 100):
        rest = (c - HEADER_SIZE) % CIPHERTEXT_CHUNK_SIZE
        if c < HEADER_SIZE + TAG_SIZE or rest < TAG_SIZE:
            with pytest.raises(CobblestoneError, match="truncated"):
                plaintext_size(c)
        else:
            assert ciphertext_size(plaintext_size(c)) == c
            valid += 1
    assert valid > 0


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("n", [0, 1, 16383, 16384, 16385, 32768, 10 << 20])
def test_round_trip(n: int) -> None:
    pt = random.Random(n).randbytes(n)
    key = os.urandom(32)
    blob = _stream_encrypt(key, CTX, pt, _random_sizes(n, 70000))
    assert len(blob) == ciphertext_size(n)
    assert plaintext_size(len(blob)) == n
    assert decrypt(key, CTX, blob) == pt
    assert _stream_decrypt(key, CTX, blob, _random_sizes(n + 1, 70000)) == pt
    assert _stream_decrypt(key, CTX, blob, _fixed(CIPHERTEXT_CHUNK_SIZE)) == pt
    one_shot = encrypt(key, CTX, pt)
    assert len(one_shot) == len(blob) and one_shot[:SALT_SIZE] != blob[:SALT_SIZE]
    assert decrypt(key, CTX, one_shot) == pt


def test_round_trip_small_pieces() -> None:
    pt = random.Random(5).randbytes(3 * CHUNK_SIZE + 77)
    key = os.urandom(32)
    blob = _stream_encrypt(key, CTX, pt, _random_sizes(9, 300))
    assert decrypt(key, CTX, blob) == pt
    assert _stream_decrypt(key, CTX, blob, _random_sizes(10, 300)) == pt


def test_streaming_inputs_and_outputs() -> None:
    enc = Encryptor(KEY, CTX, salt=SALT)
    assert enc.header == BLOB[:HEADER_SIZE]
    first = enc.update(memoryview(PT[:10]))
    assert first == enc.header  # header leads the first output, even with no full chunk yet
    second = enc.update(bytearray(PT[10:CHUNK_SIZE]))
    assert len(second) == CIPHERTEXT_CHUNK_SIZE  # a full chunk is released at once
    rest = enc.update(PT[CHUNK_SIZE:]) + enc.finalize()
    assert first + second + rest == BLOB
    with pytest.raises(ValueError):
        enc.update(b"x")
    with pytest.raises(ValueError):
        enc.finalize()
    # finalize() alone emits header + empty final chunk
    empty = Encryptor(KEY, CTX, salt=SALT).finalize()
    assert len(empty) == HEADER_SIZE + TAG_SIZE
    assert decrypt(KEY, CTX, empty) == b""
    # decryptor releases a chunk as soon as its 16400 bytes are in
    dec = Decryptor(KEY, CTX)
    assert dec.update(BLOB[: HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE - 1]) == b""
    assert (
        dec.update(
            BLOB[HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE - 1 : HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE]
        )
        == PT[:CHUNK_SIZE]
    )
    tail = dec.update(memoryview(BLOB)[HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE :])
    assert tail + dec.finalize() == PT[CHUNK_SIZE:]
    with pytest.raises(CobblestoneError):
        dec.finalize()


def test_encryptor_argument_checks() -> None:
    for bad in (b"", b"k" * 16, b"k" * 31, b"k" * 33):
        with pytest.raises(ValueError):
            Encryptor(bad, CTX)
        with pytest.raises(CobblestoneError):
            Decryptor(bad, CTX)
        with pytest.raises(ValueError):
            encrypt(bad, CTX, b"x")
    with pytest.raises(ValueError):
        Encryptor(KEY, CTX, salt=b"s" * 23)
    assert Encryptor(KEY, CTX).header[:SALT_SIZE] != Encryptor(KEY, CTX).header[:SALT_SIZE]


def test_fallback_without_into_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """The copy-based fallback for cryptography builds without encrypt_into/decrypt_into."""
    monkeypatch.setattr(cs, "_HAS_INTO", False)
    assert encrypt(KEY, CTX, PT, salt=SALT) == BLOB
    assert _stream_encrypt(KEY, CTX, PT, _random_sizes(3, 20000), salt=SALT) == BLOB
    assert _stream_decrypt(KEY, CTX, BLOB, _random_sizes(4, 20000)) == PT
    bad = bytearray(BLOB)
    bad[HEADER_SIZE + 7] ^= 1
    _rejects_everywhere(KEY, CTX, bytes(bad))
    _rejects_everywhere(KEY, CTX, BLOB[:-1])


def test_cross_check_with_cryptography_cobblestone() -> None:
    """Interop with the native implementation shipped in newer `cryptography`, if present."""
    native = pytest.importorskip("cryptography.cobblestone")
    for n in (0, 5, CHUNK_SIZE, 3 * CHUNK_SIZE + 1):
        pt = os.urandom(n)
        theirs = native.Cobblestone256Encryptor(KEY, CTX)
        blob = theirs.update(pt) + theirs.finalize()
        assert decrypt(KEY, CTX, blob) == pt
        ours = encrypt(KEY, CTX, pt)
        dec = native.Cobblestone256Decryptor(KEY, CTX)
        assert dec.update(ours) + dec.finalize() == pt


# ---------------------------------------------------------------- random access


@pytest.mark.parametrize("n", [1, CHUNK_SIZE, 2 * CHUNK_SIZE, 100_000])
def test_range_decrypt(n: int) -> None:
    pt = random.Random(n).randbytes(n)
    blob = encrypt(KEY, CTX, pt)
    rd = RangeDecryptor(KEY, CTX, blob[:HEADER_SIZE], len(blob))
    assert rd.plaintext_size == n
    ranges = [
        (0, 0),
        (0, 1),
        (0, min(n, 100)),
        (n, 0),
        (n - 1, 1),
        (0, n),
        (max(0, n - 5), min(n, 5)),  # inside the last chunk
        (min(n, 16000), min(n - min(n, 16000), 1000)),  # spans the chunk 0/1 boundary
        (min(n, CHUNK_SIZE), min(n - min(n, CHUNK_SIZE), CHUNK_SIZE)),  # exactly chunk 1
        (n // 3, n // 3),
    ]
    for off, length in ranges:
        ct_off, ct_len, first = rd.span(off, length)
        assert first == off // CHUNK_SIZE
        assert ct_off == HEADER_SIZE + first * CIPHERTEXT_CHUNK_SIZE
        data = blob[ct_off : ct_off + ct_len]
        assert len(data) == ct_len
        plain = rd.decrypt_chunks(first, data)
        skip = off - first * CHUNK_SIZE
        assert plain[skip : skip + length] == pt[off : off + length]
        assert rd.decrypt_range(off, length, data) == pt[off : off + length]
        if length:
            assert len(plain) >= skip + length
    ct_off, ct_len, idx = rd.final_span()
    assert ct_off + ct_len == len(blob)
    assert rd.decrypt_chunks(idx, blob[ct_off:]) == pt[idx * CHUNK_SIZE :]
    for off, length in [(-1, 1), (0, -1), (n, 1), (0, n + 1)]:
        with pytest.raises(ValueError):
            rd.span(off, length)


def test_range_decrypt_rejects_bad_input() -> None:
    rd = RangeDecryptor(KEY, CTX, BLOB[:HEADER_SIZE], len(BLOB))
    ct_off, ct_len, first = rd.span(0, len(PT))
    whole = BLOB[ct_off : ct_off + ct_len]
    with pytest.raises(CobblestoneError, match="truncated"):
        rd.decrypt_chunks(0, whole[:-1])
    with pytest.raises(CobblestoneError, match="trailing data"):
        rd.decrypt_chunks(0, whole + b"\x00")
    with pytest.raises(CobblestoneError, match="truncated"):
        rd.decrypt_range(0, len(PT), whole[:-1])
    with pytest.raises(CobblestoneError, match="trailing data"):
        rd.decrypt_range(0, len(PT), whole + b"\x00")
    with pytest.raises(CobblestoneError):
        rd.decrypt_chunks(1, whole[:CIPHERTEXT_CHUNK_SIZE])  # chunk 0 at index 1
    with pytest.raises(CobblestoneError):
        rd.decrypt_chunks(3, b"")
    # a forged chunk fails only the ranges that cover it
    bad = bytearray(BLOB)
    bad[HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE + 5] ^= 1  # chunk 1
    ct_off, ct_len, first = rd.span(0, 100)
    assert rd.decrypt_range(0, 100, bytes(bad[ct_off : ct_off + ct_len])) == PT[:100]
    ct_off, ct_len, first = rd.span(CHUNK_SIZE, 10)
    with pytest.raises(CobblestoneError, match="chunk 1 failed authentication"):
        rd.decrypt_chunks(first, bytes(bad[ct_off : ct_off + ct_len]))
    with pytest.raises(CobblestoneError, match="commitment mismatch"):
        RangeDecryptor(os.urandom(32), CTX, BLOB[:HEADER_SIZE], len(BLOB))
    with pytest.raises(CobblestoneError, match="truncated"):
        RangeDecryptor(KEY, CTX, BLOB[:HEADER_SIZE], HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE)
    with pytest.raises(CobblestoneError):
        RangeDecryptor(KEY, CTX, BLOB[: HEADER_SIZE - 1], len(BLOB))


# ---------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    "pos",
    [
        0,
        SALT_SIZE - 1,  # salt
        SALT_SIZE,
        HEADER_SIZE - 1,  # commitment
        HEADER_SIZE,
        HEADER_SIZE + 1000,  # chunk 0 body
        HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE - 1,  # chunk 0 tag
        HEADER_SIZE + 2 * CIPHERTEXT_CHUNK_SIZE + 3,  # final chunk body
        -1,  # final chunk tag
    ],
)
def test_tampered_byte_rejected(pos: int) -> None:
    bad = bytearray(BLOB)
    bad[pos] ^= 0x80
    _rejects_everywhere(KEY, CTX, bytes(bad))
    if 0 <= pos < HEADER_SIZE:
        dec = Decryptor(KEY, CTX)
        with pytest.raises(CobblestoneError, match="commitment mismatch"):
            dec.update(bad[:HEADER_SIZE])  # before any chunk
        _assert_keeps_failing(dec)


def test_truncation_rejected() -> None:
    empty_final = encrypt(KEY, CTX, PT[: 2 * CHUNK_SIZE], salt=SALT)
    cases = {
        "drop last byte": BLOB[:-1],
        "drop final tag": BLOB[:-TAG_SIZE],
        "drop final chunk": BLOB[: HEADER_SIZE + 2 * CIPHERTEXT_CHUNK_SIZE],
        "cut at first chunk boundary": BLOB[: HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE],
        "cut mid chunk": BLOB[: HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE + 500],
        "header only": BLOB[:HEADER_SIZE],
        "partial header": BLOB[:40],
        "nothing": b"",
        "drop empty final chunk": empty_final[:-TAG_SIZE],
    }
    for name, blob in cases.items():
        try:
            _rejects_everywhere(KEY, CTX, blob)
        except BaseException as exc:  # pragma: no cover - diagnostic
            raise AssertionError(name) from exc
    dec = Decryptor(KEY, CTX)
    assert dec.update(cases["drop final chunk"]) == PT[: 2 * CHUNK_SIZE]
    with pytest.raises(CobblestoneError, match="truncated"):
        dec.finalize()
    _assert_keeps_failing(dec)


def test_trailing_data_rejected() -> None:
    # valid chunks produced under the same key/salt/context, at the next index
    longer = encrypt(KEY, CTX, PT[:32768] + os.urandom(2 * CHUNK_SIZE + 10), salt=SALT)
    extra_full = longer[HEADER_SIZE + 3 * CIPHERTEXT_CHUNK_SIZE :][:CIPHERTEXT_CHUNK_SIZE]
    final_at_3 = encrypt(KEY, CTX, os.urandom(3 * CHUNK_SIZE + 5), salt=SALT)[
        HEADER_SIZE + 3 * CIPHERTEXT_CHUNK_SIZE :
    ]
    assert len(extra_full) == CIPHERTEXT_CHUNK_SIZE and len(final_at_3) == 5 + TAG_SIZE
    empty_final = encrypt(KEY, CTX, PT[: 2 * CHUNK_SIZE], salt=SALT)
    for blob in (
        BLOB + b"\x00",
        BLOB + os.urandom(TAG_SIZE),
        BLOB + extra_full,
        BLOB + final_at_3,
        BLOB + BLOB[-TAG_SIZE:],
        empty_final + b"\x00",
        empty_final + encrypt(KEY, CTX, b"", salt=SALT)[HEADER_SIZE:],
    ):
        _rejects_everywhere(KEY, CTX, blob)


def test_chunk_reordering_rejected() -> None:
    c0 = BLOB[HEADER_SIZE : HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE]
    c1 = BLOB[HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE : HEADER_SIZE + 2 * CIPHERTEXT_CHUNK_SIZE]
    tail = BLOB[HEADER_SIZE + 2 * CIPHERTEXT_CHUNK_SIZE :]
    _rejects_everywhere(KEY, CTX, BLOB[:HEADER_SIZE] + c1 + c0 + tail)
    _rejects_everywhere(KEY, CTX, BLOB[:HEADER_SIZE] + c0 + c0 + tail)
    _rejects_everywhere(KEY, CTX, BLOB[:HEADER_SIZE] + c0 + tail)


# ---------------------------------------------------------------- binding and keys


def test_context_encoding() -> None:
    ctx = item_context("t", "c1", "é")
    assert ctx == b"webconf-item/v1" + b"\x00\x01t" + b"\x00\x02c1" + b"\x00\x02\xc3\xa9"
    assert item_context("ab", "c", "d") != item_context("a", "bc", "d")
    assert item_context("", "", "") == b"webconf-item/v1" + b"\x00" * 6
    item_context("x" * 65535, "", "")
    with pytest.raises(ValueError):
        item_context("x" * 65536, "c", "i")
    with pytest.raises(ValueError):
        item_context("t", "c", "é" * 40000)


@pytest.mark.parametrize(
    "other",
    [("acme", "conf-1", "item-2"), ("acme", "conf-2", "item-1"), ("evil", "conf-1", "item-1")],
)
def test_blob_bound_to_item(other: tuple[str, str, str]) -> None:
    ctx_b = item_context(*other)
    with pytest.raises(CobblestoneError, match="commitment mismatch"):
        decrypt(KEY, ctx_b, BLOB)
    dec = Decryptor(KEY, ctx_b)
    with pytest.raises(CobblestoneError, match="commitment mismatch"):
        dec.update(BLOB[:HEADER_SIZE])  # rejected before any chunk is decrypted
    _assert_keeps_failing(dec)
    with pytest.raises(CobblestoneError, match="commitment mismatch"):
        RangeDecryptor(KEY, ctx_b, BLOB[:HEADER_SIZE], len(BLOB))
    _rejects_everywhere(KEY, ctx_b, BLOB)


def test_wrong_key_rejected_before_any_chunk() -> None:
    other = os.urandom(32)
    dec = Decryptor(other, CTX)
    # everything but the first chunk's last byte: a bug that decrypted chunks early would
    # need the full chunk, so the error here can only come from the commitment
    with pytest.raises(CobblestoneError, match="commitment mismatch"):
        dec.update(BLOB[: HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE - 1])
    _assert_keeps_failing(dec)
    with pytest.raises(CobblestoneError, match="commitment mismatch"):
        decrypt(other, CTX, BLOB)
    with pytest.raises(CobblestoneError, match="commitment mismatch"):
        decrypt(other, CTX, BLOB[:HEADER_SIZE])  # even when the length is also wrong


def test_decryptor_keeps_failing_after_chunk_failure() -> None:
    bad = bytearray(BLOB)
    bad[HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE + 10] ^= 1
    dec = Decryptor(KEY, CTX)
    assert dec.update(bad[: HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE]) == PT[:CHUNK_SIZE]
    with pytest.raises(CobblestoneError, match="chunk 1 failed authentication"):
        dec.update(bad[HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE :])
    for _ in range(3):
        with pytest.raises(CobblestoneError, match="chunk 1 failed authentication"):
            dec.update(BLOB[HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE :])  # even the good bytes
        with pytest.raises(CobblestoneError, match="chunk 1 failed authentication"):
            dec.finalize()


# ---------------------------------------------------------------- key hierarchy

DEK_BINDING: dict[str, Any] = {
    "tenant": "acme",
    "conference_id": "conf-1",
    "item_id": "item-1",
    "tenant_key_version": 3,
}
TK_BINDING: dict[str, Any] = {"tenant": "acme", "tenant_key_version": 3, "root_key_version": 1}


def _flips(blob: bytes) -> Iterator[bytes]:
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        yield bytes(bad)


def test_new_key() -> None:
    a, b = kw.new_key(), kw.new_key()
    assert len(a) == 32 and a != b


def test_wrap_dek_round_trip_and_binding() -> None:
    tenant_key, dek = kw.new_key(), kw.new_key()
    wrapped = kw.wrap_dek(tenant_key, dek, **DEK_BINDING)
    assert len(wrapped) == 12 + 32 + 16
    assert kw.unwrap_dek(tenant_key, wrapped, **DEK_BINDING) == dek
    assert kw.wrap_dek(tenant_key, dek, **DEK_BINDING) != wrapped  # fresh nonce
    changes = {
        "tenant": "acme2",
        "conference_id": "conf-2",
        "item_id": "item-2",
        "tenant_key_version": 4,
    }
    for field, value in changes.items():
        with pytest.raises(KeyWrapError):
            kw.unwrap_dek(tenant_key, wrapped, **{**DEK_BINDING, field: value})
    # length prefixes: moving bytes between fields changes the AAD
    with pytest.raises(KeyWrapError):
        kw.unwrap_dek(
            tenant_key, wrapped, **{**DEK_BINDING, "tenant": "acmeconf-1", "conference_id": ""}
        )
    with pytest.raises(KeyWrapError):
        kw.unwrap_dek(kw.new_key(), wrapped, **DEK_BINDING)
    for bad in _flips(wrapped):
        with pytest.raises(KeyWrapError):
            kw.unwrap_dek(tenant_key, bad, **DEK_BINDING)
    for cut in (wrapped[:-1], wrapped[:27], b""):
        with pytest.raises(KeyWrapError):
            kw.unwrap_dek(tenant_key, cut, **DEK_BINDING)
    # a wrapped tenant key is not a wrapped DEK (domain-separated AADs)
    with pytest.raises(KeyWrapError):
        kw.unwrap_tenant_key(tenant_key, wrapped, **TK_BINDING)


def test_wrap_tenant_key_round_trip_and_binding() -> None:
    root, tenant_key = kw.new_key(), kw.new_key()
    wrapped = kw.wrap_tenant_key(root, tenant_key, **TK_BINDING)
    assert kw.unwrap_tenant_key(root, wrapped, **TK_BINDING) == tenant_key
    for field, value in {"tenant": "other", "tenant_key_version": 2, "root_key_version": 2}.items():
        with pytest.raises(KeyWrapError):
            kw.unwrap_tenant_key(root, wrapped, **{**TK_BINDING, field: value})
    with pytest.raises(KeyWrapError):
        kw.unwrap_tenant_key(kw.new_key(), wrapped, **TK_BINDING)
    for bad in _flips(wrapped):
        with pytest.raises(KeyWrapError):
            kw.unwrap_tenant_key(root, bad, **TK_BINDING)


def test_wrap_argument_checks() -> None:
    k = kw.new_key()
    with pytest.raises(ValueError):
        kw.wrap_dek(k[:16], k, **DEK_BINDING)
    with pytest.raises(ValueError):
        kw.wrap_dek(k, k[:31], **DEK_BINDING)
    with pytest.raises(ValueError):
        kw.wrap_dek(k, k, **{**DEK_BINDING, "tenant_key_version": -1})
    with pytest.raises(ValueError):
        kw.wrap_dek(k, k, **{**DEK_BINDING, "tenant_key_version": 1 << 32})
    with pytest.raises(ValueError):
        kw.wrap_tenant_key(k, k, **{**TK_BINDING, "root_key_version": 1 << 32})
    with pytest.raises(ValueError):
        kw.wrap_dek(k, k, **{**DEK_BINDING, "item_id": "x" * 65536})
    with pytest.raises(ValueError):
        kw.unwrap_dek(k[:5], b"\x00" * 60, **DEK_BINDING)
    # a correctly sealed value of the wrong size is not accepted as a key
    aad = b"webconf-dek/v1" + b"\x00\x04acme\x00\x06conf-1\x00\x06item-1" + (3).to_bytes(4, "big")
    short = kw.aead_seal(k, b"short", aad)
    with pytest.raises(KeyWrapError):
        kw.unwrap_dek(k, short, **DEK_BINDING)


def test_full_hierarchy() -> None:
    root, tenant_key, dek = kw.new_key(), kw.new_key(), kw.new_key()
    wrapped_tk = kw.wrap_tenant_key(root, tenant_key, **TK_BINDING)
    wrapped_dek = kw.wrap_dek(tenant_key, dek, **DEK_BINDING)
    ctx = item_context("acme", "conf-1", "item-1")
    blob = encrypt(dek, ctx, b"slides")
    tk = kw.unwrap_tenant_key(root, wrapped_tk, **TK_BINDING)
    assert decrypt(kw.unwrap_dek(tk, wrapped_dek, **DEK_BINDING), ctx, blob) == b"slides"
    # rotation: rewrap the DEK under a new tenant key; the blob is untouched
    tk2 = kw.new_key()
    rewrapped = kw.wrap_dek(
        tk2,
        kw.unwrap_dek(tk, wrapped_dek, **DEK_BINDING),
        **{**DEK_BINDING, "tenant_key_version": 4},
    )
    dek2 = kw.unwrap_dek(tk2, rewrapped, **{**DEK_BINDING, "tenant_key_version": 4})
    assert decrypt(dek2, ctx, blob) == b"slides"


def test_item_fields() -> None:
    dek = kw.new_key()
    ctx = item_context("acme", "conf-1", "item-1")
    name = kw.seal_item_field(dek, "name", "Quarterly résumé.pdf", context=ctx)
    ctype = kw.seal_item_field(dek, "content_type", "application/pdf", context=ctx)
    assert kw.open_item_field(dek, "name", name, context=ctx) == "Quarterly résumé.pdf"
    assert kw.open_item_field(dek, "content_type", ctype, context=ctx) == "application/pdf"
    assert kw.seal_item_field(dek, "name", "", context=ctx) != kw.seal_item_field(
        dek, "name", "", context=ctx
    )
    assert (
        kw.open_item_field(
            dek, "name", kw.seal_item_field(dek, "name", "", context=ctx), context=ctx
        )
        == ""
    )
    with pytest.raises(KeyWrapError):  # field swap
        kw.open_item_field(dek, "content_type", name, context=ctx)
    with pytest.raises(KeyWrapError):
        kw.open_item_field(dek, "name", ctype, context=ctx)
    with pytest.raises(KeyWrapError):  # moved to another item
        kw.open_item_field(dek, "name", name, context=item_context("acme", "conf-1", "item-2"))
    with pytest.raises(KeyWrapError):
        kw.open_item_field(kw.new_key(), "name", name, context=ctx)
    with pytest.raises(KeyWrapError):  # the DEK itself is not the metadata key
        kw.aead_open(dek, name, b"\x00\x04name" + ctx)
    for bad in _flips(name):
        with pytest.raises(KeyWrapError):
            kw.open_item_field(dek, "name", bad, context=ctx)


def test_aead_primitive_is_aes_gcm() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    sealed = kw._seal_with_nonce(key, nonce, b"msg", b"aad")
    assert sealed == nonce + AESGCM(key).encrypt(nonce, b"msg", b"aad")
    assert kw.aead_open(key, kw.aead_seal(key, b"msg", b"aad"), b"aad") == b"msg"


def test_errors_carry_kind_and_chunk() -> None:
    """Callers read `kind` and `chunk` (clients/download.py), never parse the message."""
    forged = bytearray(BLOB)
    forged[HEADER_SIZE + CIPHERTEXT_CHUNK_SIZE + 5] ^= 1  # chunk 1
    dec = Decryptor(KEY, CTX)
    with pytest.raises(CobblestoneError) as err:
        dec.update(bytes(forged))
        dec.finalize()
    assert (err.value.kind, err.value.chunk) == ("tag", 1)
    with pytest.raises(CobblestoneError) as again:  # a failed decryptor keeps failing alike
        dec.finalize()
    assert (again.value.kind, again.value.chunk) == ("tag", 1)
    assert str(again.value) == "chunk 1 failed authentication"
    cases = [
        (lambda: Decryptor(os.urandom(32), CTX).update(BLOB), "commitment"),
        (lambda: Decryptor(KEY, CTX).finalize(), "truncated"),
        (lambda: Decryptor(KEY[:16], CTX), "key"),
        (lambda: plaintext_size(HEADER_SIZE), "truncated"),
    ]
    rd = RangeDecryptor(KEY, CTX, BLOB[:HEADER_SIZE], len(BLOB))
    ct_off, ct_len, first = rd.span(0, len(PT))
    whole = BLOB[ct_off : ct_off + ct_len]
    cases += [
        (lambda: rd.decrypt_chunks(0, whole + b"\x00"), "trailing"),
        (lambda: rd.decrypt_range(0, len(PT), whole[:-1]), "truncated"),
        (lambda: rd.decrypt_chunks(rd.final_chunk_index + 1, b""), "chunk-range"),
    ]
    for call, kind in cases:
        with pytest.raises(CobblestoneError) as failure:
            call()
        assert (failure.value.kind, failure.value.chunk) == (kind, None)
