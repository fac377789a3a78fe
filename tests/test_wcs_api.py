"""The public and internal HTTPS API against a real in-process WCS over real TLS."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import ssl

import aiohttp
import pytest

from webconf.crypto.cobblestone import CobblestoneError, Decryptor, RangeDecryptor
from webconf.deploy import pki, tls

from .conftest import Wcs


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def fetch_key(wcs: Wcs, who, item_id: str) -> tuple[bytes, bytes]:
    async with wcs.http.get(f"{wcs.items_url(who.conference)}/{item_id}/key",
                            headers=who.headers) as resp:
        assert resp.status == 200
        assert resp.headers["Cache-Control"] == "no-store"
        body = await resp.json()
    return b64d(body["key"]), b64d(body["context"])


async def download(wcs: Wcs, who, item_id: str, headers: dict[str, str] | None = None
                   ) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    async with wcs.http.get(f"{wcs.items_url(who.conference)}/{item_id}/content",
                            headers={**who.headers, **(headers or {})}) as resp:
        return resp.status, await resp.read(), resp.headers


async def test_share_list_key_download_decrypt(wcs: Wcs) -> None:
    alice = await wcs.admit("K7Q2", "alice@contoso.example")
    bob = await wcs.admit("K7Q2", "bob@contoso.example", organizer="alice@contoso.example")
    assert alice.role == "organizer" and bob.role == "attendee"
    data = os.urandom(3 * 1024 * 1024 + 123)
    digest = hashlib.sha256(data).hexdigest()
    from urllib.parse import quote
    status, body = await wcs.upload(alice, data, name=quote("Q3 plan — ünïcode.pdf"),
                                    extra={"X-Content-SHA256": digest})
    assert status == 201, body
    item = body["item"]
    assert item["name"] == "Q3 plan — ünïcode.pdf"
    assert item["size"] == len(data) and item["sha256"] == digest
    assert item["content_type"] == "application/pdf"

    async with wcs.http.get(wcs.items_url("K7Q2"), headers=bob.headers) as resp:
        assert resp.status == 200
        listed = (await resp.json())["items"]
    assert [i["id"] for i in listed] == [item["id"]]

    key, context = await fetch_key(wcs, bob, item["id"])
    status, blob, headers = await download(wcs, bob, item["id"])
    assert status == 200 and len(blob) == item["ciphertext_size"]
    assert headers["ETag"] == f'"{headers["ETag"].strip(chr(34))}"'
    dec = Decryptor(key, context)
    plain = dec.update(blob) + dec.finalize()
    assert plain == data
    assert data not in blob


async def test_range_etag_and_416(wcs: Wcs) -> None:
    alice = await wcs.admit("R1", "alice@contoso.example")
    data = os.urandom(100_000)
    _, body = await wcs.upload(alice, data)
    item = body["item"]
    key, context = await fetch_key(wcs, alice, item["id"])
    status, blob, headers = await download(wcs, alice, item["id"])
    size = len(blob)
    etag = headers["ETag"]

    status, part, h = await download(wcs, alice, item["id"], {"Range": "bytes=10-99"})
    assert status == 206 and part == blob[10:100]
    assert h["Content-Range"] == f"bytes 10-99/{size}"
    status, part, _ = await download(wcs, alice, item["id"], {"Range": "bytes=-16"})
    assert status == 206 and part == blob[-16:]
    status, part, _ = await download(wcs, alice, item["id"], {"Range": f"bytes={size - 5}-"})
    assert status == 206 and part == blob[-5:]
    for bad in (f"bytes={size}-", "bytes=abc", "bytes=5-2", "bytes=-0", "bytes=-"):
        status, raw, h = await download(wcs, alice, item["id"], {"Range": bad})
        assert status == 416, bad
        assert h["Content-Range"] == f"bytes */{size}"
        assert b'"range_not_satisfiable"' in raw
    status, part, _ = await download(wcs, alice, item["id"], {"Range": "items=1-2"})
    assert status == 200 and part == blob
    status, part, _ = await download(wcs, alice, item["id"], {"If-None-Match": etag})
    assert status == 304 and part == b""
    status, part, _ = await download(wcs, alice, item["id"],
                                     {"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert status == 200 and part == blob

    # Random-access decryption of a plaintext range through a ciphertext Range request.
    rd = RangeDecryptor(key, context, blob[:56], size)
    offset, length, first = rd.span(40_000, 30_000)
    status, part, _ = await download(
        wcs, alice, item["id"], {"Range": f"bytes={offset}-{offset + length - 1}"})
    assert status == 206
    plain = rd.decrypt_chunks(first, part)
    start = 40_000 - first * 16384
    assert plain[start:start + 30_000] == data[40_000:70_000]


async def test_roles_attendee_cannot_upload_or_delete(wcs: Wcs) -> None:
    alice = await wcs.admit("RO", "alice@contoso.example")
    bob = await wcs.admit("RO", "bob@contoso.example", organizer="alice@contoso.example")
    carol = await wcs.admit("RO", "carol@contoso.example", organizer="alice@contoso.example",
                            role="presenter")
    assert carol.role == "presenter"
    status, body = await wcs.upload(bob, b"nope")
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, body = await wcs.upload(carol, b"presenter deck")
    assert status == 201
    item_id = body["item"]["id"]
    async with wcs.http.delete(f"{wcs.items_url('RO')}/{item_id}", headers=bob.headers) as resp:
        assert resp.status == 403
    async with wcs.http.delete(f"{wcs.items_url('RO')}/{item_id}", headers=alice.headers) as r:
        assert r.status == 204
    # Nothing may be uploaded with an organizer role claimed by someone else.
    mallory = await wcs.admit("RO", "mallory@contoso.example",
                              organizer="alice@contoso.example", role="organizer")
    assert mallory.role == "attendee"


async def test_other_tenant_cannot_reach_items(wcs: Wcs) -> None:
    alice = await wcs.admit("T1", "alice@contoso.example")
    _, body = await wcs.upload(alice, b"contoso secret")
    item_id = body["item"]["id"]
    eve = await wcs.admit("T2", "eve@fabrikam.example")
    # Another tenant cannot join this conference at all.
    await wcs.admit("T1", "eve@fabrikam.example", organizer="alice@contoso.example",
                    expect=403)
    for path in ("", f"/{item_id}/key", f"/{item_id}/content"):
        async with wcs.http.get(wcs.items_url("T1") + path, headers=eve.headers) as resp:
            assert resp.status == 403, path
            assert (await resp.json())["error"]["code"] == "forbidden"
    # ... and its own conference does not know this item.
    async with wcs.http.get(f"{wcs.items_url('T2')}/{item_id}/key", headers=eve.headers) as r:
        assert r.status == 404


async def test_upload_limit_413_leaves_nothing(wcs: Wcs) -> None:
    wcs.cfg.wcs.max_upload_bytes = 1024 * 1024
    alice = await wcs.admit("L1", "alice@contoso.example")
    status, body = await wcs.upload(alice, os.urandom(1024 * 1024 + 1))
    assert status == 413 and body["error"]["code"] == "too_large"

    async def chunked():  # no Content-Length: the limit is enforced while streaming
        for _ in range(40):
            yield os.urandom(64 * 1024)

    status, body = await wcs.upload(alice, chunked())
    assert status == 413
    status, body = await wcs.upload(alice, os.urandom(1024 * 1024))
    assert status == 201
    share = wcs.cfg.share_dir
    assert list((share / ".tmp").iterdir()) == []
    blobs = [p for p in share.rglob("*") if p.is_file()]
    assert len(blobs) == 1


async def test_delete_crypto_shreds(wcs: Wcs) -> None:
    alice = await wcs.admit("D1", "alice@contoso.example")
    _, body = await wcs.upload(alice, b"to be shredded" * 1000)
    item_id = body["item"]["id"]
    blobs = [p for p in wcs.cfg.share_dir.rglob("*") if p.is_file()]
    assert len(blobs) == 1
    async with wcs.http.delete(f"{wcs.items_url('D1')}/{item_id}", headers=alice.headers) as r:
        assert r.status == 204
    for path in (f"/{item_id}/key", f"/{item_id}/content"):
        async with wcs.http.get(wcs.items_url("D1") + path, headers=alice.headers) as resp:
            assert resp.status == 404
    assert not blobs[0].exists()
    async with wcs.http.delete(f"{wcs.items_url('D1')}/{item_id}", headers=alice.headers) as r:
        assert r.status == 404


async def test_json_errors_and_status_codes(wcs: Wcs) -> None:
    async with wcs.http.get(f"{wcs.url}/nope") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    async with wcs.http.put(f"{wcs.url}/healthz") as resp:
        assert resp.status == 405
        assert "GET" in resp.headers["Allow"]
        assert (await resp.json())["error"]["code"] == "method_not_allowed"
    async with wcs.http.get(wcs.items_url("X1")) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with wcs.http.get(wcs.items_url("X1"), headers={"Authorization": "Bearer abc"}) as r:
        assert r.status == 401
    alice = await wcs.admit("X1", "alice@contoso.example")
    for bad in ("..%2F..%2Fetc%2Fpasswd", "a" * 65, "%00"):
        async with wcs.http.get(f"{wcs.items_url('X1')}/{bad}/content",
                                headers=alice.headers) as resp:
            assert resp.status in (400, 404), bad
            assert "error" in await resp.json()
    status, body = await wcs.upload(alice, b"x", content_type="not a type")
    assert status == 400
    async with wcs.http.post(wcs.items_url("X1"), data=b"x", headers=alice.headers) as resp:
        assert resp.status == 400  # X-Item-Name missing
    status, body = await wcs.upload(alice, b"x", extra={"X-Content-SHA256": "zz"})
    assert status == 400
    # The internal API validates too.
    async with wcs.internal.post(
            f"{wcs.internal_url}/internal/v1/conferences/X2/participants", data=b"{") as resp:
        assert resp.status == 400
    async with wcs.internal.post(
            f"{wcs.internal_url}/internal/v1/conferences/X2/participants",
            json={"tenant": "contoso.example", "organizer": "alice@contoso.example",
                  "user": "bob@contoso.example"}) as resp:
        assert resp.status == 404  # unknown conference: only the organizer creates it


async def test_healthz_and_metrics(wcs: Wcs) -> None:
    alice = await wcs.admit("M1", "alice@contoso.example")
    await wcs.upload(alice, os.urandom(50_000))
    async with wcs.http.get(f"{wcs.url}/healthz") as resp:
        assert resp.status == 200 and (await resp.json())["status"] == "ok"
    async with wcs.http.get(f"{wcs.url}/metrics") as resp:
        text = await resp.text()
    for name in ("webconf_http_requests_total", "webconf_http_bytes_in_total",
                 "webconf_http_bytes_out_total", "webconf_active_channels",
                 "webconf_encrypt_seconds_bucket", "webconf_decrypt_seconds_bucket"):
        assert name in text
    bytes_in = [line for line in text.splitlines()
                if line.startswith("webconf_http_bytes_in_total")]
    assert float(bytes_in[0].split()[1]) >= 50_000


async def test_internal_api_requires_deployment_client_cert(wcs: Wcs, tmp_path) -> None:
    url = f"{wcs.internal_url}/internal/v1/healthz"
    async with wcs.internal.get(url) as resp:
        assert resp.status == 200
    no_cert = tls.client_context(wcs.cfg)
    foreign_ca_cert, foreign_ca_key = pki.generate_ca("foreign CA")
    cert_pem, key_pem = pki.issue_client_cert(foreign_ca_cert, foreign_ca_key)
    (tmp_path / "f.pem").write_bytes(cert_pem)
    (tmp_path / "f.key").write_bytes(key_pem)
    foreign = tls.client_context(wcs.cfg)
    foreign.load_cert_chain(tmp_path / "f.pem", tmp_path / "f.key")
    for ctx in (no_cert, foreign):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
            with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
                async with s.get(url) as resp:
                    await resp.read()


async def test_revoked_cookie_refused_at_once(wcs: Wcs) -> None:
    alice = await wcs.admit("V1", "alice@contoso.example")
    bob = await wcs.admit("V1", "bob@contoso.example", organizer="alice@contoso.example")
    async with wcs.http.get(wcs.items_url("V1"), headers=bob.headers) as resp:
        assert resp.status == 200
    assert await wcs.revoke(bob) == 204
    async with wcs.http.get(wcs.items_url("V1"), headers=bob.headers) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["message"] == "cookie revoked"
    assert await wcs.end("V1") == 204
    async with wcs.http.get(wcs.items_url("V1"), headers=alice.headers) as resp:
        assert resp.status == 401


async def test_end_conference_keeps_items_for_the_grace(wcs: Wcs) -> None:
    """An end keeps the content for `wcs.content_grace_seconds` (tests/test_lifecycle.py
    covers the shred after it and `shred_content_at_end`)."""
    alice = await wcs.admit("E1", "alice@contoso.example")
    await wcs.upload(alice, b"a" * 40_000)
    await wcs.upload(alice, b"b" * 40_000)
    assert len([p for p in wcs.cfg.share_dir.rglob("*") if p.is_file()]) == 2
    assert await wcs.end("E1") == 204
    assert len([p for p in wcs.cfg.share_dir.rglob("*") if p.is_file()]) == 2
    assert await wcs.end("E1") == 404  # ended already: nothing ended by this call
    assert await wcs.end("nope") == 404
    # The organizer may reopen it; the old cookie stays dead.
    alice2 = await wcs.admit("E1", "alice@contoso.example")
    async with wcs.http.get(wcs.items_url("E1"), headers=alice.headers) as resp:
        assert resp.status == 401
    async with wcs.http.get(wcs.items_url("E1"), headers=alice2.headers) as resp:
        assert resp.status == 200 and len((await resp.json())["items"]) == 2


async def test_blob_swapped_between_items_fails_decryption(wcs: Wcs) -> None:
    alice = await wcs.admit("S1", "alice@contoso.example")
    _, a = await wcs.upload(alice, b"A" * 50_000)
    _, b = await wcs.upload(alice, b"B" * 50_000)
    blob_a = [p for p in wcs.cfg.share_dir.rglob("*") if p.is_file()]
    assert len(blob_a) == 2
    paths = {}
    for item in (a["item"], b["item"]):
        _, blob, _ = await download(wcs, alice, item["id"])
        for p in blob_a:
            if p.read_bytes() == blob:
                paths[item["id"]] = p
    pa, pb = paths[a["item"]["id"]], paths[b["item"]["id"]]
    data_a, data_b = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(data_b)
    pb.write_bytes(data_a)
    key, context = await fetch_key(wcs, alice, a["item"]["id"])
    _, blob, _ = await download(wcs, alice, a["item"]["id"])
    with pytest.raises(CobblestoneError):
        dec = Decryptor(key, context)
        dec.update(blob)
        dec.finalize()


async def test_concurrent_uploads_and_downloads(wcs: Wcs) -> None:
    alice = await wcs.admit("C1", "alice@contoso.example")
    payloads = [os.urandom(200_000 + i) for i in range(6)]
    results = await asyncio.gather(*(wcs.upload(alice, p, name=f"f{i}")
                                     for i, p in enumerate(payloads)))
    assert all(status == 201 for status, _ in results)
    for (status, body), payload in zip(results, payloads, strict=True):
        key, context = await fetch_key(wcs, alice, body["item"]["id"])
        _, blob, _ = await download(wcs, alice, body["item"]["id"])
        dec = Decryptor(key, context)
        assert dec.update(blob) + dec.finalize() == payload


async def test_declared_sha256_is_verified_while_streaming(wcs: Wcs) -> None:
    alice = await wcs.admit("H1", "alice@contoso.example")
    data = os.urandom(100_000)
    status, body = await wcs.upload(alice, data, extra={"X-Content-SHA256": "0" * 64})
    assert status == 400 and "does not match" in body["error"]["message"]
    assert [p for p in wcs.cfg.share_dir.rglob("*") if p.is_file()] == []
    status, body = await wcs.upload(
        alice, data, extra={"X-Content-SHA256": hashlib.sha256(data).hexdigest()})
    assert status == 201
