"""The Encryptor's two engines (native `cryptography.cobblestone`, pure Python) are one API.

The Wycheproof/C2SP vectors in test_crypto.py pin a salt, which always runs the pure engine;
here every salt-less Encryptor behaviour is checked on both engines, and each engine's blobs
are decrypted by the pure Decryptor (and by the native one, when present).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator

import pytest

from webconf.crypto import cobblestone as cs
from webconf.crypto.cobblestone import (
    CHUNK_SIZE,
    CIPHERTEXT_CHUNK_SIZE,
    HEADER_SIZE,
    SALT_SIZE,
    TAG_SIZE,
    CobblestoneError,
    Encryptor,
    ciphertext_size,
    decrypt,
    item_context,
)

KEY = bytes(range(32))
CTX = item_context("contoso.example", "CONF", "item")
ENGINES = ["pure"] + (["native"] if cs._NativeEncryptor is not None else [])


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(cs, "NATIVE", request.param == "native")
    yield request.param


def _uses(enc: Encryptor) -> str:
    return "native" if enc._native is not None else "pure"


@pytest.mark.parametrize("n", [0, 1, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 1 << 20])
def test_streamed_blob_decrypts(engine: str, n: int) -> None:
    pt = random.Random(n).randbytes(n)
    enc = Encryptor(KEY, CTX)
    assert _uses(enc) == engine
    out = bytearray()
    pos = 0
    rng = random.Random(n + 1)
    while pos < n:
        step = rng.choice([1, 100, CHUNK_SIZE, 64 * 1024, 70_001])
        out += enc.update(pt[pos : pos + step])
        pos += step
    out += enc.finalize()
    assert len(out) == ciphertext_size(n)
    assert out[:HEADER_SIZE] == enc.header
    assert decrypt(KEY, CTX, bytes(out)) == pt
    if cs._NativeEncryptor is not None:
        from cryptography.cobblestone import Cobblestone256Decryptor

        dec = Cobblestone256Decryptor(KEY, CTX)
        assert dec.update(bytes(out)) + dec.finalize() == pt


def test_same_streaming_contract(engine: str) -> None:
    enc = Encryptor(KEY, CTX)
    header = enc.header
    assert len(header) == HEADER_SIZE
    assert enc.update(b"") == header  # the header leads the first output, even an empty one
    assert enc.update(b"x" * (CHUNK_SIZE - 1)) == b""
    assert len(enc.update(b"y")) == CIPHERTEXT_CHUNK_SIZE  # a full chunk leaves at once
    assert len(enc.finalize()) == TAG_SIZE  # empty final chunk
    with pytest.raises(ValueError):
        enc.update(b"more")
    with pytest.raises(ValueError):
        enc.finalize()
    only = Encryptor(KEY, CTX)
    blob = only.finalize()
    assert blob[:HEADER_SIZE] == only.header and len(blob) == HEADER_SIZE + TAG_SIZE
    assert decrypt(KEY, CTX, blob) == b""


def test_salts_are_fresh_and_bound(engine: str) -> None:
    a, b = Encryptor(KEY, CTX), Encryptor(KEY, CTX)
    assert a.header[:SALT_SIZE] != b.header[:SALT_SIZE]
    blob = a.update(b"secret") + a.finalize()
    with pytest.raises(CobblestoneError, match="commitment mismatch"):
        decrypt(KEY, item_context("contoso.example", "CONF", "other"), blob)
    with pytest.raises(CobblestoneError):
        decrypt(os.urandom(32), CTX, blob)


def test_bad_key_rejected(engine: str) -> None:
    for bad in (b"", b"k" * 16, b"k" * 33):
        with pytest.raises(ValueError):
            Encryptor(bad, CTX)


def test_fixed_salt_always_pure() -> None:
    assert _uses(Encryptor(KEY, CTX, salt=b"s" * SALT_SIZE)) == "pure"
