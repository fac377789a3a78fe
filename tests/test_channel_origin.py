"""Cross-site requests with the browser cookie (issue 15, finding 6; docs/protocol.md §3).

A page on another site can make the browser open our data channel (or POST/DELETE to us)
with the `webconf_auth` cookie attached; the channel's `welcome` carries every item's key.
So when that cookie authenticates an upgrade or a state-changing request, `Origin` must be
one of the deployment's own; `Authorization: Bearer` (which no other site can make a
browser send) needs no such check. Real WCS, real TLS.
"""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import aiohttp
import pytest

from webconf.deploy.config import Config
from webconf.origins import parse_origin

from .conftest import Participant, Wcs, running_wcs

TIMEOUT = 5.0
ORGANIZER = "alice@contoso.example"
EVIL = "https://evil.example"


def channel_url(wcs: Wcs, conf: str) -> str:
    return wcs.url.replace("https://", "wss://", 1) + f"/v1/conferences/{conf}/channel"


def own_origin(wcs: Wcs) -> str:
    return wcs.url  # https://127.0.0.1:<port>, what a page we serve sends as `Origin`


def cookie(who: Participant) -> dict[str, str]:
    return {"Cookie": f"webconf_auth={who.cookie}"}


async def upgrade(wcs: Wcs, conf: str, headers: dict[str, str]) -> tuple[int, Any]:
    """An upgrade read as plain HTTP: (status, JSON body or None for a 101)."""
    hdrs = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), **headers}
    async with wcs.http.get(f"{wcs.url}/v1/conferences/{conf}/channel", headers=hdrs) as resp:
        if resp.status == 101:
            return 101, None
        return resp.status, await resp.json()


async def welcome(wcs: Wcs, conf: str, headers: dict[str, str]) -> dict[str, Any]:
    ws = await asyncio.wait_for(wcs.http.ws_connect(channel_url(wcs, conf), headers=headers),
                                TIMEOUT)
    try:
        data = await ws.receive_json(timeout=TIMEOUT)
    finally:
        await ws.close()
    assert isinstance(data, dict)
    return data


async def meeting_with_item(wcs: Wcs, conf: str) -> tuple[Participant, Participant]:
    alice = await wcs.admit(conf, ORGANIZER)
    bob = await wcs.admit(conf, "bob@contoso.example", organizer=ORGANIZER)
    status, body = await wcs.upload(alice, os.urandom(1000))
    assert status == 201, body
    return alice, bob


@pytest.mark.parametrize("origin", [
    EVIL, "null", "https://evil.example:443", "http://127.0.0.1", "junk", "",
    "https://127.0.0.1.evil.example",
])
async def test_cookie_upgrade_from_another_origin_is_refused_before_the_upgrade(
        wcs: Wcs, origin: str) -> None:
    _, bob = await meeting_with_item(wcs, "CS1")
    status, body = await upgrade(wcs, bob.conference, {**cookie(bob), "Origin": origin})
    assert status == 403, body
    assert body["error"]["code"] == "forbidden"
    assert "key" not in str(body)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await asyncio.wait_for(wcs.http.ws_connect(
            channel_url(wcs, bob.conference), headers=cookie(bob), origin=origin), TIMEOUT)
    assert refused.value.status == 403


async def test_cookie_upgrade_from_a_wrong_port_or_scheme_is_refused(wcs: Wcs) -> None:
    _, bob = await meeting_with_item(wcs, "CS2")
    port = wcs.cfg.wcs.https_port
    for origin in (f"https://127.0.0.1:{port + 1}", f"http://127.0.0.1:{port}",
                   f"wss://127.0.0.1:{port}", f"https://localhost:{port}"):
        status, _ = await upgrade(wcs, bob.conference, {**cookie(bob), "Origin": origin})
        assert status == 403, origin


async def test_cookie_upgrade_from_our_own_origin_works(wcs: Wcs) -> None:
    _, bob = await meeting_with_item(wcs, "CS3")
    hello = await welcome(wcs, bob.conference, {**cookie(bob), "Origin": own_origin(wcs)})
    assert hello["type"] == "welcome" and len(hello["items"]) == 1
    # Scheme and host compare case-insensitively, as browsers serialise them lower-case.
    upper = own_origin(wcs).replace("https://", "HTTPS://")
    assert (await upgrade(wcs, bob.conference, {**cookie(bob), "Origin": upper}))[0] == 101


async def test_a_cross_site_fetch_without_origin_is_refused(wcs: Wcs) -> None:
    _, bob = await meeting_with_item(wcs, "CS4")
    for site in ("cross-site", "same-site"):
        status, _ = await upgrade(wcs, bob.conference, {**cookie(bob), "Sec-Fetch-Site": site})
        assert status == 403, site
    status, _ = await upgrade(wcs, bob.conference, {**cookie(bob), "Sec-Fetch-Site": "same-origin"})
    assert status == 101


async def test_bearer_clients_are_not_origin_checked(wcs: Wcs) -> None:
    _, bob = await meeting_with_item(wcs, "CS5")
    headers = {"Authorization": f"Bearer {bob.cookie}", "Origin": EVIL}
    assert (await welcome(wcs, bob.conference, headers))["type"] == "welcome"
    # With both, the header authenticates: a browser page cannot have set it.
    assert (await upgrade(wcs, bob.conference, {**headers, **cookie(bob)}))[0] == 101


async def test_configured_allowed_origins(deployment: Config) -> None:
    deployment.wcs.allowed_origins = ["https://app.contoso.example", "https://web.example:8443"]
    async with running_wcs(deployment) as wcs:
        _, bob = await meeting_with_item(wcs, "CS6")
        for origin in ("https://app.contoso.example", "https://app.contoso.example:443",
                       "https://web.example:8443", own_origin(wcs)):
            status, _ = await upgrade(wcs, bob.conference, {**cookie(bob), "Origin": origin})
            assert status == 101, origin
        for origin in ("https://web.example", "https://contoso.example", EVIL):
            status, _ = await upgrade(wcs, bob.conference, {**cookie(bob), "Origin": origin})
            assert status == 403, origin


async def test_cookie_state_changes_from_another_origin_are_refused(wcs: Wcs) -> None:
    """CSRF: a cross-site POST or DELETE riding on the cookie changes nothing."""
    alice, _ = await meeting_with_item(wcs, "CS7")
    items_url = f"{wcs.url}/v1/conferences/{alice.conference}/items"
    upload_headers = {**cookie(alice), "X-Item-Name": "x.bin",
                      "Content-Type": "application/octet-stream"}
    for origin in (EVIL, "null"):
        async with wcs.http.post(items_url, data=b"x" * 100,
                                 headers={**upload_headers, "Origin": origin}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "forbidden"
    async with wcs.http.get(items_url, headers=alice.headers) as resp:
        (item,) = (await resp.json())["items"]
    async with wcs.http.delete(f"{items_url}/{item['id']}",
                               headers={**cookie(alice), "Origin": EVIL}) as resp:
        assert resp.status == 403
    async with wcs.http.get(items_url, headers=alice.headers) as resp:
        assert [i["id"] for i in (await resp.json())["items"]] == [item["id"]]
    # The same requests from our own origin go through.
    async with wcs.http.post(items_url, data=b"y" * 100,
                             headers={**upload_headers, "Origin": own_origin(wcs)}) as resp:
        assert resp.status == 201
    async with wcs.http.delete(f"{items_url}/{item['id']}",
                               headers={**cookie(alice), "Origin": own_origin(wcs)}) as resp:
        assert resp.status == 204


async def test_cookie_reads_need_no_origin_check(wcs: Wcs) -> None:
    """Safe methods change nothing, and without CORS headers no other site reads answers."""
    _, bob = await meeting_with_item(wcs, "CS8")
    async with wcs.http.get(f"{wcs.url}/v1/conferences/{bob.conference}/items",
                            headers={**cookie(bob), "Origin": EVIL}) as resp:
        assert resp.status == 200
        assert "Access-Control-Allow-Origin" not in resp.headers


def test_parse_origin() -> None:
    assert parse_origin("https://Example.COM") == ("https", "example.com", 443)
    assert parse_origin("https://example.com:443") == ("https", "example.com", 443)
    assert parse_origin("http://example.com") == ("http", "example.com", 80)
    assert parse_origin("https://[::1]:8443") == ("https", "::1", 8443)
    for bad in ("null", "", "example.com", "ftp://example.com", "https://", "https://a:99999",
                "https://user@example.com", "https://example.com:x"):
        assert parse_origin(bad) is None, bad
