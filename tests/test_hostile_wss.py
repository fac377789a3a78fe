"""Hostile input against the focus's SIP-over-WebSocket listener (RFC 7118), real processes
over real TLS, like tests/test_hostile_sip.py: every case checks the answer, then the
autouse `wss_stays_up` fixture checks that the focus still answers OPTIONS over a fresh
WebSocket and logged no unhandled exception (docs/protocol.md §10).

Sources: 127.0.0.1 health checks and users, 127.0.0.2 the per-source cap, 127.0.0.3 the
flood, 127.0.0.4 slow handshakes.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from clients.sip import ConferenceDialog
from webconf.deploy import tls
from webconf.deploy.init import init_deployment
from webconf.sip.message import Response, parse_message

from .conftest import TENANTS, ServeProcess, free_port
from .test_hostile_sip import (
    HEADER_TIMEOUT,
    SLACK,
    USERS,
    Stack,
    add_users,
    conference_uri,
    crashes,
    raise_fd_limit,
    stop_stack,
)
from .ws_sip import WsSipConnection

PER_SOURCE = 20
IDLE = 4.0
MAX_MESSAGE = 65536


def request(method: str = "OPTIONS", *, call_id: str | None = None, extra: str = "",
            body: bytes = b"", content_length: str | None = None) -> bytes:
    call_id = call_id or secrets.token_hex(8)
    length = str(len(body)) if content_length is None else content_length
    return (f"{method} sip:focus@contoso.example SIP/2.0\r\n"
            f"Via: SIP/2.0/WSS {secrets.token_hex(4)}.invalid;branch=z9hG4bK"
            f"{secrets.token_hex(8)}\r\nMax-Forwards: 70\r\n"
            f"From: <sip:bob@contoso.example>;tag={secrets.token_hex(4)}\r\n"
            f"To: <sip:focus@contoso.example>\r\nCall-ID: {call_id}\r\n"
            f"CSeq: 1 {method}\r\n{extra}Content-Length: {length}\r\n\r\n").encode() + body


async def answer(conn: WsSipConnection, timeout: float = 10.0) -> Response:
    msg = await conn.next_frame(timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    parsed = parse_message(msg.data.encode())
    assert isinstance(parsed, Response)
    return parsed


async def options_ok(cfg, **kwargs) -> None:  # type: ignore[no-untyped-def]
    conn = await WsSipConnection.open(cfg, **kwargs)
    try:
        await conn.send_frame(request().decode())
        assert (await answer(conn)).status == 200
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    raise_fd_limit()
    base: Path = tmp_path_factory.mktemp("hostile-wss") / "dep"
    cfg = init_deployment(base, https_port=free_port(), internal_port=free_port(),
                          sip_port=free_port(), wss_port=free_port(), tenants=TENANTS)
    asyncio.run(add_users(cfg))
    proc = ServeProcess(cfg.base_dir, {
        "WEBCONF_FOCUS_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
        "WEBCONF_FOCUS_IDLE_TIMEOUT_SECONDS": str(IDLE),
        "WEBCONF_FOCUS_MAX_CONNECTIONS_PER_SOURCE": str(PER_SOURCE),
        "WEBCONF_FOCUS_LEAVE_GRACE_SECONDS": "1"})
    proc.start()
    running = Stack(cfg, proc)
    try:
        yield running
    finally:
        stop_stack(running)


@pytest.fixture(autouse=True)
def wss_stays_up(stack: Stack) -> Iterator[None]:
    since = stack.log_size()
    yield
    assert stack.proc.proc is not None and stack.proc.proc.poll() is None, "serve exited"
    asyncio.run(options_ok(stack.cfg))
    bad = [e for e in crashes(stack.log_events(since))]
    assert not bad, f"the focus logged unhandled exceptions: {bad[:3]}"


async def handshake_status(stack: Stack, **kwargs) -> int:  # type: ignore[no-untyped-def]
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await options_ok(stack.cfg, **kwargs)
    return err.value.status


async def test_subprotocol_required(stack: Stack) -> None:
    assert await handshake_status(stack, protocols=("xmpp",)) == 400
    assert await handshake_status(stack, protocols=()) == 400
    await options_ok(stack.cfg, protocols=("xmpp", "sip"))  # sip among others: chosen


async def test_origin_checked(stack: Stack) -> None:
    cfg = stack.cfg
    await options_ok(cfg, origin=cfg.public_url)
    for bad in ("https://evil.example", "null", "https://127.0.0.1:1",
                cfg.public_url.replace("https", "http")):
        assert await handshake_status(stack, origin=bad) == 403, bad
    await options_ok(cfg)  # no Origin: not a browser page (the Digest still applies)


async def test_oversized_message_closes(stack: Stack) -> None:
    conn = await WsSipConnection.open(stack.cfg)
    try:
        big = request(extra=f"X-Pad: {'a' * MAX_MESSAGE}\r\n").decode()
        await conn.send_frame(big)
        msg = await conn.next_frame()
        assert msg.type is aiohttp.WSMsgType.CLOSED or conn.closed
        assert conn.ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG
    finally:
        await conn.close()


async def test_malformed_sip_gets_400_and_the_connection_goes_on(stack: Stack) -> None:
    conn = await WsSipConnection.open(stack.cfg)
    try:
        bad = [request(extra="Max-Forwards: 70\r\n"),  # a duplicate single-valued header
               request(content_length="100", body=b"short"),  # truncated body
               request().replace(b"\r\n\r\n", b"\r\n"),  # no blank line
               request(content_length="x")]
        for data in bad:
            await conn.send_frame(data.decode())
            assert (await answer(conn)).status == 400, data
        await conn.send_frame("\x00garbage that is no SIP at all")  # nothing to answer
        await conn.send_frame(request().decode())
        assert (await answer(conn)).status == 200
        # A body beyond Content-Length is cut (the datagram rule, RFC 3261 §18.3).
        await conn.send_frame(request(content_length="0", body=b"extra").decode())
        assert (await answer(conn)).status == 200
        await conn.send_frame("\r\n\r\n")  # keep-alive ping (SIP.js): CRLF pong
        pong = await conn.next_frame()
        assert pong.type is aiohttp.WSMsgType.TEXT and pong.data == "\r\n"
    finally:
        await conn.close()


async def test_binary_messages(stack: Stack) -> None:
    conn = await WsSipConnection.open(stack.cfg)
    try:
        await conn.send_frame(secrets.token_bytes(512))  # junk: no answer, no close
        await conn.send_frame(request())  # RFC 7118 §5.1: binary frames may carry SIP
        assert (await answer(conn)).status == 200
        assert not conn.closed
    finally:
        await conn.close()


async def test_slow_upgrade_and_dead_tls_handshake_are_cut(stack: Stack) -> None:
    port = stack.cfg.focus.wss_port
    ctx = tls.client_context(stack.cfg)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                   local_addr=("127.0.0.4", 0))
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT + SLACK + 5)
    assert data == b"" and time.monotonic() - started < HEADER_TIMEOUT + SLACK
    writer.close()
    raw_reader, raw_writer = await asyncio.open_connection(  # TCP only: no ClientHello
        "127.0.0.1", port, local_addr=("127.0.0.4", 0))
    started = time.monotonic()
    assert await asyncio.wait_for(raw_reader.read(), HEADER_TIMEOUT + SLACK + 5) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT + SLACK
    raw_writer.close()


async def test_idle_connection_closed(stack: Stack) -> None:
    conn = await WsSipConnection.open(stack.cfg)
    try:
        msg = await conn.next_frame(IDLE + SLACK + 5)
        assert msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSE)
    finally:
        await conn.close()


async def test_per_source_cap(stack: Stack) -> None:
    source = ("127.0.0.2", 0)
    conns = [await WsSipConnection.open(stack.cfg, local_addr=source)
             for _ in range(PER_SOURCE)]
    try:
        with pytest.raises((aiohttp.ClientError, ConnectionError, ssl.SSLError)):
            extra = await WsSipConnection.open(stack.cfg, local_addr=source, timeout=5)
            await extra.close()
        await options_ok(stack.cfg)  # another source is not affected
    finally:
        for conn in conns:
            await conn.close()
    await asyncio.sleep(0.5)
    await options_ok(stack.cfg, local_addr=source)  # the slots came back


async def test_flood_does_not_starve_a_join(stack: Stack) -> None:
    flooder = await WsSipConnection.open(stack.cfg, local_addr=("127.0.0.3", 0))
    sent = 3000

    async def flood() -> None:
        for _ in range(sent):
            await flooder.send_frame(request().decode())

    try:
        task = asyncio.create_task(flood())
        conn = await WsSipConnection.open(stack.cfg)
        dialog = ConferenceDialog(conn, conference_uri("FLD1"),  # type: ignore[arg-type]
                                  "alice@contoso.example", USERS["alice@contoso.example"])
        assert (await dialog.join()).role == "organizer"
        assert await dialog.leave() == 200
        await conn.close()
        await task
        answered = 0
        while answered < sent:
            resp = await answer(flooder, 30)
            assert resp.status == 200
            answered += 1
    finally:
        await flooder.close()
