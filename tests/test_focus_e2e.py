"""The focus end to end: `webconf serve` (focus + WCS as real processes), SIP over real TLS."""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import aiohttp
import pytest

from clients.sip import ConferenceDialog, SipConnection, SipError
from focus.directory import Directory
from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.protocol import valid_id
from webconf.sip.framing import NeedData, SipFramer
from webconf.sip.message import Response

from .conftest import ServeProcess

CONF = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:E2E1"
USERS = {"alice@contoso.example": "alice-pw", "bob@contoso.example": "bob-pw",
         "eve@fabrikam.example": "eve-pw"}


async def add_users(cfg: Config) -> None:
    directory = await Directory.for_deployment(cfg)
    try:
        for address, password in USERS.items():
            await directory.add_user(address, password)
    finally:
        await directory.close()


def tls_context(cfg: Config, version: str) -> ssl.SSLContext:
    ctx = tls.client_context(cfg)
    if version == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


@pytest.fixture
async def stack(deployment: Config, serve: ServeProcess):
    await add_users(deployment)
    serve.env["WEBCONF_FOCUS_LEAVE_GRACE_SECONDS"] = "1"
    await asyncio.to_thread(serve.start)
    yield deployment


async def connect(cfg: Config, version: str = "1.3") -> SipConnection:
    return await SipConnection.open("127.0.0.1", cfg.focus.sip_port,
                                    ssl_context=tls_context(cfg, version),
                                    server_hostname="contoso.example")


async def join(cfg: Config, address: str, password: str | None = None, *, uri: str = CONF,
               version: str = "1.3") -> tuple[SipConnection, ConferenceDialog]:
    conn = await connect(cfg, version)
    dialog = ConferenceDialog(conn, uri, address, password or USERS[address])
    return conn, dialog


async def items_status(cfg: Config, result) -> int:
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg))) as http:
        async with http.get(f"{result.webconf_url}/v1/conferences/{result.conference}/items",
                            headers={"Authorization": f"Bearer {result.cookie}"}) as resp:
            return resp.status


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_join_channel_bye_revokes(stack: Config, version: str) -> None:
    conn, dialog = await join(stack, "alice@contoso.example", version=version)
    assert conn.tls_version == ("TLSv1.2" if version == "1.2" else "TLSv1.3")
    result = await dialog.join()
    # The join body names the conference by the WCS's public id (docs/protocol.md §2.1).
    assert result.role == "organizer" and valid_id(result.conference)
    assert result.conference != "E2E1"
    assert result.contact.endswith(";isfocus")
    assert f"127.0.0.1:{stack.focus.sip_port};transport=tls" in result.contact
    assert await items_status(stack, result) == 200
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(stack))) as http:
        ws_url = result.webconf_url.replace("https", "wss") + \
            f"/v1/conferences/{result.conference}/channel"
        async with http.ws_connect(ws_url, headers={
                "Authorization": f"Bearer {result.cookie}"}) as ws:
            welcome = await asyncio.wait_for(ws.receive_json(), 5)
            assert welcome["type"] == "welcome"
            started = time.monotonic()
            assert await dialog.leave() == 200
            revoked = await asyncio.wait_for(ws.receive_json(), 5)
            assert revoked["type"] == "revoked"
            msg = await asyncio.wait_for(ws.receive(), 5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert time.monotonic() - started < 1.5
    assert await items_status(stack, result) == 401
    await conn.close()
    log = (stack.log_dir / "focus.log").read_text()
    events = [json.loads(line) for line in log.splitlines()]
    assert any(e.get("event") == "join" and e["user"] == "alice@contoso.example"
               for e in events)
    assert any(e.get("event") == "leave" and e["reason"] == "bye" for e in events)
    assert result.cookie not in log
    assert "alice-pw" not in log


async def test_attendee_wrong_password_other_tenant_unknown_conference(stack: Config) -> None:
    conn, organizer = await join(stack, "alice@contoso.example")
    await organizer.join()
    conn2, bob = await join(stack, "bob@contoso.example")
    assert (await bob.join()).role == "attendee"
    conn3, wrong = await join(stack, "bob@contoso.example", "not-the-password")
    with pytest.raises(SipError) as err:
        await wrong.join()
    assert err.value.status == 401
    conn4, eve = await join(stack, "eve@fabrikam.example")
    with pytest.raises(SipError) as err:
        await eve.join()
    assert err.value.status == 403
    conn5, lost = await join(
        stack, "bob@contoso.example",
        uri="sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:NOPE")
    with pytest.raises(SipError) as err:
        await lost.join()
    assert err.value.status == 404
    for c in (conn, conn2, conn3, conn4, conn5):
        await c.close()


async def read_one(reader: asyncio.StreamReader, framer: SipFramer) -> Response:
    while True:
        event = framer.next_event()
        if not isinstance(event, NeedData):
            assert isinstance(event, Response), event
            return event
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "connection closed"
        framer.feed(data)


def options(branch: str, method: str = "OPTIONS", extra: str = "") -> bytes:
    return (f"{method} sip:focus@contoso.example SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS 127.0.0.1:5999;branch={branch}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:bob@contoso.example>;tag=a1\r\nTo: <sip:focus@contoso.example>\r\n"
            f"Call-ID: {branch}\r\nCSeq: 1 {method}\r\n{extra}Content-Length: 0\r\n\r\n"
            ).encode()


async def raw_connection(cfg: Config, version: str = "1.3"):
    return await asyncio.open_connection("127.0.0.1", cfg.focus.sip_port,
                                         ssl=tls_context(cfg, version),
                                         server_hostname="contoso.example")


@pytest.mark.parametrize("version", ["1.2", "1.3"])
async def test_options_unknown_method_pipelining_and_dripping(stack: Config,
                                                               version: str) -> None:
    reader, writer = await raw_connection(stack, version)
    framer = SipFramer()
    writer.write(options("b1") + options("b2", "MESSAGE"))  # two requests in one write
    first, second = await read_one(reader, framer), await read_one(reader, framer)
    assert first.status == 200 and "INVITE" in first.headers.get_all("Allow")
    assert second.status == 405 and "BYE" in second.headers.get_all("Allow")
    for byte in options("b3"):  # one byte per write
        writer.write(bytes([byte]))
        await writer.drain()
    assert (await read_one(reader, framer)).status == 200
    writer.write(b"\r\n\r\n")  # RFC 5626 keep-alive
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
    writer.write(options("b4", extra="Max-Forwards: 0\r\n".replace("Max", "X-Max")))
    assert (await read_one(reader, framer)).status == 200
    writer.close()


async def test_oversized_message_513_then_fresh_connection_works(stack: Config) -> None:
    reader, writer = await raw_connection(stack)
    framer = SipFramer()
    big = options("big", extra="X-Padding: " + "a" * 70_000 + "\r\n")
    writer.write(big)
    resp = await read_one(reader, framer)
    assert resp.status == 513
    assert await asyncio.wait_for(reader.read(), 5) == b""  # then the focus closes
    writer.close()
    reader, writer = await raw_connection(stack)
    writer.write(options("after"))
    assert (await read_one(reader, SipFramer())).status == 200
    writer.close()


@pytest.mark.parametrize("raw,status", [
    (options("mf", "INVITE").replace(b"Max-Forwards: 70", b"Max-Forwards: 0"), 483),
    (options("nocl").replace(b"Call-ID: nocl\r\n", b""), 400),
    (options("cseq").replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE"), 400),
    (options("bye", "BYE").replace(b"To: <sip:focus@contoso.example>",
                                   b"To: <sip:focus@contoso.example>;tag=x"), 481),
    (options("cancel", "CANCEL"), 481),
    (options("neg").replace(b"Content-Length: 0", b"Content-Length: -5"), 400),
    (options("huge").replace(b"Content-Length: 0", b"Content-Length: 99999999999"), 400),
    (options("nan").replace(b"Content-Length: 0", b"Content-Length: abc"), 400),
])
async def test_bad_requests_get_answers_and_server_survives(stack: Config, raw: bytes,
                                                           status: int) -> None:
    reader, writer = await raw_connection(stack)
    writer.write(raw)
    resp = await read_one(reader, SipFramer())
    assert resp.status == status
    writer.close()
    reader, writer = await raw_connection(stack)
    writer.write(options("alive"))
    assert (await read_one(reader, SipFramer())).status == 200
    writer.close()


async def test_plaintext_and_old_tls_refused(stack: Config) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", stack.focus.sip_port)
    writer.write(options("plain"))
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    assert b"SIP/2.0" not in data  # a TLS alert at most, then close
    writer.close()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        ctx.minimum_version = ssl.TLSVersion.TLSv1  # deprecated: refused on purpose
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except (ValueError, ssl.SSLError):
        pytest.skip("this OpenSSL cannot build a TLS 1.1 client")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection("127.0.0.1", stack.focus.sip_port, ssl=ctx)
    reader, writer = await raw_connection(stack)
    writer.write(options("still"))
    assert (await read_one(reader, SipFramer())).status == 200
    writer.close()


async def test_dropped_connection_leaves_after_grace(stack: Config) -> None:
    conn, dialog = await join(stack, "alice@contoso.example")
    result = await dialog.join()
    assert await items_status(stack, result) == 200
    conn.writer.transport.abort()  # no BYE
    await conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and await items_status(stack, result) == 200:
        await asyncio.sleep(0.2)
    assert await items_status(stack, result) == 401
    log = (stack.log_dir / "focus.log").read_text()
    assert '"reason": "connection lost"' in log



async def test_unreachable_wcs_gets_503_with_retry_after(deployment: Config) -> None:
    """A focus whose WCS is down answers 503 + Retry-After quickly, never hangs."""
    from focus.server import FocusServer
    from focus.wcs_client import WcsClient
    from webconf.deploy import keys

    from .conftest import free_port

    await add_users(deployment)
    deployment.wcs.internal_port = free_port()  # nothing listens there
    deployment.focus.sip_port = 0
    deployment.focus.wcs_timeout_seconds = 2.0
    directory = await Directory.for_deployment(deployment)
    wcs = WcsClient(deployment)
    server = FocusServer(deployment, directory, wcs, keys.load_nonce_secret(deployment))
    await server.start()
    try:
        conn, dialog = await join(deployment, "alice@contoso.example")
        started = time.monotonic()
        with pytest.raises(SipError) as err:
            await dialog.join()
        assert err.value.status == 503
        assert err.value.retry_after is not None and err.value.retry_after > 0
        assert time.monotonic() - started < 5
        await conn.close()
    finally:
        await server.stop()
        await wcs.close()
        await directory.close()
