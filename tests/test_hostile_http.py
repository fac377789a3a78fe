"""Hostile HTTP against a real in-process WCS over real TLS.

Requests that a well-behaved client library would never send (or would normalize away) go
out as exact bytes over raw TLS sockets (`asyncio.open_connection` with the deployment CA).
Each case checks the answer, that the server stays up with no request left in flight, and
what is left on the share and in the item list afterwards.

- `Range`: every malformed shape gets 200 (ignored), 206 or 416, and a 206 is the right slice;
- path traversal and odd ids: 400 or 404 and never a file read outside the share (every
  `open` the process makes is recorded through an audit hook);
- uploads aborted mid-body, stalled, or with a `Content-Length` that lies either way, with
  broken chunked framing or an undecodable `Content-Encoding`: no item, no blob, no temp file;
- WebSocket abuse is covered by tests/test_channel.py (oversized frames 1009, compressed
  bombs 1009, binary / invalid JSON / unknown messages / floods 1008, more channels than
  allowed 429, refusals before the upgrade); the cases it lacks are here: sockets dropped
  without a close frame free their slot, malformed handshakes leak nothing, and a message
  split into fragments cannot get past the size limit.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import json
import logging
import os
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conferencing.api import public
from conferencing.api.public import parse_range
from conferencing.service import ServiceError
from webconf.crypto.cobblestone import Decryptor
from webconf.deploy import tls

from .conftest import Participant, Wcs
from .test_openapi import assert_conforms, load_doc

ORGANIZER = "alice@contoso.example"
TIMEOUT = 5.0
MiB = 1024 * 1024
CONTENT = "/v1/conferences/{conf}/items/{item}/content"


# -- raw TLS connections ------------------------------------------------------------------------

@dataclass
class RawResponse:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


class Raw:
    """One TLS connection to the WCS that sends exactly the bytes it is given."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, wcs: Wcs) -> Raw:
        url = urlsplit(wcs.url)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            url.hostname, url.port, ssl=tls.client_context(wcs.cfg)), TIMEOUT)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, timeout: float = TIMEOUT) -> RawResponse | None:
        """The next response, or None if the server closed the connection first."""
        try:
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.IncompleteReadError as exc:
            assert exc.partial == b"", exc.partial
            return None
        except (ConnectionError, OSError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        _, status, reason = (lines[0].split(" ", 2) + [""])[:3]
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        resp = RawResponse(int(status), reason, headers)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                body += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                del body[-2:]
            resp.body = bytes(body[:-2]) if body.endswith(b"\r\n") else bytes(body)
        elif "content-length" in headers:
            resp.body = await asyncio.wait_for(
                self.reader.readexactly(int(headers["content-length"])), timeout)
        elif status not in ("101", "204", "304"):
            resp.body = await asyncio.wait_for(self.reader.read(), timeout)
        return resp

    async def closed_by_server(self, timeout: float = TIMEOUT) -> bool:
        try:
            return await asyncio.wait_for(self.reader.read(1), timeout) == b""
        except TimeoutError:  # (an OSError too, so first)
            return False
        except (ConnectionError, OSError):
            return True

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


def request_head(method: str, target: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def upload_head(who: Participant, framing: str, extra: dict[str, str] | None = None) -> bytes:
    name, _, value = framing.partition(": ")
    return request_head("POST", f"/v1/conferences/{who.conference}/items", {
        **who.headers, "X-Item-Name": "hostile.bin",
        "Content-Type": "application/octet-stream", name: value, **(extra or {})})


async def exchange(wcs: Wcs, data: bytes) -> RawResponse | None:
    conn = await Raw.open(wcs)
    try:
        await conn.send(data)
        return await conn.response()
    finally:
        await conn.close()


# -- what the server leaves behind ----------------------------------------------------------------

def blob_files(wcs: Wcs) -> set[Path]:
    share = wcs.cfg.share_dir
    return {p for p in share.rglob("*") if p.is_file() and ".tmp" not in p.relative_to(
        share).parts}


def temp_files(wcs: Wcs) -> list[Path]:
    return list((wcs.cfg.share_dir / ".tmp").iterdir())


async def item_ids(wcs: Wcs, who: Participant) -> set[str]:
    async with wcs.http.get(wcs.items_url(who.conference), headers=who.headers) as resp:
        assert resp.status == 200
        return {item["id"] for item in (await resp.json())["items"]}


def in_flight(wcs: Wcs) -> int:
    assert wcs.server is not None
    return wcs.server.in_flight.count


async def settled(wcs: Wcs, who: Participant, items: set[str], blobs: set[Path],
                  timeout: float = TIMEOUT) -> None:
    """Poll until no request is in flight and the share and item list are back to the
    given state (no temp file, no new blob, no new item)."""
    deadline = time.monotonic() + timeout
    while True:
        state = (in_flight(wcs), temp_files(wcs), blob_files(wcs), await item_ids(wcs, who))
        if state == (0, [], blobs, items):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"not settled: in flight {state[0]}, temp {state[1]}, "
                                 f"new blobs {state[2] - blobs}, items {state[3] ^ items}")
        await asyncio.sleep(0.05)
    async with wcs.http.get(f"{wcs.url}/healthz") as resp:
        assert resp.status == 200


@pytest.fixture
def no_server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail the test if the WCS logged an unhandled error (a 500) while it ran.

    (aiohttp's own "Error handling request" for bytes that are not HTTP is expected; an
    "Unhandled exception" from it means a request's body was left in a broken state.)
    """
    caplog.set_level(logging.INFO, logger="webconf")
    yield
    records = caplog.get_records("call")  # (`caplog.records` would be this teardown's)
    bad = [r for r in records if r.levelno >= logging.ERROR and (
        r.name.startswith("webconf") or r.getMessage().startswith("Unhandled exception"))]
    assert not bad, [r.getMessage() for r in bad]
    statuses = [json.loads(r.getMessage()).get("status") for r in records
                if r.name == "webconf.wcs.http" and r.getMessage().startswith('{"event": "http"')]
    assert statuses, "no request was logged: the check would prove nothing"
    assert all(s < 500 for s in statuses), statuses


# -- file opens, through an audit hook -------------------------------------------------------

_OPENED: list[str] | None = None
_HOOKED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _OPENED is not None and event == "open" and args and isinstance(
            args[0], (str, bytes, os.PathLike)):
        _OPENED.append(os.path.abspath(os.fsdecode(args[0])))


@contextlib.contextmanager
def recording_opens() -> Iterator[list[str]]:
    """Every file the process opens meanwhile (the in-process server's worker threads too)."""
    global _OPENED, _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # cannot be removed; inert while _OPENED is None
        _HOOKED = True
    opened: list[str] = []
    _OPENED = opened
    try:
        yield opened
    finally:
        _OPENED = None


# -- Range ----------------------------------------------------------------------------------------

@settings(max_examples=500, deadline=None)
@given(header=st.one_of(
    st.text(max_size=40),
    st.from_regex(r"\A(?i:bytes)\s*=\s*[0-9 \t-]{0,30}(,[0-9 -]{0,10})?\Z"),
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(0, 10**30) | st.just(""),
              st.integers(0, 10**30) | st.just(""))),
    size=st.integers(1, 10**12))
def test_parse_range_never_fails_otherwise(header: str, size: int) -> None:
    try:
        span = parse_range(header, size)
    except ServiceError as exc:
        assert exc.code == "range_not_satisfiable"
        return
    if span is not None:
        start, end = span
        assert 0 <= start < end <= size


def test_parse_range_shapes() -> None:
    size = 1000
    ok = {
        "bytes=0-9": (0, 10), "bytes=-16": (984, 1000), "bytes=990-": (990, 1000),
        "bytes=0-0": (0, 1), "BYTES=0-9": (0, 10), " bytes=0-9 ": (0, 10),
        "bytes= 0 - 9": (0, 10), "bytes=\t0-9": (0, 10), "bytes=0-999999": (0, 1000),
        "bytes=0-99999999999999999999": (0, 1000),
        "bytes=0-" + "9" * 5000: (0, 1000),  # beyond Python's int() digit limit
        "bytes=-99999999999999999999": (0, 1000),
        "bytes=00000000000000000000000000005-9": (5, 10),
        "bytes=999-999": (999, 1000),
    }
    for header, span in ok.items():
        assert parse_range(header, size) == span, header
    for header in ("items=0-9", "bytes 0-9", "", "bytes", "bytes=0-1,5-6", "bytes=0-1, -5",
                   "bytes=,", "none"):
        assert parse_range(header, size) is None, header
    for header in ("bytes=", "bytes=-", "bytes=--1", "bytes=1-2-3", "bytes=5-4", "bytes=-0",
                   "bytes=1000-", "bytes=99999999999999999999-", "bytes=" + "9" * 5000 + "-",
                   "bytes=１-２", "bytes=٣-٤", "bytes=a-b", "bytes=1.5-2", "bytes=+1-2",
                   "bytes=0x10-0x20", "bytes=-1-", "bytes=1_0-20", "bytes=0-9\x00",
                   "bytes=\udcff-1"):
        with pytest.raises(ServiceError) as exc:
            parse_range(header, size)
        assert exc.value.code == "range_not_satisfiable", header


def random_ranges(count: int, rng: random.Random) -> list[str]:
    atoms = ["bytes", "BYTES", "=", "-", ",", " ", "\t", "0", "1", "9", "00", "-1", "--",
             "99999999999999999999", "18446744073709551616", "1" * 30, "a", "é", "１", "٣",
             ";", "*", "bytes=", "+", ".", "x", "\u00a0"]
    out = []
    for _ in range(count):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(1, 8)))
        if rng.random() < 0.6 and not text.lower().startswith("bytes="):
            text = "bytes=" + text
        out.append(text)
    return out


async def test_malformed_ranges_get_200_206_or_416(wcs: Wcs, no_server_errors: None) -> None:
    alice = await wcs.admit("RG", ORGANIZER)
    status, body = await wcs.upload(alice, os.urandom(100_000))
    assert status == 201
    item_id = body["item"]["id"]
    url = f"{wcs.items_url('RG')}/{item_id}/content"
    async with wcs.http.get(url, headers=alice.headers) as resp:
        blob = await resp.read()
    size = len(blob)
    doc = load_doc()
    expected = {
        "bytes=": 416, "bytes=--1": 416, "bytes=1-2-3": 416, "bytes=5-4": 416, "bytes=-0": 416,
        "bytes=-": 416, f"bytes={size}-": 416, "bytes=99999999999999999999-": 416,
        "bytes=" + "9" * 5000 + "-": 416, "bytes=１-２": 416, "bytes=٣-٤": 416,
        "bytes=0-9": 206, "bytes=-16": 206, "bytes=0-99999999999999999999": 206,
        "bytes=-99999999999999999999": 206, "bytes=0-" + "9" * 5000: 206,
        "bytes=0000000000000000000000000010-19": 206, "bytes = 0-9": 200, "bytes= 0 - 9": 206,
        "bytes=0-1,5-6": 200, "bytes=0-0,-1": 200, "bytes=" + ",".join(["0-0"] * 1500): 200,
        "items=0-9": 200, "": 200, "bytes": 200, "bytes=\t5-9\t": 206,
    }
    cases = list(expected.items()) + [(r, None) for r in random_ranges(250, random.Random(7))]
    with recording_opens() as opened:
        for header, want in cases:
            async with wcs.http.get(url, headers={**alice.headers, "Range": header}) as resp:
                got = await resp.read()
                assert resp.status in (200, 206, 416), (header, resp.status)
                assert want is None or resp.status == want, (header, resp.status, got[:200])
                assert_conforms(doc, CONTENT, "get", resp.status, resp.headers, got)
                if resp.status == 200:
                    assert got == blob, header
                elif resp.status == 206:
                    first, last = map(int, resp.headers["Content-Range"].split(" ")[1]
                                      .split("/")[0].split("-"))
                    assert resp.headers["Content-Range"].endswith(f"/{size}")
                    assert got == blob[first:last + 1], header
                else:
                    assert resp.headers["Content-Range"] == f"bytes */{size}"
                    assert resp.headers["ETag"]
                    assert json.loads(got)["error"]["code"] == "range_not_satisfiable"
    share = str(wcs.cfg.share_dir.resolve())
    assert opened, "the audit hook saw no open: it would prove nothing below"
    assert all(p.startswith(share + os.sep) for p in opened), set(opened)
    # Bytes aiohttp hands over undecoded (lone surrogates), an If-Range that does not match,
    # HEAD, and a Range on a 304: straight from a raw socket.
    raw_cases: list[tuple[bytes, set[int]]] = [
        (b"bytes=\xff-\xfe", {416}), (b"bytes=0-9\xc3\xa9", {416}),
        (b"\xe2\x80\x8bbytes=0-9", {200}),
    ]
    for value, statuses in raw_cases:
        head = request_head("GET", urlsplit(url).path, alice.headers)
        head = head[:-2] + b"Range: " + value + b"\r\n\r\n"
        resp = await exchange(wcs, head)
        assert resp is not None and resp.status in statuses, (value, resp)
    for headers, status in (({"Range": "bytes=0-9", "If-Range": '"stale"'}, 200),
                            ({"Range": "bytes=0-9", "If-Range": 'W/"x", garbage'}, 200),
                            ({"Range": "bytes=x", "If-None-Match": "*"}, 304),
                            ({"Range": "bytes=0-9", "If-None-Match": '"a", , ,'}, 206)):
        async with wcs.http.get(url, headers={**alice.headers, **headers}) as resp:
            assert resp.status == status, headers
    async with wcs.http.head(url, headers={**alice.headers, "Range": "bytes=1-2-3"}) as resp:
        assert resp.status == 416
    async with wcs.http.head(url, headers={**alice.headers, "Range": "bytes=-10"}) as resp:
        assert resp.status == 206 and resp.headers["Content-Length"] == "10"
    async with wcs.http.get(f"{wcs.url}/healthz") as resp:
        assert resp.status == 200


# -- path traversal and odd ids -----------------------------------------------------------------

async def test_traversal_and_odd_ids_never_read_a_file(
        wcs: Wcs, tmp_path: Path, no_server_errors: None) -> None:
    alice = await wcs.admit("TRV", ORGANIZER)
    data = os.urandom(50_000)
    status, body = await wcs.upload(alice, data)
    assert status == 201
    iid = body["item"]["id"]
    (blob,) = blob_files(wcs)
    bname = blob.name
    blob_bytes = blob.read_bytes()
    marker = b"CANARY-" + os.urandom(8).hex().encode()
    canaries = [wcs.cfg.base_dir / "canary.txt", wcs.cfg.share_dir.parent / "canary.txt",
                tmp_path / "etc" / "passwd"]
    for canary in canaries:
        canary.parent.mkdir(parents=True, exist_ok=True)
        canary.write_bytes(marker)
    base = "/v1/conferences"
    conf = alice.conference
    long_id = "a" * 65
    targets = [
        ("GET", f"{base}/../items"), ("GET", f"{base}/..%2f{conf}/items"),
        ("GET", f"{base}/%2e%2e/items"), ("GET", f"{base}/.%2e/items"),
        ("GET", f"{base}/%2e%2e%2f%2e%2e%2fetc%2fpasswd/items"),
        ("GET", f"{base}/{conf}%2f..%2f..%2f..%2fetc%2fpasswd/items"),
        ("GET", f"{base}/{conf}%2fitems%2f{iid}/key"), ("GET", f"{base}/{conf}%2Fitems/{iid}/key"),
        ("GET", f"{base}/{conf}%00/items"), ("GET", f"{base}/%00/items"),
        ("GET", f"{base}/{conf}%5c..%5c..%5cetc/items"), ("GET", f"{base}/{long_id}/items"),
        ("GET", f"{base}/{'A' * 4000}/items"), ("GET", f"{base}/%C3%A9t%C3%A9/items"),
        ("GET", f"{base}/%ff%fe/items"), ("GET", f"{base}/{conf}%20/items"),
        ("GET", f"{base}/{conf}/items/../key"), ("GET", f"{base}/{conf}/items/%2e%2e/content"),
        ("GET", f"{base}/{conf}/items/..%2f..%2f..%2f..%2fetc%2fpasswd/content"),
        ("GET",
         f"{base}/{conf}/items/%2e%2e%2f%2e%2e%2f{bname[:2]}%2f{bname[2:4]}%2f{bname}/content"),
        ("GET", f"{base}/{conf}/items/{bname}/content"),
        ("GET", f"{base}/{conf}/items/{bname[:2]}%2f{bname[2:4]}%2f{bname}/content"),
        ("GET", f"{base}/{conf}/items/{iid}%2f..%2f{iid}/content"),
        ("GET", f"{base}/{conf}/items/{iid}%00/content"),
        ("GET", f"{base}/{conf}/items/%00/content"),
        ("GET", f"{base}/{conf}/items/{iid}%0d%0aX-Injected:%201/content"),
        ("GET", f"{base}/{conf}/items/{long_id}/content"),
        ("GET", f"{base}/{conf}/items/{'a' * 7000}/content"),
        ("GET", f"{base}/{conf}/items/{'a' * 9000}/content"),  # past the request-line limit
        ("GET", f"{base}/{conf}/items/%F0%9F%92%A3/key"),
        ("GET", f"{base}/{conf}/items/.%2e/content"),
        ("GET", f"{base}/{conf}/items/%252e%252e%252f/content"),
        ("GET", f"{base}/{conf}/items/{iid}/..%2f..%2f..%2fcanary.txt"),
        ("GET", f"{base}/{conf}/items/%2fetc%2fpasswd/content"),
        ("GET", f"{base}/{conf}/items/{quote(str(tmp_path / 'etc' / 'passwd'), safe='')}/content"),
        ("GET", f"/{'..%2f' * 8}etc%2fpasswd"), ("GET", "/../../../../etc/passwd"),
        ("GET", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
        ("GET", "/openapi.json/..%2f..%2fcanary.txt"),
        ("DELETE", f"{base}/{conf}/items/{iid}%2f..%2f{iid}"),
        ("DELETE", f"{base}/{conf}/items/..%2f{iid}"),
        ("DELETE", f"{base}/{conf}/items/{iid}%00"), ("DELETE", f"{base}/{conf}%2fitems/{iid}"),
        ("DELETE", f"{base}/{conf}/items/.."), ("DELETE", f"{base}/{conf}/items/{bname}"),
    ]
    raw_conf = f"/v1/conferences/{conf}".encode()
    raw_targets = [b"GET " + raw_conf + b"/items/\xc3\xa9/content",
                   b"GET /v1/conferences/\xff/items", b"GET " + raw_conf + b"/items/a\\..\\b/key"]
    auth = "".join(f"{k}: {v}\r\n" for k, v in alice.headers.items()).encode()
    with recording_opens() as opened:
        for method, target in targets:
            resp = await exchange(wcs, request_head(method, target, alice.headers))
            assert resp is not None, target
            assert resp.status in (400, 404), (method, target[:120], resp.status, resp.body[:200])
            assert marker not in resp.body and blob_bytes[:64] not in resp.body
            if resp.headers.get("content-type", "").startswith("application/json"):
                assert resp.json()["error"]["code"] in ("bad_request", "not_found")
        for line in raw_targets:
            resp = await exchange(wcs, line + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
            assert resp is not None and resp.status in (400, 404), (line, resp)
            assert marker not in resp.body
    # Not even a blob: every request failed before the share. (Python source files are read
    # when aiohttp logs a traceback for an unparsable request.)
    assert [p for p in opened if not p.endswith(".py")] == [], opened
    # Nothing was deleted, moved or created; the item still decrypts.
    assert blob_files(wcs) == {blob} and blob.read_bytes() == blob_bytes
    assert all(c.read_bytes() == marker for c in canaries)
    async with wcs.http.get(f"{wcs.items_url('TRV')}/{iid}/key", headers=alice.headers) as r:
        key = await r.json()
    dec = Decryptor(b64d(key["key"]), b64d(key["context"]))
    assert dec.update(blob_bytes) + dec.finalize() == data


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@pytest.mark.parametrize("name", ["../../../../tmp/webconf-pwned", "%2Fetc%2Fpasswd",
                                  "..%2F..%2F..%2Fcanary", "C:%5CWindows%5Cwin.ini",
                                  "%2Fdev%2Fnull"])
async def test_hostile_item_name_never_becomes_a_path(name: str, wcs: Wcs) -> None:
    """The name is sealed in the database; on the share a blob is only `ab/cd/<32 hex>`."""
    alice = await wcs.admit("NM", ORGANIZER)
    with recording_opens() as opened:
        status, body = await wcs.upload(alice, b"x" * 1000, name=name)
    assert status == 201, body
    assert body["item"]["name"] == unquote(name)
    share = str(wcs.cfg.share_dir.resolve())
    assert opened and all(p.startswith(share + os.sep) for p in opened), opened
    (blob,) = blob_files(wcs)
    first, second, blob_name = blob.relative_to(wcs.cfg.share_dir).parts
    assert re.fullmatch(r"[0-9a-f]{32}", blob_name)
    assert (first, second) == (blob_name[:2], blob_name[2:4])
    assert temp_files(wcs) == []
    assert not Path("/tmp/webconf-pwned").exists()


# -- aborted, stalled and lying uploads ----------------------------------------------------------

@pytest.mark.parametrize("framing", ["content-length", "chunked"])
@pytest.mark.parametrize("how", ["abort", "close"])
async def test_upload_aborted_mid_body_leaves_nothing(
        framing: str, how: str, wcs: Wcs, no_server_errors: None) -> None:
    alice = await wcs.admit("AB", ORGANIZER)
    status, _ = await wcs.upload(alice, os.urandom(30_000), name="kept.bin")
    assert status == 201
    items, blobs = await item_ids(wcs, alice), blob_files(wcs)
    conn = await Raw.open(wcs)
    total = 16 * MiB
    header = f"Content-Length: {total}" if framing == "content-length" else (
        "Transfer-Encoding: chunked")
    await conn.send(upload_head(alice, header))
    sent = 0
    while sent < total // 2:  # half of a large streamed upload
        chunk = os.urandom(256 * 1024)
        await conn.send(chunk if framing == "content-length" else
                        b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        sent += len(chunk)
    # The server is writing it: a temp file exists, no blob yet.
    deadline = time.monotonic() + TIMEOUT
    while not temp_files(wcs):
        assert time.monotonic() < deadline, "upload never reached the share"
        await asyncio.sleep(0.02)
    assert in_flight(wcs) == 1
    if how == "abort":
        conn.abort()  # no TLS close_notify, no FIN handshake
    else:
        await conn.close()
    await settled(wcs, alice, items, blobs)


async def test_content_length_larger_than_body_then_close(
        wcs: Wcs, no_server_errors: None) -> None:
    alice = await wcs.admit("CL1", ORGANIZER)
    items, blobs = await item_ids(wcs, alice), blob_files(wcs)
    for sent in (0, 1, 50_000, 99_999):
        conn = await Raw.open(wcs)
        await conn.send(upload_head(alice, "Content-Length: 100000") + os.urandom(sent))
        await asyncio.sleep(0.1)
        await conn.close()
        await settled(wcs, alice, items, blobs)


async def test_stalled_body_gets_408_and_leaves_nothing(
        wcs: Wcs, monkeypatch: pytest.MonkeyPatch, no_server_errors: None) -> None:
    monkeypatch.setattr(public, "BODY_IDLE_SECONDS", 0.5)
    alice = await wcs.admit("CL2", ORGANIZER)
    items, blobs = await item_ids(wcs, alice), blob_files(wcs)
    doc = load_doc()
    for framing, partial in (("Content-Length: 100000", os.urandom(50_000)),
                             ("Transfer-Encoding: chunked", b"4000\r\n" + os.urandom(0x4000)),
                             # Broken chunk framing mid-body: aiohttp's parser gives up without
                             # telling the handler, which then waits for more body.
                             ("Transfer-Encoding: chunked",
                              b"4000\r\n" + os.urandom(0x4000) + b"\r\n")):
        conn = await Raw.open(wcs)
        await conn.send(upload_head(alice, framing) + partial)
        if partial.endswith(b"\r\n"):
            await asyncio.sleep(0.1)
            await conn.send(b"zz\r\nhello\r\n0\r\n\r\n")
        started = time.monotonic()
        resp = await conn.response()
        assert resp is not None and resp.status == 408, resp
        assert time.monotonic() - started < TIMEOUT
        assert resp.json()["error"]["code"] == "request_timeout"
        assert_conforms(doc, "/v1/conferences/{conf}/items", "post", 408, _Headers(resp),
                        resp.body)
        assert await conn.closed_by_server(timeout=1.0)  # at once, no lingering
        await conn.close()
        await settled(wcs, alice, items, blobs)


class _Headers:
    """RawResponse headers as the case-insensitive mapping `assert_conforms` expects."""

    def __init__(self, resp: RawResponse) -> None:
        self._h = resp.headers

    def get(self, name: str, default: Any = None) -> Any:
        return self._h.get(name.lower(), default)


async def test_content_length_smaller_than_body(wcs: Wcs, no_server_errors: None) -> None:
    """The declared length is the body: the rest is parsed as a (garbage) next request."""
    alice = await wcs.admit("CL3", ORGANIZER)
    items, blobs = await item_ids(wcs, alice), blob_files(wcs)
    garbage = os.urandom(200) + b" garbage\r\n\r\n"

    # Small enough to arrive in one TLS record: aiohttp parses the request and the garbage in
    # one go and answers the parse error only (the request is never handled).
    body = os.urandom(100)
    conn = await Raw.open(wcs)
    await conn.send(upload_head(alice, "Content-Length: 100") + body + garbage)
    answers = []
    while (resp := await conn.response()) is not None:
        answers.append(resp)
    await conn.close()
    assert [r.status for r in answers] in ([400], [201, 400]), answers
    if answers[0].status == 201:
        items.add(answers[0].json()["item"]["id"])
        blobs = blob_files(wcs)
    await settled(wcs, alice, items, blobs)

    # With the declared SHA-256 of everything sent, the short body cannot match: 400, nothing.
    body = os.urandom(300_000)
    sha = hashlib.sha256(body + garbage).hexdigest()
    conn = await Raw.open(wcs)
    await conn.send(upload_head(alice, "Content-Length: 200000", {"X-Content-SHA256": sha})
                    + body[:200_000])
    first = await conn.response()
    assert first is not None and first.status == 400
    assert "does not match" in first.json()["error"]["message"]
    await conn.send(body[200_000:] + garbage)
    second = await conn.response()
    assert second is None or second.status == 400
    await conn.close()
    await settled(wcs, alice, items, blobs)

    # A large body: the request is handled (201, exactly the declared bytes), then the extra
    # bytes get 400 and the connection is closed.
    body = os.urandom(300_000)
    conn = await Raw.open(wcs)
    await conn.send(upload_head(alice, "Content-Length: 200000") + body[:200_000])
    first = await conn.response()
    assert first is not None and first.status == 201, first
    await conn.send(body[200_000:] + garbage)
    second = await conn.response()
    assert second is not None and second.status == 400
    assert await conn.closed_by_server()
    await conn.close()
    item = first.json()["item"]
    assert item["size"] == 200_000
    async with wcs.http.get(item["key_url"], headers=alice.headers) as r:
        key = await r.json()
    async with wcs.http.get(item["url"], headers=alice.headers) as r:
        blob = await r.read()
    dec = Decryptor(b64d(key["key"]), b64d(key["context"]))
    assert dec.update(blob) + dec.finalize() == body[:200_000]
    await settled(wcs, alice, items | {item["id"]}, blob_files(wcs))


@pytest.mark.parametrize("headers, status", [
    ({"Content-Length": "5", "Transfer-Encoding": "chunked"}, 400),  # request smuggling shape
    ({"Content-Length": "-5"}, 400),
    ({"Content-Length": "abc"}, 400),
    ({"Content-Length": "5, 6"}, 400),
    ({"Content-Length": "99999999999999999999999999"}, 400),
    ({"Content-Length": str(3 * 1024**3)}, 413),  # over the limit: refused before the body
    ({"Transfer-Encoding": "gzip, chunked"}, 400),
    ({"Transfer-Encoding": "identity"}, 400),
    ({"Content-Length": "5", "Content-Encoding": "gzip"}, 400),  # not gzip data
    ({"Content-Length": "5", "Content-Encoding": "deflate"}, 400),
    ({"Content-Length": "5", "Content-Encoding": "br"}, 400),
    ({"Content-Length": "5", "Content-Encoding": "x-unknown"}, 201),  # stored as sent
])
async def test_lying_or_conflicting_framing(headers: dict[str, str], status: int, wcs: Wcs,
                                            no_server_errors: None) -> None:
    alice = await wcs.admit("CL4", ORGANIZER)
    items, blobs = await item_ids(wcs, alice), blob_files(wcs)
    head = request_head("POST", f"/v1/conferences/{alice.conference}/items", {
        **alice.headers, "X-Item-Name": "x.bin", "Content-Type": "application/octet-stream",
        **headers})
    conn = await Raw.open(wcs)
    await conn.send(head + b"hello")
    resp = await conn.response()
    await conn.close()
    assert resp is not None and resp.status == status, (resp, headers)
    if status != 201:
        await settled(wcs, alice, items, blobs)
    if status in (413, 201) or headers.get("Content-Encoding") in ("gzip", "deflate"):
        assert resp.headers["content-type"].startswith("application/json")


async def test_gzip_bodies_are_decoded_and_bounded(wcs: Wcs, no_server_errors: None) -> None:
    """`Content-Encoding: gzip` is a transfer detail: the item is the decoded bytes, and the
    upload limit applies to them (a small gzip bomb gets 413)."""
    wcs.cfg.wcs.max_upload_bytes = 4 * MiB
    alice = await wcs.admit("GZ", ORGANIZER)
    items, blobs = await item_ids(wcs, alice), blob_files(wcs)
    bomb = gzip.compress(b"\0" * (64 * MiB))
    head = request_head("POST", f"/v1/conferences/{alice.conference}/items", {
        **alice.headers, "X-Item-Name": "bomb", "Content-Encoding": "gzip",
        "Content-Length": str(len(bomb))})
    resp = await exchange(wcs, head + bomb)
    assert resp is not None and resp.status == 413
    await settled(wcs, alice, items, blobs)
    # Not gzip, and more of it than one read: refused with 400 at once, body left unread.
    junk = os.urandom(512 * 1024)
    conn = await Raw.open(wcs)
    await conn.send(request_head("POST", f"/v1/conferences/{alice.conference}/items", {
        **alice.headers, "X-Item-Name": "junk", "Content-Encoding": "gzip",
        "Content-Length": str(len(junk) * 4)}) + junk)
    resp = await conn.response()
    assert resp is not None and resp.status == 400, resp
    assert resp.json()["error"]["message"] == "malformed request body"
    assert await conn.closed_by_server(timeout=1.0)
    await conn.close()
    await settled(wcs, alice, items, blobs)
    data = b"hello world " * 1000
    packed = gzip.compress(data)
    head = request_head("POST", f"/v1/conferences/{alice.conference}/items", {
        **alice.headers, "X-Item-Name": "ok.txt", "Content-Encoding": "gzip",
        "Content-Length": str(len(packed))})
    resp = await exchange(wcs, head + packed)
    assert resp is not None and resp.status == 201
    assert resp.json()["item"]["size"] == len(data)


async def test_malformed_requests_leave_the_server_up(wcs: Wcs) -> None:
    """Not HTTP at all, or HTTP with invalid bytes: the HTTP layer answers 400 and closes."""
    alice = await wcs.admit("MF", ORGANIZER)
    conf = alice.conference.encode()
    auth = f"Authorization: Bearer {alice.cookie}\r\n".encode()
    messages = [
        b"\x16\x03\x01\x00\x05hello\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: \x00\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n Folded: y\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"POST /v1/conferences/" + conf + b"/items HTTP/1.1\r\nHost: x\r\n" + auth
        + b"X-Item-Name: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\n",
    ]
    for message in messages:
        resp = await exchange(wcs, message)
        assert resp is None or resp.status == 400, (message[:60], resp)
    # Bytes above 0x7F in a header value are obs-text, which HTTP still allows.
    resp = await exchange(wcs, b"GET /v1/conferences/" + conf + b"/items HTTP/1.1\r\n"
                          + b"Host: x\r\n" + auth + b"X-Obs: \xff\xfe caf\xc3\xa9\r\n\r\n")
    assert resp is not None and resp.status == 200
    async with wcs.http.get(f"{wcs.url}/healthz") as r:
        assert r.status == 200
    await settled(wcs, alice, set(), set())


# -- WebSocket abuse not covered by test_channel.py ----------------------------------------------

def channel_subscriptions(wcs: Wcs, who: Participant) -> int:
    assert wcs.server is not None and wcs.server.service is not None
    return wcs.server.service.events.count(who.conference, who.pid)


async def wait_until(predicate: Any, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def ws_handshake(who: Participant, **overrides: str) -> bytes:
    headers = {**who.headers, "Upgrade": "websocket", "Connection": "Upgrade",
               "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), **overrides}
    return request_head("GET", f"/v1/conferences/{who.conference}/channel",
                        {k: v for k, v in headers.items() if v != ""})


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def next_frame(conn: Raw) -> tuple[int, bytes] | None:
    """The server's next frame as (opcode, payload); None once the socket ends."""
    try:
        head = await asyncio.wait_for(conn.reader.readexactly(2), TIMEOUT)
        n = head[1] & 0x7F
        if n == 126:
            n = int.from_bytes(await conn.reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await conn.reader.readexactly(8), "big")
        return head[0] & 0x0F, await conn.reader.readexactly(n)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def read_close_code(conn: Raw) -> int | None:
    """Skip server frames up to a close frame; its code (None if the socket just ends)."""
    while (frame := await next_frame(conn)) is not None:
        opcode, payload = frame
        if opcode == 0x8:
            return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
    return None


async def test_dropped_sockets_free_their_slots(wcs: Wcs) -> None:
    alice = await wcs.admit("WS1", ORGANIZER)
    limit = wcs.cfg.wcs.max_channels_per_participant
    for _ in range(3):  # several rounds: a leak would exhaust the slots
        conns = []
        for _ in range(limit):
            conn = await Raw.open(wcs)
            await conn.send(ws_handshake(alice))
            resp = await conn.response()
            assert resp is not None and resp.status == 101
            conns.append(conn)
        await wait_until(lambda: channel_subscriptions(wcs, alice) == limit)
        conn = await Raw.open(wcs)
        await conn.send(ws_handshake(alice))
        resp = await conn.response()
        assert resp is not None and resp.status == 429
        await conn.close()
        for conn in conns:
            conn.abort()  # no close frame, no TLS close_notify
        await wait_until(lambda: channel_subscriptions(wcs, alice) == 0)


@pytest.mark.parametrize("overrides", [
    {"Sec-WebSocket-Version": "99"}, {"Sec-WebSocket-Version": ""}, {"Sec-WebSocket-Key": ""},
    {"Sec-WebSocket-Key": "short"}, {"Sec-WebSocket-Key": "!" * 24}, {"Upgrade": "h2c"},
    {"Connection": "keep-alive"}, {"Upgrade": "websocket, websocket"},
])
async def test_malformed_handshake_is_refused_and_leaks_nothing(
        overrides: dict[str, str], wcs: Wcs, no_server_errors: None) -> None:
    alice = await wcs.admit("WS2", ORGANIZER)
    for _ in range(wcs.cfg.wcs.max_channels_per_participant + 1):
        resp = await exchange(wcs, ws_handshake(alice, **overrides))
        assert resp is not None and resp.status == 400, (overrides, resp)
        assert resp.json()["error"]["code"] == "bad_request"
    assert channel_subscriptions(wcs, alice) == 0
    assert in_flight(wcs) == 0
    conn = await Raw.open(wcs)  # a proper handshake still works: no slot was taken
    await conn.send(ws_handshake(alice))
    resp = await conn.response()
    assert resp is not None and resp.status == 101
    await conn.close()


async def test_fragmented_message_cannot_exceed_the_limit(wcs: Wcs) -> None:
    alice = await wcs.admit("WS3", ORGANIZER)
    limit = wcs.cfg.wcs.max_channel_message_bytes
    conn = await Raw.open(wcs)
    await conn.send(ws_handshake(alice))
    resp = await conn.response()
    assert resp is not None and resp.status == 101
    piece = b"x" * (limit // 2 + 1)
    await conn.send(ws_frame(0x1, b'{"type": "ping", "pad": "' + piece, fin=False))
    await conn.send(ws_frame(0x0, piece, fin=False))
    await conn.send(ws_frame(0x0, b'"}', fin=True))
    assert await read_close_code(conn) == 1009
    await conn.close()
    await wait_until(lambda: channel_subscriptions(wcs, alice) == 0)
    # Protocol errors close the socket (1002, or 1007 for text that is not UTF-8) and the
    # server stays up: a continuation with nothing to continue, a reserved opcode, a close
    # frame with a 1-byte payload, invalid UTF-8. (aiohttp does not insist that client frames
    # be masked, RFC 6455 §5.1: that leniency is aiohttp's, and harmless to the server.)
    for frames, codes in (([ws_frame(0x0, b"orphan")], {1002}),
                          ([ws_frame(0x3, b"reserved")], {1002}),
                          ([ws_frame(0x8, b"\x03")], {1002}),
                          ([ws_frame(0x1, b"\xff\xfe")], {1007})):
        conn = await Raw.open(wcs)
        await conn.send(ws_handshake(alice))
        resp = await conn.response()
        assert resp is not None and resp.status == 101
        assert (await next_frame(conn) or (0, b""))[0] == 0x1  # the welcome
        for frame in frames:
            await conn.send(frame)
        code = await read_close_code(conn)
        assert code is None or code in codes, (frames, code)
        await conn.close()
    # A ping between the fragments of a message is legal (RFC 6455 §5.4): pong, then pong.
    conn = await Raw.open(wcs)
    await conn.send(ws_handshake(alice))
    assert (await conn.response() or RawResponse(0, "")).status == 101
    assert (await next_frame(conn) or (0, b""))[0] == 0x1
    for frame in (ws_frame(0x1, b'{"ty', fin=False), ws_frame(0x9, b"p"),
                  ws_frame(0x0, b'pe": "ping"}')):
        await conn.send(frame)
    assert await next_frame(conn) == (0xA, b"p")
    assert await next_frame(conn) == (0x1, b'{"type": "pong"}')
    await conn.close()
    await wait_until(lambda: channel_subscriptions(wcs, alice) == 0)
    async with wcs.http.get(f"{wcs.url}/healthz") as r:
        assert r.status == 200

