"""Hostile JSON, cookie expiry and ETags (issue 15, finding 9). Real WCS, real TLS.

- internal API bodies nested deep enough to exhaust the parser, or holding lone surrogates,
  are 400 JSON errors (they were 500s with a traceback);
- a cookie is refused from `exp` on, by HTTP and by the channel alike (HTTP used to accept
  it for another 30 s of leeway);
- the ETag is a keyed hash, not the blob's file name on the share;
- a deeply nested channel frame closes the socket with 1008 (it was 1000).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from conferencing.api import strict_json
from webconf.deploy.config import Config

from .conftest import Participant, Wcs, running_wcs

ORGANIZER = "alice@contoso.example"
TIMEOUT = 5.0


# -- internal API bodies ----------------------------------------------------------------------

async def post_admit(wcs: Wcs, body: bytes) -> tuple[int, Any]:
    async with wcs.internal.post(
            f"{wcs.internal_url}/internal/v1/conferences/RB1/participants", data=body,
            headers={"Content-Type": "application/json"}) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("body", [
    b"[" * 8000 + b"]" * 8000,
    b'{"tenant": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"a": ' + b'{"a": ' * 2000 + b"1" + b"}" * 2001,
    b'{"tenant": "contoso.example", "organizer": "alice@contoso.example", "user": '
    + b"[" * 40 + b"]" * 40 + b"}",
], ids=["8000-deep-array", "5000-deep-field", "2000-deep-objects", "40-deep"])
async def test_deeply_nested_internal_bodies_are_400(
        wcs: Wcs, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="webconf")
    status, data = await post_admit(wcs, body)
    assert status == 400, data
    assert data["error"]["code"] == "bad_request"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("body", [
    b'{"tenant": "contoso.example", "organizer": "alice@contoso.example", '
    b'"user": "\\ud800@contoso.example"}',
    b'{"tenant": "contoso.example", "organizer": "\\udfff", "user": "x@contoso.example"}',
    b'{"tenant": "contoso.example", "organizer": "alice@contoso.example", '
    b'"user": "\xed\xa0\x80@contoso.example"}',  # a surrogate encoded as UTF-8 bytes
    b'{"tenant": "contoso.example", "organizer": "alice@contoso.example", '
    b'"user": "\xff@contoso.example"}',
    b'{"\\ud800": 1, "tenant": "contoso.example", "organizer": "alice@contoso.example", '
    b'"user": "alice@contoso.example"}',
], ids=["escaped-user", "escaped-organizer", "cesu-bytes", "not-utf8", "surrogate-key"])
async def test_lone_surrogates_and_bad_utf8_are_400(
        wcs: Wcs, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="webconf")
    status, data = await post_admit(wcs, body)
    assert status == 400, data
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    # The valid body of the same shape is fine.
    status, data = await post_admit(
        wcs, b'{"tenant": "contoso.example", "organizer": "alice@contoso.example", '
             b'"user": "alice@contoso.example"}')
    assert status == 201, data


def test_strict_json_parser() -> None:
    assert strict_json.loads(b'{"a": ["[", "{", "\\"["]}') == {"a": ["[", "{", '"[']}
    assert strict_json.loads('{"user": "caf\\u00e9"}') == {"user": "café"}
    assert strict_json.loads(b"[" * 32 + b"]" * 32) is not None
    for bad in (b"[" * 33 + b"]" * 33, b"[" * 100_000, b'"\\ud800"', b'"\\udc00\\ud800"',
                b"\xed\xa0\x80", b"{", b"", b'"\x80"'):
        with pytest.raises(strict_json.JsonError):
            strict_json.loads(bad)


# -- cookie expiry: HTTP and the channel agree ---------------------------------------------------

async def test_http_and_channel_both_refuse_the_cookie_at_exp(deployment: Config) -> None:
    deployment.wcs.cookie_ttl_seconds = 2  # the leeway stays 30 s
    async with running_wcs(deployment) as wcs:
        alice = await wcs.admit("EX1", ORGANIZER)
        assert wcs.server is not None and wcs.server.service is not None
        exp = wcs.server.service.cookies.verify(alice.cookie,
                                                conference_id=alice.conference).expires_at
        url = wcs.items_url(alice.conference)
        async with wcs.http.get(url, headers=alice.headers) as resp:
            assert resp.status == 200
        ws = await wcs.http.ws_connect(
            url.replace("https://", "wss://").replace("/items", "/channel"),
            headers=alice.headers)
        assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "welcome"
        msg = await ws.receive(timeout=exp - time.time() + TIMEOUT)
        closed_at = time.time()
        assert msg.type == WSMsgType.CLOSE and msg.data == 1008, msg
        assert closed_at >= exp
        # The same instant, HTTP refuses it too (it used to until exp + leeway).
        async with wcs.http.get(url, headers=alice.headers) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["message"] == "token expired"
        # ...and no new channel opens with it.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await wcs.http.ws_connect(
                url.replace("https://", "wss://").replace("/items", "/channel"),
                headers=alice.headers)
        assert refused.value.status == 401


def test_verify_refuses_from_exp_exactly(deployment: Config) -> None:
    from conferencing.cookies import CookieAuthority, CookieError
    from webconf.deploy import keys
    authority = CookieAuthority(keys.load_cookie_keys(deployment), "k1", ttl_seconds=100,
                                leeway_seconds=30)
    token, claims = authority.mint(sub="sip:a@contoso.example", tenant="contoso.example",
                                   conference_id="C1", participant_id="p", role="attendee")
    assert authority.verify(token, conference_id="C1", now=claims.expires_at - 1)
    for late in (claims.expires_at, claims.expires_at + 29):
        with pytest.raises(CookieError, match="token expired"):
            authority.verify(token, conference_id="C1", now=late)
    assert authority.expired(claims.expires_at, now=claims.expires_at)
    assert not authority.expired(claims.expires_at, now=claims.expires_at - 0.5)


# -- ETags -----------------------------------------------------------------------------------

async def get_content(wcs: Wcs, who: Participant, item_id: str,
                      headers: dict[str, str] | None = None) -> tuple[int, bytes, Any]:
    async with wcs.http.get(f"{wcs.items_url(who.conference)}/{item_id}/content",
                            headers={**who.headers, **(headers or {})}) as resp:
        return resp.status, await resp.read(), resp.headers


def share_names(cfg: Config) -> set[str]:
    return {name for _, dirs, files in os.walk(cfg.share_dir) for name in (*dirs, *files)}


async def test_etag_is_a_keyed_hash_not_the_blob_name(deployment: Config) -> None:
    async with running_wcs(deployment) as wcs:
        alice = await wcs.admit("ET1", ORGANIZER)
        etags = []
        for _ in range(2):
            status, body = await wcs.upload(alice, os.urandom(50_000))
            assert status == 201, body
            status, blob, headers = await get_content(wcs, alice, body["item"]["id"])
            assert status == 200
            etags.append((body["item"]["id"], headers["ETag"], blob))
        names = share_names(deployment)
        assert len({etag for _, etag, _ in etags}) == 2
        for item_id, etag, blob in etags:
            assert etag.startswith('"') and etag.endswith('"') and len(etag) > 16
            opaque = etag.strip('"')
            assert not any(opaque in name or name in opaque for name in names if len(name) > 8)
            assert item_id not in opaque
            # The validators still work with it.
            status, part, _ = await get_content(wcs, alice, item_id, {"If-None-Match": etag})
            assert status == 304 and part == b""
            status, part, _ = await get_content(
                wcs, alice, item_id, {"If-None-Match": f'"nope", {etag}'})
            assert status == 304
            status, part, _ = await get_content(
                wcs, alice, item_id, {"Range": "bytes=5-9", "If-Range": etag})
            assert status == 206 and part == blob[5:10]
            status, part, _ = await get_content(
                wcs, alice, item_id, {"Range": "bytes=5-9", "If-Range": '"stale"'})
            assert status == 200 and part == blob
        conference = alice.conference
    # The same keys give the same tags after a restart (and on any other node).
    async with running_wcs(deployment) as wcs:
        again = await wcs.admit("ET1", ORGANIZER)
        assert again.conference == conference
        for item_id, etag, _ in etags:
            assert (await get_content(wcs, again, item_id))[2]["ETag"] == etag


# -- the channel --------------------------------------------------------------------------------

@pytest.mark.parametrize("frame", [
    "[" * 2000 + "]" * 2000,
    '{"type": "ping", "x": ' + "[" * 1500 + "]" * 1500 + "}",
    '{"type": "ping", "x": "\\ud800"}',
], ids=["2000-deep", "deep-ping", "surrogate"])
async def test_a_hostile_json_frame_closes_with_1008(
        wcs: Wcs, frame: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="webconf")
    alice = await wcs.admit("WS1", ORGANIZER)
    url = wcs.items_url(alice.conference).replace("https://", "wss://").replace(
        "/items", "/channel")
    ws = await wcs.http.ws_connect(url, headers=alice.headers)
    assert (await ws.receive_json(timeout=TIMEOUT))["type"] == "welcome"
    await ws.send_str(frame)
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    while msg.type == WSMsgType.TEXT:  # a roster event may come first
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    assert msg.type == WSMsgType.CLOSE and msg.data == 1008, msg
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    async with wcs.http.get(f"{wcs.url}/healthz") as resp:
        assert resp.status == 200
