"""The decrypting download (docs/protocol.md §8.3): `GET .../items/{item}/document`, its
switches (`webconf tenant set ... server_decrypt=false`, the organizer's
`PATCH /v1/conferences/{conf}` `{"downloads": false}`), its audit, and
`webconf fetch --server-decrypt`.

Everything is real: an in-process WCS over TLS on both store backends, blobs tampered
with on the real share, the real `webconf` commands as subprocesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import pytest

from conferencing.api.document import content_disposition
from conferencing.audit import read_records
from webconf.crypto import cobblestone
from webconf.crypto.cobblestone import item_context
from webconf.deploy.config import Config

from .conftest import Participant, Wcs, wait_for
from .test_cli import run, serving_stack, shared_items

ROOT = Path(__file__).resolve().parents[1]
ORGANIZER = "alice@contoso.example"
CHUNK = 16 * 1024
HEADER = 24 + 32
CT_CHUNK = CHUNK + 16


# -- helpers ------------------------------------------------------------------------------------

async def meeting(wcs: Wcs, conf: str) -> tuple[Participant, Participant, Participant]:
    """(organizer, presenter, attendee) of a fresh conference."""
    alice = await wcs.admit(conf, ORGANIZER)
    carol = await wcs.admit(conf, "carol@contoso.example", organizer=ORGANIZER,
                            role="presenter")
    bob = await wcs.admit(conf, "bob@contoso.example", organizer=ORGANIZER)
    return alice, carol, bob


async def share(wcs: Wcs, who: Participant, data: bytes, name: str = "deck.pdf",
                content_type: str = "application/pdf") -> dict[str, Any]:
    status, body = await wcs.upload(who, data, name=name, content_type=content_type)
    assert status == 201, body
    item: dict[str, Any] = body["item"]
    return item


def document_url(wcs: Wcs, who: Participant, item: dict[str, Any], path: str = "document"
                 ) -> str:
    return f"{wcs.url}/v1/conferences/{who.conference}/items/{item['id']}/{path}"


async def get(wcs: Wcs, who: Participant, item: dict[str, Any], path: str = "document",
              **headers: str) -> tuple[int, Any, bytes]:
    async with wcs.http.get(document_url(wcs, who, item, path),
                            headers={**who.headers, **headers}) as resp:
        return resp.status, resp.headers, await resp.read()


async def get_cut(wcs: Wcs, who: Participant, item: dict[str, Any]) -> tuple[int, bytes, bool]:
    """(status, the body bytes received, whether the body ended in an error)."""
    received = bytearray()
    async with wcs.http.get(document_url(wcs, who, item), headers=who.headers) as resp:
        try:
            async for piece in resp.content.iter_any():
                received += piece
        except aiohttp.ClientPayloadError:
            return resp.status, bytes(received), True
        return resp.status, bytes(received), False


def blob_of(wcs: Wcs, item: dict[str, Any], before: set[Path]) -> Path:
    (blob,) = blob_files(wcs) - before
    assert blob.stat().st_size == item["ciphertext_size"]
    return blob


def blob_files(wcs: Wcs) -> set[Path]:
    share_dir = wcs.cfg.share_dir
    return {p for p in share_dir.rglob("*") if p.is_file()
            and ".tmp" not in p.relative_to(share_dir).parts}


def flip(blob: Path, offset: int) -> None:
    raw = bytearray(blob.read_bytes())
    raw[offset] ^= 0x01
    blob.write_bytes(bytes(raw))


async def metric(wcs: Wcs, name: str) -> float:
    async with wcs.http.get(f"{wcs.url}/metrics") as resp:
        text = await resp.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def audit(cfg: Config) -> list[dict[str, Any]]:
    return [r for r in read_records(cfg.log_dir / "audit.log") if r["event"] == "item.download"]


def webconf(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "webconf", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])})


# -- round trips and headers -------------------------------------------------------------------

SIZES = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 64 * CHUNK, (1 << 20) + 7, 3 * (1 << 20) + 5]


async def test_round_trip_of_every_size_equals_the_original(wcs: Wcs) -> None:
    alice, _, bob = await meeting(wcs, "DOC1")
    for size in SIZES:
        data = os.urandom(size)
        item = await share(wcs, alice, data, name=f"f{size}.bin",
                           content_type="application/x-test")
        status, headers, body = await get(wcs, bob, item)
        assert status == 200, (size, body[:200])
        assert body == data, size
        assert headers["Content-Length"] == str(size)
        assert headers["Content-Type"] == "application/x-test"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "private, no-store"
        assert headers["Accept-Ranges"] == "bytes"
        assert headers["Content-Disposition"] == (
            f"attachment; filename=\"f{size}.bin\"; filename*=UTF-8''f{size}.bin")
        assert re.fullmatch(r'"[0-9a-f]{32}"', headers["ETag"])
        _, content_headers, ciphertext = await get(wcs, bob, item, "content")
        assert content_headers["ETag"] != headers["ETag"]  # another representation
        assert len(ciphertext) == item["ciphertext_size"] and ciphertext != body or size == 0
    async with wcs.http.head(document_url(wcs, bob, item), headers=bob.headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(SIZES[-1])
        assert await resp.read() == b""


async def test_etag_and_if_none_match(wcs: Wcs) -> None:
    alice, _, bob = await meeting(wcs, "DOC2")
    item = await share(wcs, alice, os.urandom(40_000))
    _, headers, _ = await get(wcs, bob, item)
    etag = headers["ETag"]
    status, headers304, body = await get(wcs, bob, item, **{"If-None-Match": etag})
    assert (status, body, headers304["ETag"]) == (304, b"", etag)
    assert (await get(wcs, bob, item, **{"If-None-Match": f'"x", {etag}'}))[0] == 304
    assert (await get(wcs, bob, item, **{"If-None-Match": "*"}))[0] == 304
    _, content_headers, _ = await get(wcs, bob, item, "content")
    assert (await get(wcs, bob, item, **{"If-None-Match": content_headers["ETag"]}))[0] == 200
    # Another item (same bytes even) has another tag.
    other = await share(wcs, alice, os.urandom(40_000))
    assert (await get(wcs, bob, other, **{"If-None-Match": etag}))[0] == 200


async def test_memory_stays_flat_in_the_document_size(wcs: Wcs) -> None:
    """A 96 MiB document streams through a few MiB of buffers (tracemalloc sees every
    Python allocation of the server and of this client, which discards what it reads)."""
    alice, _, bob = await meeting(wcs, "DOC11")
    size = 96 << 20
    block = os.urandom(1 << 20)

    async def body() -> Any:
        for _ in range(size >> 20):
            yield block

    item = await share(wcs, alice, body())
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        async with wcs.http.get(document_url(wcs, bob, item), headers=bob.headers) as resp:
            assert resp.status == 200
            async for piece in resp.content.iter_chunked(1 << 16):
                digest.update(piece)
        peak = tracemalloc.get_traced_memory()[1] - baseline
    finally:
        tracemalloc.stop()
    assert digest.hexdigest() == hashlib.sha256(block * (size >> 20)).hexdigest()
    assert peak < 16 << 20, f"peak {peak / 2**20:.1f} MiB for a {size >> 20} MiB document"


# -- ranges ---------------------------------------------------------------------------------------

async def test_ranges_over_plaintext_offsets(wcs: Wcs) -> None:
    alice, _, bob = await meeting(wcs, "DOC3")
    size = 3 * CHUNK + 100
    data = os.urandom(size)
    item = await share(wcs, alice, data)
    _, headers, _ = await get(wcs, bob, item)
    etag = headers["ETag"]
    cases: list[tuple[str, int, int]] = [
        ("bytes=0-0", 0, 1),  # the first byte
        (f"bytes={size - 1}-{size - 1}", size - 1, size),  # the last byte
        (f"bytes={CHUNK - 3}-{CHUNK + 2}", CHUNK - 3, CHUNK + 3),  # across a chunk boundary
        (f"bytes={CHUNK - 1}-{2 * CHUNK}", CHUNK - 1, 2 * CHUNK + 1),  # across two
        (f"bytes={CHUNK}-{2 * CHUNK - 1}", CHUNK, 2 * CHUNK),  # exactly one chunk
        ("bytes=-10", size - 10, size),  # suffix
        (f"bytes=-{size + 50}", 0, size),  # a suffix longer than the document: all of it
        (f"bytes={2 * CHUNK + 5}-", 2 * CHUNK + 5, size),  # open-ended
        (f"bytes=100-{size + 1000}", 100, size),  # a last position past the end is clipped
        ("BYTES=5 - 9", 5, 10),  # unit case-insensitive, whitespace tolerated
    ]
    for header, start, end in cases:
        status, got, body = await get(wcs, bob, item, Range=header)
        assert status == 206, (header, body[:200])
        assert body == data[start:end], header
        assert got["Content-Range"] == f"bytes {start}-{end - 1}/{size}", header
        assert got["Content-Length"] == str(end - start)
        assert got["ETag"] == etag
    # Unsatisfiable or malformed: 416 with the size (RFC 9110 §15.5.17), a JSON error.
    for header in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}", "bytes=9-5",
                   "bytes=-0", "bytes=abc", "bytes=1-2-3", "bytes=-", "bytes=١-٢"):
        status, got, body = await get(wcs, bob, item, Range=header)
        assert status == 416, header
        assert got["Content-Range"] == f"bytes */{size}"
        assert json.loads(body)["error"]["code"] == "range_not_satisfiable"
    # Several ranges, another unit, or a stale If-Range: the whole document, 200.
    for extra in ({"Range": "bytes=0-1,5-6"}, {"Range": "items=0-1"},
                  {"Range": "bytes=0-1", "If-Range": '"0000"'}):
        status, got, body = await get(wcs, bob, item, **extra)
        assert (status, body) == (200, data), extra
    status, _, body = await get(wcs, bob, item, Range="bytes=0-1", **{"If-Range": etag})
    assert (status, body) == (206, data[:2])
    # An empty document has no satisfiable range.
    empty = await share(wcs, alice, b"", name="empty.txt")
    status, got, _ = await get(wcs, bob, empty, Range="bytes=0-")
    assert (status, got["Content-Range"]) == (416, "bytes */0")


async def test_a_range_reads_only_the_chunks_it_needs(wcs: Wcs) -> None:
    """Proof by tampering: a chunk outside the range is never read, so a range that avoids
    a forged chunk is served whole while one that touches it is cut."""
    alice, _, bob = await meeting(wcs, "DOC4")
    size = 5 * CHUNK + 1234
    data = os.urandom(size)
    before = blob_files(wcs)
    item = await share(wcs, alice, data)
    flip(blob_of(wcs, item, before), HEADER + 3 * CT_CHUNK + 10)  # chunk 3
    status, _, body = await get(wcs, bob, item, Range=f"bytes=0-{3 * CHUNK - 1}")
    assert (status, body) == (206, data[:3 * CHUNK])
    status, _, body = await get(wcs, bob, item, Range=f"bytes={4 * CHUNK}-{5 * CHUNK - 1}")
    assert (status, body) == (206, data[4 * CHUNK:5 * CHUNK])
    async with wcs.http.get(document_url(wcs, bob, item),
                            headers={**bob.headers, "Range": f"bytes={CHUNK + 7}-"}) as resp:
        assert resp.status == 206
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()


# -- tampered and truncated blobs -------------------------------------------------------------

@pytest.mark.parametrize(("size", "chunk"), [(5 * CHUNK + 1234, 2), ((1 << 20) + 7, 64),
                                             (3 * (1 << 20), 100)])
async def test_tampered_chunk_cuts_the_response_after_the_verified_prefix(
        wcs: Wcs, size: int, chunk: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="webconf")
    alice, _, bob = await meeting(wcs, "DOC5")
    data = os.urandom(size)
    before = blob_files(wcs)
    item = await share(wcs, alice, data)
    blob = blob_of(wcs, item, before)
    flip(blob, HEADER + chunk * CT_CHUNK + 777 % max(1, size - chunk * CHUNK))
    tampered_before = await metric(wcs, 'webconf_documents_tampered_total{kind="tag"}')
    status, received, cut = await get_cut(wcs, bob, item)
    assert status == 200
    assert cut, "the client must see an error, not a clean end"
    assert received == data[:chunk * CHUNK], "exactly the verified prefix, nothing after"
    assert await metric(wcs, 'webconf_documents_tampered_total{kind="tag"}') == (
        tampered_before + 1)
    logged = [json.loads(r.getMessage()) for r in caplog.records
              if r.name == "webconf.wcs.download"]
    assert logged and logged[-1]["event"] == "document.tampered"
    assert logged[-1]["kind"] == "tag" and logged[-1]["chunk"] == chunk
    assert logged[-1]["sent"] == chunk * CHUNK
    await wait_for(lambda: any(r["item"] == item["id"] for r in audit(wcs.cfg)))
    (record,) = [r for r in audit(wcs.cfg) if r["item"] == item["id"]]
    assert record["bytes"] == chunk * CHUNK and record["path"] == "document"
    # The server is fine and the rest still downloads.
    other_data = os.urandom(50_000)
    other = await share(wcs, alice, other_data, name="other.bin")
    assert (await get(wcs, bob, other))[2] == other_data


def open_blobs(wcs: Wcs) -> list[str]:
    """The share files this process (the in-process WCS) holds open."""
    share_dir = str(wcs.cfg.share_dir.resolve())
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor is gone by now
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(share_dir + os.sep):
                held.append(target)
    return held


async def test_no_download_leaves_its_blob_open(wcs: Wcs) -> None:
    """Each response opens its blob once and closes it, whichever way it ends: whole, a
    range, HEAD, 304, a refused size, a chunk failing its tag, a missing blob."""
    alice, _, bob = await meeting(wcs, "DOC9")
    data = os.urandom(3 * CHUNK + 5)
    before = blob_files(wcs)
    item = await share(wcs, alice, data)
    blob = blob_of(wcs, item, before)
    status, headers, body = await get(wcs, bob, item)
    assert (status, body) == (200, data)
    assert (await get(wcs, bob, item, Range="bytes=5-20"))[2] == data[5:21]
    assert (await get(wcs, bob, item, **{"If-None-Match": headers["ETag"]}))[0] == 304
    assert (await get(wcs, bob, item, path="content"))[0] == 200
    async with wcs.http.head(document_url(wcs, bob, item), headers=bob.headers) as resp:
        assert resp.status == 200
    original = blob.read_bytes()
    blob.write_bytes(original[:-1])
    assert (await get(wcs, bob, item))[0] == 500  # the size refused before the status
    flipped = bytearray(original)
    flipped[HEADER + CT_CHUNK + 9] ^= 1
    blob.write_bytes(bytes(flipped))
    status, received, cut = await get_cut(wcs, bob, item)
    assert (status, received, cut) == (200, data[:CHUNK], True)
    blob.unlink()
    assert (await get(wcs, bob, item))[0] == 404
    assert (await get(wcs, bob, item, path="content"))[0] == 404
    await wait_for(lambda: not open_blobs(wcs))
    assert open_blobs(wcs) == []


async def test_truncated_or_swapped_blob_is_refused_before_any_byte(
        wcs: Wcs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="webconf")
    alice, _, bob = await meeting(wcs, "DOC6")
    size = 5 * CHUNK + 1234
    datas = [os.urandom(size), os.urandom(size)]
    before = blob_files(wcs)
    first = await share(wcs, alice, datas[0])
    first_blob = blob_of(wcs, first, before)
    before.add(first_blob)
    second = await share(wcs, alice, datas[1])
    second_blob = blob_of(wcs, second, before)
    original = first_blob.read_bytes()
    size_before = await metric(wcs, 'webconf_documents_tampered_total{kind="size"}')
    for cut in (original[:-1], original[:HEADER + 2 * CT_CHUNK], original[:HEADER], b"",
                original + b"\0"):
        first_blob.write_bytes(cut)
        status, _, body = await get(wcs, bob, first)
        assert status == 500, len(cut)
        assert json.loads(body)["error"]["code"] == "internal"
        status, _, body = await get(wcs, bob, first, Range="bytes=0-10")
        assert status == 500  # a range is refused too: the size check is per response
    assert await metric(wcs, 'webconf_documents_tampered_total{kind="size"}') == size_before + 10
    # Same size, another item's blob: the key commitment refuses it.
    first_blob.write_bytes(second_blob.read_bytes())
    status, _, body = await get(wcs, bob, first)
    assert status == 500
    assert await metric(wcs, 'webconf_documents_tampered_total{kind="commitment"}') == 1
    first_blob.write_bytes(original)
    assert (await get(wcs, bob, first))[2] == datas[0]
    assert (await get(wcs, bob, second))[2] == datas[1]
    # The blob cut while it is being read: the verified part, then an error. The cut is far
    # beyond what the socket buffers can hold before the client reads on.
    big = os.urandom(32 << 20)
    before = blob_files(wcs)
    item = await share(wcs, alice, big, name="big.bin")
    blob = blob_of(wcs, item, before)
    cut_chunks = 1500  # ~24 MiB in
    truncated_before = await metric(wcs, 'webconf_documents_tampered_total{kind="truncated"}')
    async with wcs.http.get(document_url(wcs, bob, item), headers=bob.headers) as resp:
        assert resp.status == 200
        received = bytearray(await resp.content.readexactly(64 * 1024))
        os.truncate(blob, HEADER + cut_chunks * CT_CHUNK + 5)
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in resp.content.iter_any():
                received += piece
    assert bytes(received) == big[:cut_chunks * CHUNK]
    assert await metric(wcs, 'webconf_documents_tampered_total{kind="truncated"}') == (
        truncated_before + 1)


def test_decrypt_chunks_into_matches_and_reports_the_failing_chunk() -> None:
    """The allocation-free decrypt the download uses (webconf/crypto/cobblestone.py)."""
    key, context = os.urandom(32), item_context("t", "c", "i")
    for size in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK + 77, 64 * CHUNK):
        data = os.urandom(size)
        blob = cobblestone.encrypt(key, context, data)
        rd = cobblestone.RangeDecryptor(key, context, blob[:HEADER], len(blob))
        out = memoryview(bytearray(size + CHUNK))
        for first in range(rd.final_chunk_index + 1):
            body = blob[HEADER + first * CT_CHUNK:]
            n = rd.decrypt_chunks_into(first, body, out)
            assert bytes(out[:n]) == data[first * CHUNK:] == rd.decrypt_chunks(first, body)
        if size >= 3 * CHUNK:  # whole chunks before the final one, alone
            assert rd.decrypt_chunks_into(1, blob[HEADER + CT_CHUNK:HEADER + 3 * CT_CHUNK],
                                          out) == 2 * CHUNK
            assert bytes(out[:2 * CHUNK]) == data[CHUNK:3 * CHUNK]
    blob = bytearray(cobblestone.encrypt(key, context, data))
    blob[HEADER + 3 * CT_CHUNK + 9] ^= 1
    rd = cobblestone.RangeDecryptor(key, context, bytes(blob[:HEADER]), len(blob))
    with pytest.raises(cobblestone.CobblestoneError) as exc:
        rd.decrypt_chunks_into(1, blob[HEADER + CT_CHUNK:], out)
    assert (exc.value.kind, exc.value.chunk) == ("tag", 3)
    assert bytes(out[:2 * CHUNK]) == data[CHUNK:3 * CHUNK]  # the verified prefix
    blob[HEADER + 3 * CT_CHUNK + 9] ^= 1
    for cut, kind in ((blob[HEADER:-1], "truncated"), (blob[HEADER:HEADER + CT_CHUNK + 5],
                                                      "truncated"),
                      (bytes(blob[HEADER:]) + b"x", "trailing")):
        with pytest.raises(cobblestone.CobblestoneError) as exc:
            rd.decrypt_chunks_into(0, cut, out)
        assert exc.value.kind == kind


# -- hostile names ------------------------------------------------------------------------------

HOSTILE_NAMES = ['a"b.pdf', "../../etc/passwd", "dir\\evil.exe", "résumé 2026.pdf",
                 "報告書.docx", "x; filename=evil.sh", "emoji 🎉.txt", "%41%0d%0a.txt",
                 "'quoted'.txt", "....", "  spaces  .txt"]


def parse_disposition(value: str) -> tuple[str, str]:
    """(filename, decoded filename*) of a Content-Disposition we produce; strict."""
    m = re.fullmatch(r'attachment; filename="([^"\\]*)"; filename\*=UTF-8\'\'([A-Za-z0-9'
                     r'!#$&+\-.^_`|~%]+)', value)
    assert m is not None, value
    return m.group(1), unquote(m.group(2), errors="strict")


def test_content_disposition_of_hostile_names() -> None:
    for name in [*HOSTILE_NAMES, "cr\rlf\n.txt", "tab\t.txt", "nul\x00.txt"]:
        value = content_disposition(name)
        assert value.isascii() and value.isprintable(), (name, value)
        fallback, decoded = parse_disposition(value)
        assert decoded == name.replace("/", "_").replace("\\", "_")
        assert "/" not in fallback and "\\" not in fallback and fallback
        assert not fallback.startswith(".")
    assert parse_disposition(content_disposition("résumé.pdf"))[0] == "resume.pdf"
    assert parse_disposition(content_disposition("報告書"))[0] == "download"


async def test_hostile_names_give_safe_headers(wcs: Wcs) -> None:
    alice, _, bob = await meeting(wcs, "DOC7")
    for name in HOSTILE_NAMES:
        data = os.urandom(100)
        status, body = await wcs.upload(alice, data, name=quote(name, safe=""))
        assert status == 201, (name, body)
        status, headers, got = await get(wcs, bob, body["item"])
        assert (status, got) == (200, data)
        raw = headers["Content-Disposition"]
        assert raw.isascii() and "\r" not in raw and "\n" not in raw
        assert parse_disposition(raw)[1] == name.replace("/", "_").replace("\\", "_")


# -- switches ---------------------------------------------------------------------------------

async def test_server_decrypt_setting_turns_the_endpoint_off(wcs: Wcs) -> None:
    alice, _, bob = await meeting(wcs, "DOC8")
    data = os.urandom(30_000)
    item = await share(wcs, alice, data)
    assert (await get(wcs, bob, item))[2] == data  # and the cookie is cached now
    dep = str(wcs.cfg.base_dir)
    proc = await asyncio.to_thread(webconf, "tenant", "set", dep, "contoso.example",
                                   "server_decrypt=false")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "contoso.example: server_decrypt=false"
    for who in (alice, bob):  # every role, at once: read with the item, no cache
        status, _, body = await get(wcs, who, item)
        assert status == 403
        assert json.loads(body)["error"]["code"] == "server_decrypt_disabled"
    assert (await get(wcs, bob, item, "content"))[0] == 200  # the ciphertext path stays
    # A fresh cookie (the full check's query) sees it too; the other tenant does not.
    dave = await wcs.admit("DOC8", "dave@contoso.example", organizer=ORGANIZER)
    assert (await get(wcs, dave, item))[0] == 403
    eve = await wcs.admit("DOC8F", "eve@fabrikam.example")
    eve_data = os.urandom(100)
    assert (await get(wcs, eve, await share(wcs, eve, eve_data)))[2] == eve_data
    proc = await asyncio.to_thread(webconf, "tenant", "set", dep, "contoso.example",
                                   "server_decrypt=on")
    assert proc.returncode == 0, proc.stderr
    assert (await get(wcs, bob, item))[2] == data


def test_tenant_set_refuses_bad_input_with_one_line(deployment: Config) -> None:
    dep = str(deployment.base_dir)
    for args, expected in (
            (["contoso.example", "no_such=1"], "unknown tenant setting 'no_such'"),
            (["contoso.example", "server_decrypt=maybe"], "bad value 'maybe' for server_decrypt"),
            (["contoso.example", "server_decrypt"], "is not NAME=VALUE"),
            (["nowhere.example", "server_decrypt=false"], "is not a tenant of this deployment")):
        proc = webconf("tenant", "set", dep, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0], proc.stderr


async def test_organizer_forbids_attendee_downloads(wcs: Wcs) -> None:
    alice, carol, bob = await meeting(wcs, "DOC9")
    data = os.urandom(20_000)
    item = await share(wcs, alice, data)
    url = f"{wcs.url}/v1/conferences/{alice.conference}"
    channel = await wcs.http.ws_connect(f"{url}/channel", headers=bob.headers)
    try:
        assert (await channel.receive_json(timeout=5))["type"] == "welcome"
        for who in (bob, carol):  # only the organizer
            async with wcs.http.patch(url, json={"downloads": False},
                                      headers=who.headers) as resp:
                assert resp.status == 403
                assert (await resp.json())["error"]["code"] == "forbidden"
        for body, status in ((b'{"downloads": "no"}', 400), (b'{"downloads": null}', 400),
                             (b'{"downloads": false, "extra": 1}', 400), (b"{}", 400),
                             (b"[false]", 400), (b"not json", 400), (b'{"downloads": 0}', 400),
                             (b"{" * 100, 400)):
            async with wcs.http.patch(url, data=body, headers={
                    **alice.headers, "Content-Type": "application/json"}) as resp:
                assert resp.status == status, body
                assert (await resp.json())["error"]["code"] == "bad_request"
        async with wcs.http.patch(url, data=b'{"downloads": false}', headers={
                **alice.headers, "Content-Type": "text/plain"}) as resp:
            assert resp.status == 415
        async with wcs.http.patch(url, json={"downloads": False},
                                  headers=alice.headers) as resp:
            assert resp.status == 200
            assert await resp.json() == {"conference": alice.conference, "downloads": False,
                                          "locked": False}
        event = await channel.receive_json(timeout=5)
        assert event["type"] == "conference.updated" and event["downloads"] is False
        for path in ("content", "document"):
            status, _, body = await get(wcs, bob, item, path)
            assert status == 403, path
            assert json.loads(body)["error"]["code"] == "downloads_disabled"
            for who in (alice, carol):
                assert (await get(wcs, who, item, path))[0] == 200
        assert (await get(wcs, bob, item, "key"))[0] == 200  # following the meeting stays
        # Unchanged: 200 again, no second event. Then back on.
        async with wcs.http.patch(url, json={"downloads": False},
                                  headers=alice.headers) as resp:
            assert resp.status == 200
        async with wcs.http.patch(url, json={"downloads": True},
                                  headers=alice.headers) as resp:
            assert await resp.json() == {"conference": alice.conference, "downloads": True,
                                          "locked": False}
        event = await channel.receive_json(timeout=5)
        assert event == {"type": "conference.updated", "downloads": True, "locked": False,
                         "seq": event["seq"]}
        assert (await get(wcs, bob, item))[2] == data
    finally:
        await channel.close()
    # Another conference's organizer cannot touch this one.
    other = await wcs.admit("DOC9X", "zoe@contoso.example")
    async with wcs.http.patch(url, json={"downloads": False}, headers=other.headers) as resp:
        assert resp.status == 403


# -- audit --------------------------------------------------------------------------------------

async def test_every_download_is_audited_with_the_bytes_sent(wcs: Wcs) -> None:
    alice, _, bob = await meeting(wcs, "DOC10")
    data = os.urandom(70_000)
    item = await share(wcs, alice, data)
    assert (await get(wcs, bob, item))[0] == 200
    assert (await get(wcs, bob, item, Range="bytes=10-19"))[0] == 206
    assert (await get(wcs, bob, item, "content"))[0] == 200
    assert (await get(wcs, bob, item, "content", Range="bytes=0-99"))[0] == 206
    assert (await get(wcs, bob, item, **{"If-None-Match": "*"}))[0] == 304  # sends nothing
    await wait_for(lambda: len(audit(wcs.cfg)) >= 4)
    records = audit(wcs.cfg)
    assert [(r["path"], r["bytes"]) for r in records] == [
        ("document", 70_000), ("document", 10), ("content", item["ciphertext_size"]),
        ("content", 100)]
    for r in records:
        assert (r["tenant"], r["conference"], r["who"], r["item"]) == (
            "contoso.example", bob.conference, bob.pid, item["id"])
    text = (wcs.cfg.log_dir / "audit.log").read_text()
    assert "deck.pdf" not in text and bob.cookie not in text


# -- the client ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    """One `webconf serve` (focus + WCS subprocesses), with the CLI tests' users."""
    yield from serving_stack(tmp_path_factory, "doc")


def test_fetch_server_decrypt_end_to_end(stack: Config, tmp_path: Path) -> None:
    """`webconf share`, then `webconf fetch --server-decrypt` against a real `webconf serve`:
    the files arrive whole and checked; a tampered blob is refused (exit 8), nothing saved."""
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    notes = tmp_path / "notes.txt"
    notes.write_text("agenda: ship it\n")
    before = {p for p in stack.share_dir.rglob("*") if p.is_file()}
    proc = run(stack, "share", "CLID1", "alice@contoso.example", str(big), str(notes))
    assert proc.returncode == 0, proc.stderr
    assert set(shared_items(proc.stdout)) == {"big.bin", "notes.txt"}
    out = tmp_path / "bob"
    proc = run(stack, "fetch", "CLID1", "bob@contoso.example", "--server-decrypt",
               "--save", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(sha256 verified)") == 2, proc.stdout
    for name in ("big.bin", "notes.txt"):
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["big.bin", "notes.txt"]
    records = [r for r in read_records(stack.log_dir / "audit.log")
               if r["event"] == "item.download" and r["path"] == "document"]
    assert sorted(r["bytes"] for r in records) == sorted(
        (tmp_path / n).stat().st_size for n in ("big.bin", "notes.txt"))
    # A forged chunk in the big one: the server cuts, the client refuses and saves nothing.
    blobs = {p for p in stack.share_dir.rglob("*") if p.is_file()} - before
    (blob,) = [p for p in blobs if p.stat().st_size > 1_000_000]
    flip(blob, HEADER + 70 * CT_CHUNK + 3)
    cut = tmp_path / "cut"
    proc = run(stack, "fetch", "CLID1", "bob@contoso.example", "--server-decrypt",
               "--save", str(cut))
    assert proc.returncode == 8, proc.stderr
    assert "item big.bin: the server cut the download short after" in proc.stderr
    assert [p.name for p in cut.iterdir()] == ["notes.txt"]  # the other item still came
