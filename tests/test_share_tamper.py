"""Blobs tampered with on the file share: the client refuses them, the rest stays readable.

Whoever can write to the share (an NFS admin, a backup restore gone wrong, an attacker) can
flip, cut, extend or swap ciphertext blobs, but cannot make a client accept them: every blob
is Cobblestone-256 ciphertext bound to its tenant, conference and item (docs/protocol.md §5), and
`clients.download.download_item` releases plaintext only once it authenticated. Each case
here tampers with one blob of a conference holding several items, then checks that

- downloading the tampered item raises `ItemIntegrityError` whose message names the item and
  says what is wrong, and that no plaintext (not even a partial file) reaches the folder;
- every other item still downloads, decrypts and matches its SHA-256;
- putting the original blob back makes the item readable again (the failure was the tamper).

Participants are admitted through the internal API (as the focus would); everything else goes
through the client library over real TLS.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from clients.download import DownloadError, ItemIntegrityError, download_item
from clients.wcs import WcsSession, client_ssl_context

from .conftest import Participant, Wcs

ORGANIZER = "alice@contoso.example"
CHUNK = 16 * 1024
HEADER = 24 + 32  # salt, key commitment
TAG = 16
CT_CHUNK = CHUNK + TAG


@dataclass
class Shared:
    item: dict[str, Any]
    data: bytes
    blob: Path
    ciphertext: bytes


# Plaintext sizes: several full chunks plus a short final one; an exact multiple of the chunk
# size (final chunk empty); one chunk; tiny; empty; and a twin of the first one's size, so
# that a swap between them cannot be caught by a length check alone.
SIZES = {"deck.pdf": 5 * CHUNK + 1234, "exact.bin": 3 * CHUNK, "notes.txt": 1000,
         "one.bin": 1, "empty.txt": 0, "twin.pdf": 5 * CHUNK + 1234}
VICTIM = "deck.pdf"


def session_for(wcs: Wcs, who: Participant) -> WcsSession:
    return WcsSession(wcs.url, who.conference, who.cookie,
                      ssl=client_ssl_context(wcs.cfg.certs_dir / "ca.pem"))


async def share_items(wcs: Wcs, alice: Participant, tmp_path: Path) -> dict[str, Shared]:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    shared: dict[str, Shared] = {}
    before = blob_files(wcs)
    async with session_for(wcs, alice) as a:
        for name, size in SIZES.items():
            data = os.urandom(size)
            (src / name).write_bytes(data)
            item = await a.upload(src / name, name=name)  # declares X-Content-SHA256
            (blob,) = blob_files(wcs) - before
            before.add(blob)
            assert item["ciphertext_size"] == blob.stat().st_size
            shared[name] = Shared(item, data, blob, blob.read_bytes())
    return shared


def blob_files(wcs: Wcs) -> set[Path]:
    share = wcs.cfg.share_dir
    return {p for p in share.rglob("*") if p.is_file() and ".tmp" not in p.relative_to(
        share).parts}


async def fetch(session: WcsSession, shared: Shared, out: Path) -> Path:
    """Download, decrypt and verify one item into `out`; return the saved file."""
    key, context = await session.item_key(shared.item["id"])
    result = await download_item(session, shared.item, key, context, out)
    assert result.sha256 == hashlib.sha256(shared.data).hexdigest() == shared.item["sha256"]
    assert result.path is not None
    return result.path


async def assert_refused(session: WcsSession, shared: Shared, out: Path,
                         expected: str) -> ItemIntegrityError:
    key, context = await session.item_key(shared.item["id"])
    before = set(out.iterdir())
    with pytest.raises(ItemIntegrityError) as exc:
        await download_item(session, shared.item, key, context, out)
    message = str(exc.value)
    assert message.startswith(f"item {shared.item['name']}: "), message
    assert expected in message, message
    assert exc.value.item_id == shared.item["id"]
    assert set(out.iterdir()) == before, "a refused download left a file behind"
    return exc.value


async def assert_others_intact(session: WcsSession, shared: dict[str, Shared],
                               skip: set[str], out: Path) -> None:
    for name, entry in shared.items():
        if name in skip:
            continue
        assert entry.blob.read_bytes() == entry.ciphertext, f"{name}'s blob changed"
        path = await fetch(session, entry, out)
        assert path.read_bytes() == entry.data
        path.unlink()


def flip(offset: int) -> Callable[[bytes], bytes]:
    def tamper(blob: bytes) -> bytes:
        at = offset if offset >= 0 else len(blob) + offset
        return blob[:at] + bytes([blob[at] ^ 0x01]) + blob[at + 1:]
    return tamper


# name -> (tamper, what the error says, what it says when the client has no size hint and
# only the Cobblestone framing and tags can tell)
TAMPERS: dict[str, tuple[Callable[[bytes], bytes], str, str]] = {
    "flip-salt": (flip(3), "key commitment", "key commitment"),
    "flip-commitment": (flip(40), "key commitment", "key commitment"),
    "flip-first-chunk": (flip(HEADER + 100), "chunk 0", "chunk 0"),
    "flip-middle-chunk": (flip(HEADER + 2 * CT_CHUNK + 5000), "chunk 2", "chunk 2"),
    "flip-chunk-tag": (flip(HEADER + 3 * CT_CHUNK - 1), "chunk 2", "chunk 2"),
    "flip-final-chunk": (flip(-TAG - 10), "chunk 5", "chunk 5"),
    "flip-final-tag": (flip(-1), "chunk 5", "chunk 5"),
    "truncate-1": (lambda b: b[:-1], "truncated (ciphertext is", "chunk 5"),
    "truncate-final-chunk": (lambda b: b[:HEADER + 5 * CT_CHUNK], "truncated", "truncated"),
    "truncate-to-header": (lambda b: b[:HEADER], "truncated", "truncated"),
    "truncate-to-nothing": (lambda b: b"", "truncated", "truncated"),
    "extend-1": (lambda b: b + b"\0", "trailing data", "chunk 5"),
    "extend-chunk": (lambda b: b + b[HEADER:HEADER + CT_CHUNK], "trailing data", "chunk 5"),
    "extend-repeat": (lambda b: b + b, "trailing data", "chunk 5"),
}


@pytest.mark.parametrize("case", list(TAMPERS))
async def test_tampered_blob_is_refused_and_others_still_work(
        case: str, wcs: Wcs, tmp_path: Path) -> None:
    alice = await wcs.admit("TP1", ORGANIZER)
    bob = await wcs.admit("TP1", "bob@contoso.example", organizer=ORGANIZER)
    shared = await share_items(wcs, alice, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    victim = shared[VICTIM]
    tamper, expected, unhinted = TAMPERS[case]
    victim.blob.write_bytes(tamper(victim.ciphertext))
    async with session_for(wcs, bob) as b:
        assert await b.list_items() == [s.item for s in shared.values()]
        await assert_refused(b, victim, out, expected)
        # Without the recorded sizes the Cobblestone framing alone must still refuse it.
        await assert_refused(b, Shared({**victim.item, "ciphertext_size": None},
                                       victim.data, victim.blob, victim.ciphertext), out,
                             unhinted)
        await assert_others_intact(b, shared, {VICTIM}, out)
        victim.blob.write_bytes(victim.ciphertext)
        await fetch(b, victim, out)


@pytest.mark.parametrize("pair", [("deck.pdf", "twin.pdf"), ("deck.pdf", "notes.txt"),
                                  ("exact.bin", "empty.txt")])
async def test_swapped_blobs_are_refused_and_others_still_work(
        pair: tuple[str, str], wcs: Wcs, tmp_path: Path) -> None:
    """Each blob is bound to its item: swapped blobs fail (same size: the key commitment)."""
    alice = await wcs.admit("TP2", ORGANIZER)
    bob = await wcs.admit("TP2", "bob@contoso.example", organizer=ORGANIZER)
    shared = await share_items(wcs, alice, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    x, y = shared[pair[0]], shared[pair[1]]
    tmp = x.blob.with_name("swap")
    os.replace(x.blob, tmp)
    os.replace(y.blob, x.blob)
    os.replace(tmp, y.blob)
    same_size = len(x.ciphertext) == len(y.ciphertext)
    async with session_for(wcs, bob) as b:
        for victim, other in ((x, y), (y, x)):
            error = await assert_refused(b, victim, out, "key commitment" if same_size else "")
            if not same_size:
                assert ("truncated" if len(other.ciphertext) < len(victim.ciphertext)
                        else "trailing data") in str(error)
            # With no size hint, the decryptor itself refuses the foreign blob.
            unhinted = Shared({**victim.item, "ciphertext_size": None}, victim.data,
                              victim.blob, victim.ciphertext)
            await assert_refused(b, unhinted, out, "key commitment")
        await assert_others_intact(b, shared, set(pair), out)
        x.blob.write_bytes(x.ciphertext)
        y.blob.write_bytes(y.ciphertext)
        await fetch(b, x, out)
        await fetch(b, y, out)


async def test_blob_moved_from_another_conference_or_tenant_is_refused(
        wcs: Wcs, tmp_path: Path) -> None:
    """The same item layout in another conference and another tenant: a blob copied over
    from there fails the key commitment, even with a matching size."""
    alice = await wcs.admit("TP3", ORGANIZER)
    shared = await share_items(wcs, alice, tmp_path / "a")
    out = tmp_path / "out"
    out.mkdir()
    victim = shared[VICTIM]
    for conference, organizer in (("TP4", ORGANIZER), ("TP5", "eve@fabrikam.example")):
        other = await wcs.admit(conference, organizer)
        theirs = await share_items(wcs, other, tmp_path / conference)
        shutil.copyfile(theirs[VICTIM].blob, victim.blob)
        async with session_for(wcs, alice) as a:
            await assert_refused(a, victim, out, "key commitment")
            await assert_others_intact(a, shared, {VICTIM}, out)
        async with session_for(wcs, other) as o:
            await assert_others_intact(o, theirs, set(), out)
        victim.blob.write_bytes(victim.ciphertext)


async def test_missing_blob_is_a_download_error_not_plaintext(
        wcs: Wcs, tmp_path: Path) -> None:
    alice = await wcs.admit("TP6", ORGANIZER)
    shared = await share_items(wcs, alice, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    victim = shared[VICTIM]
    victim.blob.unlink()
    async with session_for(wcs, alice) as a:
        key, context = await a.item_key(victim.item["id"])
        with pytest.raises(DownloadError) as exc:
            await download_item(a, victim.item, key, context, out)
        assert not isinstance(exc.value, ItemIntegrityError)
        assert str(exc.value).startswith(f"item {VICTIM}: ") and "404" in str(exc.value)
        assert list(out.iterdir()) == []
        await assert_others_intact(a, shared, {VICTIM}, out)
