"""The focus's persistent link to the WCS (issue 11; docs/protocol.md §7.3): internal
operations pipelined over one WebSocket on the internal mTLS listener, HTTP the fallback.

Real WCS (in-process, or `webconf serve` processes with a real focus), real TLS, real
sockets; a fake link server only where a real WCS cannot misbehave on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from clients.sip import ConferenceDialog, SipConnection
from conferencing.api.link import MAX_FRAME_BYTES, MAX_IN_FLIGHT, MAX_OPS_PER_FRAME
from conferencing.app import WcsServer
from focus.directory import Directory
from focus.wcs_client import WcsClient, WcsRefused, WcsUnavailable
from focus.wcs_link import LINK_PATH
from webconf.deploy import pki, tls
from webconf.deploy.config import Config, load_config
from webconf.deploy.init import init_deployment
from webconf.deploy.local import ServeProcess, free_port
from webconf.retry import Backoff

from .conftest import TENANTS, Wcs, running_wcs, wait_for
from .tcp_relay import TcpRelay
from .test_internal_identity import cert_without_eku, client_ctx, deployment_ca

ALICE = "alice@contoso.example"
CONTOSO = "contoso.example"
TIMEOUT = 10.0


# -- helpers ---------------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def linked(cfg: Config) -> AsyncIterator[WcsClient]:
    """The focus's WCS client of `cfg`, its link up."""
    client = WcsClient(cfg)
    try:
        await client.start_link(wait=TIMEOUT)
        assert client.link is not None and client.link.up
        yield client
    finally:
        await client.close()


def logged(caplog: pytest.LogCaptureFixture, logger: str, event: str) -> list[dict[str, Any]]:
    out = []
    for record in caplog.records:
        if record.name == logger and record.getMessage().startswith("{"):
            data = json.loads(record.getMessage())
            if data.get("event") == event:
                out.append(data)
    return out


def http_routes(caplog: pytest.LogCaptureFixture) -> list[str]:
    """`METHOD route` of every request the WCS served over HTTP."""
    return [f"{e['method']} {e['route']}" for e in logged(caplog, "webconf.wcs.http", "http")]


def over_http(routes: list[str]) -> list[str]:
    """The calls among `routes` that the link carries (admit, revoke, the lease)."""
    return [r for r in routes if "/participants" in r or "/focus-nodes/" in r]


async def items_status(wcs: Wcs, conference: str, cookie: str) -> int:
    async with wcs.http.get(f"{wcs.url}/v1/conferences/{conference}/items",
                            headers={"Authorization": f"Bearer {cookie}"}) as resp:
        return resp.status


async def raw_link(wcs: Wcs) -> aiohttp.ClientWebSocketResponse:
    """A link opened by hand, with the focus's certificate (the WCS's test client)."""
    return await asyncio.wait_for(wcs.internal.ws_connect(
        f"{wcs.internal_url}{LINK_PATH}", heartbeat=None, max_msg_size=0), TIMEOUT)


async def results(ws: aiohttp.ClientWebSocketResponse, count: int) -> dict[int, dict[str, Any]]:
    """Read result frames until `count` results arrived; by id."""
    out: dict[int, dict[str, Any]] = {}
    while len(out) < count:
        msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
        assert msg.type is aiohttp.WSMsgType.TEXT, msg
        frame = json.loads(msg.data)
        assert isinstance(frame, list) and 1 <= len(frame) <= MAX_OPS_PER_FRAME
        for result in frame:
            assert result["id"] not in out
            out[result["id"]] = result
    return out


async def closed_with(ws: aiohttp.ClientWebSocketResponse, *, clean: bool = True) -> int:
    """The code of the WCS's close frame; with `clean`, the closing handshake completed."""
    msg = await asyncio.wait_for(ws.receive(), TIMEOUT)
    assert msg.type is aiohttp.WSMsgType.CLOSE, msg
    if clean:
        assert ws.close_code == msg.data
    return int(msg.data)


# -- the focus's client over the link ----------------------------------------------------------

async def test_operations_over_the_link_answer_as_http_does(
        wcs: Wcs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with linked(wcs.cfg) as client:
        organizer = await client.admit("L7Q2", tenant=CONTOSO, organizer=ALICE, user=ALICE)
        conf = organizer.conference
        assert organizer.role == "organizer" and conf != "L7Q2"
        assert organizer.webconf_url == wcs.cfg.public_url
        bob = await client.admit("L7Q2", tenant=CONTOSO, organizer=ALICE,
                                 user="bob@contoso.example", role="presenter")
        assert bob.role == "presenter" and bob.conference == conf
        assert await items_status(wcs, conf, bob.cookie) == 200

        refusals = [  # (uri_id, tenant, organizer, user, role), status, code
            (("L7Q2", "fabrikam.example", ALICE, "eve@fabrikam.example", "attendee"),
             403, "forbidden"),
            (("NOPE", CONTOSO, ALICE, "bob@contoso.example", "attendee"), 404, "not_found"),
            (("L7Q2", CONTOSO, ALICE, "bob@contoso.example", "emperor"), 400, "bad_request"),
            (("L7Q2", "evil.invalid", "mallory@evil.invalid", "mallory@evil.invalid",
              "attendee"), 403, "unknown_tenant"),
        ]
        for (uri_id, tenant, org, user, role), status, code in refusals:
            with pytest.raises(WcsRefused) as refused:
                await client.admit(uri_id, tenant=tenant, organizer=org, user=user, role=role)
            assert (refused.value.status, refused.value.code) == (status, code)
            # ... exactly what the HTTP route answers for the same request
            async with wcs.internal.post(
                    f"{wcs.internal_url}/internal/v1/conferences/{uri_id}/participants",
                    json={"tenant": tenant, "organizer": org, "user": user,
                          "role": role}) as resp:
                body = await resp.json()
                assert (resp.status, body["error"]) == (status, {
                    "code": refused.value.code, "message": refused.value.message})

        assert await client.revoke(conf, bob.participant) is True
        assert await items_status(wcs, conf, bob.cookie) == 401
        assert await client.revoke(conf, bob.participant) is True  # idempotent
        assert await client.revoke(conf, "no-such-participant") is False
        assert await client.revoke("OTHER", organizer.participant) is False
        await client.heartbeat()
        await client.release()
        await client.release()  # an unknown lease is gone already
        assert client.link is not None and client.link.opened == 1
        link_routes = over_http(http_routes(caplog))
    # The refusals' HTTP twins were the only admits over HTTP; the client sent none.
    assert link_routes == ["POST /internal/v1/conferences/{uri_id}/participants"] * 4
    opened = logged(caplog, "webconf.wcs.link", "link.open")
    assert len(opened) == 1
    await wait_for(lambda: logged(caplog, "webconf.wcs.link", "link.closed"), TIMEOUT)
    (closed,) = logged(caplog, "webconf.wcs.link", "link.closed")
    assert closed["ops"] == 13  # 6 admits, 4 revokes, 1 heartbeat, 2 releases
    assert logged(caplog, "webconf.focus.link", "wcs_link.up")[0]["opened"] == 1
    for cookie in (organizer.cookie, bob.cookie):
        assert cookie not in caplog.text


async def test_200_concurrent_admits_share_one_link(
        wcs: Wcs, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with linked(wcs.cfg) as client:
        organizer = await client.admit("BURST", tenant=CONTOSO, organizer=ALICE, user=ALICE)
        admissions = await asyncio.gather(*(
            client.admit("BURST", tenant=CONTOSO, organizer=ALICE,
                         user=f"u{i}@contoso.example") for i in range(200)))
        assert {a.conference for a in admissions} == {organizer.conference}
        pids = {a.participant for a in admissions} | {organizer.participant}
        assert len(pids) == 201
        for a in admissions[::50]:
            assert await items_status(wcs, a.conference, a.cookie) == 200
        assert client.link is not None and client.link.opened == 1
    assert over_http(http_routes(caplog)) == []
    assert len(logged(caplog, "webconf.wcs.link", "link.open")) == 1


async def test_revoke_over_the_link_closes_the_channels(wcs: Wcs) -> None:
    async with linked(wcs.cfg) as client:
        alice = await client.admit("REV1", tenant=CONTOSO, organizer=ALICE, user=ALICE)
        bob = await client.admit("REV1", tenant=CONTOSO, organizer=ALICE,
                                 user="bob@contoso.example")
        url = (f"{wcs.url.replace('https://', 'wss://', 1)}/v1/conferences/"
               f"{bob.conference}/channel")
        async with wcs.http.ws_connect(url, headers={"Authorization": f"Bearer {bob.cookie}"},
                                       heartbeat=None) as ws:
            welcome = await asyncio.wait_for(ws.receive_json(), TIMEOUT)
            assert welcome["type"] == "welcome"
            assert await client.revoke(bob.conference, bob.participant) is True
            revoked = await asyncio.wait_for(ws.receive_json(), TIMEOUT)
            assert revoked["type"] == "revoked"
            assert await closed_with(ws) == 1008
        assert await items_status(wcs, alice.conference, alice.cookie) == 200


async def test_a_wcs_restart_falls_back_to_http_then_relinks(
        deployment: Config, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    cfg = deployment
    cfg.wcs.https_port = 0
    cfg.focus.wcs_timeout_seconds = 3.0

    async def start_wcs() -> WcsServer:
        server = WcsServer(load_config(cfg.base_dir))  # the same fixed internal port
        server.cfg.wcs.https_port = 0
        server.cfg.wcs.shutdown_grace_seconds = 2.0  # its drain counts the open link
        await server.start()
        return server

    server = await start_wcs()
    client = WcsClient(cfg)
    try:
        await client.start_link(wait=TIMEOUT)
        link = client.link
        assert link is not None and link.up
        # A fixed, slow reconnect, so that the fallback below is seen before the relink.
        link._backoff = Backoff(initial=4.0, maximum=4.0, jitter=False)
        alice = await client.admit("RS1", tenant=CONTOSO, organizer=ALICE, user=ALICE)

        await server.stop()  # its link closes: 1001
        await wait_for(lambda: not link.up, TIMEOUT)
        started = time.monotonic()
        with pytest.raises(WcsUnavailable):  # over HTTP, refused at once: no waiting
            await client.admit("RS1", tenant=CONTOSO, organizer=ALICE,
                               user="bob@contoso.example")
        assert time.monotonic() - started < 2.0
        down = logged(caplog, "webconf.focus.link", "wcs_link.down")
        assert len(down) == 1

        http_before = len(over_http(http_routes(caplog)))
        server = await start_wcs()
        assert not link.up
        bob = await client.admit("RS1", tenant=CONTOSO, organizer=ALICE,
                                 user="bob@contoso.example")  # the fallback: HTTP
        assert bob.conference == alice.conference
        assert len(over_http(http_routes(caplog))) == http_before + 1

        await wait_for(lambda: link.up, TIMEOUT)  # the link comes back by itself
        assert link.opened == 2
        carol = await client.admit("RS1", tenant=CONTOSO, organizer=ALICE,
                                   user="carol@contoso.example")
        assert await client.revoke(carol.conference, carol.participant) is True
        assert len(over_http(http_routes(caplog))) == http_before + 1  # over the link again
        up = logged(caplog, "webconf.focus.link", "wcs_link.up")
        assert len(up) == 2 and "outage_seconds" in up[1]
    finally:
        await client.close()
        await server.stop()


# -- the WCS end, by hand: framing, bounds, hostile input --------------------------------------

async def test_bad_operations_get_their_own_400_and_the_link_stays(wcs: Wcs) -> None:
    ws = await raw_link(wcs)
    try:
        admit = {"op": "admit", "uri_id": "RAW1", "tenant": CONTOSO, "organizer": ALICE,
                 "user": ALICE}
        await ws.send_str(json.dumps([
            {"id": 1, "op": "frobnicate"},
            {"id": 2, "op": "admit", "uri_id": "RAW1", "tenant": CONTOSO},  # no users
            {"id": 3, **admit, "uri_id": "../x"},
            {"id": 4, **admit, "role": 7},
            {"id": 5, "op": "revoke", "conference": ["x"], "participant": "p"},
            {"id": 6, "op": "heartbeat", "name": "bad name"},
            {"id": 7, "op": "release"},
            {"id": 8, "op": "heartbeat", "name": "node-a.AAAAAAAA"},
            {"id": 9, **admit, "focus_node": "node-a.AAAAAAAA"},
            {"id": 2**53 - 1, "op": "revoke", "conference": "RAW1", "participant": "nobody"},
        ]))
        got = await results(ws, 10)
        for op_id in range(1, 8):
            assert got[op_id]["status"] == 400, got[op_id]
            assert got[op_id]["error"]["code"] == "bad_request"
        assert got[8] == {"id": 8, "status": 204}
        assert got[9]["status"] == 201
        assert set(got[9]["body"]) == {"conference", "participant", "role", "cookie",
                                       "expires_at", "webconf_url"}
        assert got[2**53 - 1]["status"] == 404
        # the link is still there, and ids may be used again once answered
        await ws.send_str(json.dumps([{"id": 1, "op": "heartbeat", "name": "node-a.AAAAAAAA"}]))
        assert (await results(ws, 1))[1]["status"] == 204
    finally:
        await ws.close()


async def test_a_full_frame_and_more_than_in_flight_are_answered(wcs: Wcs) -> None:
    """512 operations fit one frame; 20 of them at once exceed the in-flight bound: the
    WCS stops reading for a while (backpressure) and answers every one, never an error."""
    ws = await raw_link(wcs)
    try:
        frames = 20
        assert frames * MAX_OPS_PER_FRAME > 2 * MAX_IN_FLIGHT
        for f in range(frames):
            await ws.send_str(json.dumps([{"id": f * MAX_OPS_PER_FRAME + i, "op": "nop"}
                                          for i in range(MAX_OPS_PER_FRAME)]))
        got = await results(ws, frames * MAX_OPS_PER_FRAME)
        assert {r["status"] for r in got.values()} == {400}
        await ws.send_str(json.dumps([{"id": 0, "op": "heartbeat", "name": "n.AAAAAAAA"}]))
        assert (await results(ws, 1))[0]["status"] == 204
    finally:
        await ws.close()


@pytest.mark.parametrize("frame", [
    pytest.param(b'[{"id": 1, "op": "heartbeat", "name": "n.AAAAAAAA"}]', id="binary"),
    pytest.param('[{"id": 1, "op": ', id="bad-json"),
    pytest.param('{"id": 1, "op": "heartbeat", "name": "n.AAAAAAAA"}', id="not-an-array"),
    pytest.param("[]", id="empty"),
    pytest.param('[{"op": "heartbeat", "name": "n.AAAAAAAA"}]', id="no-id"),
    pytest.param('[{"id": true, "op": "nop"}]', id="bool-id"),
    pytest.param('[{"id": -1, "op": "nop"}]', id="negative-id"),
    pytest.param('[{"id": 1.5, "op": "nop"}]', id="float-id"),
    pytest.param(f'[{{"id": {2**53}, "op": "nop"}}]', id="id-too-big"),
    pytest.param('[{"id": 1, "op": "nop"}, {"id": 1, "op": "nop"}]', id="duplicate-id"),
    pytest.param('["admit"]', id="not-an-object"),
    pytest.param('[{"id": 1, "op": "nop", "x": "\\ud800"}]', id="lone-surrogate"),
    pytest.param("[" * 40 + "]" * 40, id="too-deep"),
    pytest.param(json.dumps([{"id": i, "op": "nop"} for i in range(10_000)],
                            separators=(",", ":")), id="10k-ops"),
])
async def test_a_malformed_frame_closes_the_link_1008(wcs: Wcs, frame: str | bytes) -> None:
    ws = await raw_link(wcs)
    if isinstance(frame, bytes):
        await ws.send_bytes(frame)
    else:
        assert len(frame.encode()) <= MAX_FRAME_BYTES
        await ws.send_str(frame)
    assert await closed_with(ws) == 1008
    await wcs_still_serves(wcs)


async def test_a_frame_over_256_kib_closes_the_link_1009(wcs: Wcs) -> None:
    ws = await raw_link(wcs)
    filler = "x" * (MAX_FRAME_BYTES - 40)
    await ws.send_str(json.dumps([{"id": 1, "op": "nop", "pad": filler}]))  # just fits
    assert (await results(ws, 1))[1]["status"] == 400
    await ws.send_str(json.dumps([{"id": 2, "op": "nop", "pad": filler + "x" * 100}]))
    # aiohttp closes at once, the rest of the frame unread: the handshake may not complete
    assert await closed_with(ws, clean=False) == 1009
    await wcs_still_serves(wcs)


async def wcs_still_serves(wcs: Wcs) -> None:
    ws = await raw_link(wcs)
    try:
        await ws.send_str(json.dumps([{"id": 1, "op": "heartbeat", "name": "n.AAAAAAAA"}]))
        assert (await results(ws, 1))[1]["status"] == 204
    finally:
        await ws.close()


async def test_a_plain_get_is_a_400(wcs: Wcs) -> None:
    async with wcs.internal.get(f"{wcs.internal_url}{LINK_PATH}") as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_request"


@pytest.mark.parametrize("kind", ["other-name", "no-eku"])
async def test_a_certificate_other_than_the_focus_one_is_refused(
        wcs: Wcs, tmp_path: Path, kind: str) -> None:
    if kind == "other-name":
        ca_pem, ca_key = deployment_ca(wcs.cfg)
        pair = pki.issue_client_cert(ca_pem, ca_key, "mallory")
    else:
        pair = cert_without_eku(wcs.cfg, pki.FOCUS_CLIENT_CN)
    ctx = client_ctx(wcs.cfg, tmp_path, pair)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(f"{wcs.internal_url}{LINK_PATH}")
        assert refused.value.status == 403
    # ... while the focus's own certificate gets its link
    ws = await raw_link(wcs)
    await ws.close()


# -- a link that goes wrong under the client ------------------------------------------------

@contextlib.asynccontextmanager
async def fake_link_server(cfg: Config, *, answer: bool) -> AsyncIterator[list[str]]:
    """An mTLS server with the WCS's certificate: its link reads operations and never
    answers; on the first frame it drops the link unless `answer` is False. Its HTTP
    routes answer a revoke 204. Yields the HTTP requests it served."""
    served: list[str] = []

    async def link(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is aiohttp.WSMsgType.TEXT and answer:
                request.transport.abort()  # type: ignore[union-attr]
                break
        return ws

    async def other(request: web.Request) -> web.StreamResponse:
        served.append(f"{request.method} {request.path}")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_get(LINK_PATH, link)
    app.router.add_route("*", "/{tail:.*}", other)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", cfg.wcs.internal_port,
                       ssl_context=tls.server_context(cfg, "wcs", require_client_cert=True))
    await site.start()
    try:
        yield served
    finally:
        await runner.cleanup()


async def test_no_answer_on_the_link_times_out(deployment: Config) -> None:
    deployment.focus.wcs_timeout_seconds = 1.0
    async with fake_link_server(deployment, answer=False), linked(deployment) as client:
        started = time.monotonic()
        with pytest.raises(WcsUnavailable) as info:
            await client.admit("T1", tenant=CONTOSO, organizer=ALICE, user=ALICE)
        assert "no answer" in str(info.value)
        assert time.monotonic() - started < 1.0 + 1.0


async def test_each_call_times_out_on_its_own_deadline(deployment: Config) -> None:
    """The link keeps one timer for all its calls (focus/wcs_link.py `_expire_at`): a short
    call made after long ones still fails at its own deadline, each pending call fails
    once, and a call answered before its deadline is untouched by the sweep."""
    async with fake_link_server(deployment, answer=False), linked(deployment) as client:
        link = client.link
        assert link is not None
        slow = [asyncio.ensure_future(link.call({"op": "heartbeat", "name": "n"}, 30.0))
                for _ in range(3)]
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await link.call({"op": "heartbeat", "name": "n"}, 0.3)
        waited = time.monotonic() - started
        assert 0.3 <= waited < 0.3 + 0.5, waited
        medium = [asyncio.ensure_future(link.call({"op": "heartbeat", "name": "n"}, 0.2))
                  for _ in range(50)]
        done = await asyncio.gather(*medium, return_exceptions=True)
        assert all(isinstance(r, TimeoutError) for r in done)
        assert not any(t.done() for t in slow)  # their deadline is far off
        for t in slow:
            t.cancel()
        await asyncio.gather(*slow, return_exceptions=True)
        assert not link._pending


async def test_a_revoke_lost_with_the_link_is_retried_over_http(deployment: Config) -> None:
    async with fake_link_server(deployment, answer=True) as served, \
            linked(deployment) as client:
        link = client.link
        assert link is not None
        link._backoff = Backoff(initial=30.0, maximum=30.0, jitter=False)  # stays down
        assert await client.revoke("CONF1", "p1") is True
        assert served == ["DELETE /internal/v1/conferences/CONF1/participants/p1"]
        assert not link.up


# -- a real focus --------------------------------------------------------------------------------

USERS = {ALICE: "alice-pw", "bob@contoso.example": "bob-pw"}
CONF = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:LNK1"


@pytest.fixture
async def stack(deployment: Config, serve: ServeProcess) -> AsyncIterator[Config]:
    directory = await Directory.for_deployment(deployment)
    try:
        for address, password in USERS.items():
            await directory.add_user(address, password)
    finally:
        await directory.close()
    await asyncio.to_thread(serve.start)
    yield deployment


def log_events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


async def test_joins_through_a_real_focus_use_the_link(stack: Config) -> None:
    cfg = stack
    await wait_for(lambda: any(e.get("event") == "wcs_link.up"
                               for e in log_events(cfg.log_dir / "focus.log")), TIMEOUT)
    joined = []
    for address in USERS:
        conn = await SipConnection.open("127.0.0.1", cfg.focus.sip_port,
                                        ssl_context=tls.client_context(cfg),
                                        server_hostname=CONTOSO)
        dialog = ConferenceDialog(conn, CONF, address, USERS[address])
        joined.append((conn, dialog, await dialog.join()))
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg))) as http:
        async def status(result: Any) -> int:
            async with http.get(f"{result.webconf_url}/v1/conferences/{result.conference}"
                                "/items", headers={"Authorization": f"Bearer {result.cookie}"}
                                ) as resp:
                return resp.status

        for _, _, result in joined:
            assert await status(result) == 200
        for conn, dialog, result in joined:
            assert await dialog.leave() == 200  # the focus revokes at the WCS after the 200
            deadline = time.monotonic() + TIMEOUT
            while await status(result) != 401:
                assert time.monotonic() < deadline, "the cookie still works after a BYE"
                await asyncio.sleep(0.05)
            await conn.close()
    events = log_events(cfg.log_dir / "wcs.log")
    assert [e for e in events if e.get("event") == "http"
            and "/participants" in str(e.get("route"))] == []
    assert len([e for e in events if e.get("event") == "link.open"]) == 1
    focus_log = (cfg.log_dir / "focus.log").read_text()
    for _, _, result in joined:
        assert result.cookie not in focus_log


# -- the database out of reach -------------------------------------------------------------------

async def test_a_database_outage_gives_503_results(tmp_path: Path, pg_url: str,
                                                   relay: TcpRelay) -> None:
    cfg = init_deployment(tmp_path / "dep", https_port=free_port(), internal_port=free_port(),
                          sip_port=free_port(), tenants=TENANTS, database=pg_url)
    cfg.store.url = relay.url_for(pg_url)
    async with running_wcs(cfg) as wcs, linked(cfg) as client:
        await client.admit("DB1", tenant=CONTOSO, organizer=ALICE, user=ALICE)
        await asyncio.to_thread(relay.cut)
        with pytest.raises(WcsUnavailable) as info:
            await client.admit("DB1", tenant=CONTOSO, organizer=ALICE,
                               user="bob@contoso.example")
        assert info.value.status == 503
        ws = await raw_link(wcs)
        try:
            await ws.send_str(json.dumps([{"id": 1, "op": "heartbeat", "name": "n.AAAAAAAA"}]))
            got = (await results(ws, 1))[1]
            assert got["status"] == 503 and got["error"]["code"] == "unavailable"
        finally:
            await ws.close()
        await asyncio.to_thread(relay.reopen)
        bob = await client.admit("DB1", tenant=CONTOSO, organizer=ALICE,
                                 user="bob@contoso.example")
        assert bob.role == "attendee"
        assert client.link is not None and client.link.opened == 1  # the link stayed up
