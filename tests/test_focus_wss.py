"""SIP over WebSocket (RFC 7118) end to end: `webconf serve`, a WSS client like a browser's
SIP stack, the whole join (Digest INVITE -> 200 with the join body -> ACK -> BYE), and the
cookie working at the WCS and then revoked (docs/protocol.md §10)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from clients.sip import ConferenceDialog, SipError
from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.protocol import valid_id

from .conftest import ServeProcess
from .test_focus_e2e import USERS, add_users
from .ws_sip import WsSipConnection

CONF = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:WSS1"


@pytest.fixture
async def stack(deployment: Config, serve: ServeProcess):
    await add_users(deployment)
    serve.env["WEBCONF_FOCUS_LEAVE_GRACE_SECONDS"] = "1"
    await asyncio.to_thread(serve.start)
    yield deployment


async def items_status(cfg: Config, url: str, conference: str, cookie: str) -> int:
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg))) as http:
        async with http.get(f"{url}/v1/conferences/{conference}/items",
                            headers={"Authorization": f"Bearer {cookie}"}) as resp:
            return resp.status


async def test_join_over_wss_then_bye_revokes(stack: Config) -> None:
    conn = await WsSipConnection.open(stack, origin=stack.public_url)
    assert conn.ws.protocol == "sip"
    dialog = ConferenceDialog(conn, CONF, "alice@contoso.example",  # type: ignore[arg-type]
                              USERS["alice@contoso.example"], user_agent="JsSIP 3.10.0")
    result = await dialog.join()
    assert result.role == "organizer" and valid_id(result.conference)
    # RFC 7118 §5.2: transport=ws on the WebSocket listener's port, the focus's own address.
    assert f"127.0.0.1:{stack.focus.wss_port};transport=ws;" in result.contact
    assert result.contact.endswith(";isfocus")
    assert result.webconf_url == stack.public_url
    assert await items_status(stack, result.webconf_url, result.conference, result.cookie) == 200
    assert await dialog.leave() == 200
    for _ in range(50):  # the focus revokes at the WCS right after answering the BYE
        status = await items_status(stack, result.webconf_url, result.conference, result.cookie)
        if status == 401:
            break
        await asyncio.sleep(0.1)
    assert status == 401
    await conn.close()
    events = [json.loads(line) for line in
              (stack.log_dir / "focus.log").read_text().splitlines()]
    joins = [e for e in events if e.get("event") == "join"]
    assert joins and joins[-1]["transport"] == "WSS" and joins[-1]["tls"].startswith("TLSv1.")
    assert any(e.get("event") == "leave" and e["reason"] == "bye" for e in events)


async def test_wrong_password_and_other_tenant_over_wss(stack: Config) -> None:
    organizer_conn = await WsSipConnection.open(stack)
    organizer = ConferenceDialog(organizer_conn, CONF,  # type: ignore[arg-type]
                                 "alice@contoso.example", USERS["alice@contoso.example"])
    await organizer.join()
    conn = await WsSipConnection.open(stack)
    wrong = ConferenceDialog(conn, CONF, "bob@contoso.example",  # type: ignore[arg-type]
                             "not-the-password")
    with pytest.raises(SipError) as err:
        await wrong.join()
    assert err.value.status == 401
    eve = ConferenceDialog(conn, CONF, "eve@fabrikam.example",  # type: ignore[arg-type]
                           USERS["eve@fabrikam.example"])
    with pytest.raises(SipError) as err:
        await eve.join()
    assert err.value.status == 403
    bob = ConferenceDialog(conn, CONF, "bob@contoso.example",  # type: ignore[arg-type]
                           USERS["bob@contoso.example"])
    assert (await bob.join()).role == "attendee"  # the same connection goes on
    assert await bob.leave() == 200
    assert await organizer.leave() == 200
    await conn.close()
    await organizer_conn.close()


async def test_lost_websocket_revokes_after_grace(stack: Config) -> None:
    conn = await WsSipConnection.open(stack)
    dialog = ConferenceDialog(conn, CONF, "alice@contoso.example",  # type: ignore[arg-type]
                              USERS["alice@contoso.example"])
    result = await dialog.join()
    await conn.close()  # no BYE: the orphaned dialog ends after the leave grace
    for _ in range(100):
        status = await items_status(stack, result.webconf_url, result.conference, result.cookie)
        if status == 401:
            break
        await asyncio.sleep(0.2)
    assert status == 401


async def test_browser_stacks_are_offered_md5_alone(stack: Config) -> None:
    """SIP.js and JsSIP answer only the first challenge, and only MD5 (docs/protocol.md
    §10.1): their User-Agent gets one MD5 challenge; others get SHA-256 first."""
    conn = await WsSipConnection.open(stack, origin=stack.public_url)
    try:
        for agent, expected in (("SIP.js/0.21.2", ["MD5"]), ("webconf-web/0.1", ["MD5"]),
                                ("some-phone/1.0", ["SHA-256", "MD5"])):
            dialog = ConferenceDialog(conn, CONF, "bob@contoso.example",  # type: ignore[arg-type]
                                      "x", user_agent=agent)
            data, _ = dialog._request("INVITE")
            conn.send(data)
            resp = await conn.response(dialog.call_id)
            assert resp.status == 401
            algorithms = [v.split("algorithm=")[1].split(",")[0].strip('"')
                          for v in resp.headers.get_fields("WWW-Authenticate")]
            assert algorithms == expected, agent
    finally:
        await conn.close()
