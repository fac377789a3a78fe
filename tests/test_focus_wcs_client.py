"""The focus's WCS client (focus/wcs_client.py) against a real in-process WCS over mTLS,
against fake WCSes that fail in the ways a real one can, and against no WCS at all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from focus.wcs_client import Admission, WcsClient, WcsRefused, WcsUnavailable
from webconf.deploy import tls
from webconf.deploy.config import Config, load_config
from webconf.protocol import valid_id

from .conftest import Wcs, free_port

ALICE = "alice@contoso.example"
CONTOSO = "contoso.example"


@pytest.fixture
async def client(wcs: Wcs) -> AsyncIterator[WcsClient]:
    c = WcsClient(wcs.cfg)
    try:
        yield c
    finally:
        await c.close()


async def items_status(wcs: Wcs, admission: Admission) -> int:
    async with wcs.http.get(wcs.items_url(admission.conference),
                            headers={"Authorization": f"Bearer {admission.cookie}"}) as resp:
        return resp.status


async def test_admit_revoke_end(wcs: Wcs, client: WcsClient,
                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    organizer = await client.admit("K7Q2", tenant=CONTOSO, organizer=ALICE, user=ALICE)
    conf = organizer.conference  # the WCS's public id, not the URI's (docs/protocol.md §2.1)
    assert valid_id(conf) and conf != "K7Q2" and organizer.role == "organizer"
    assert organizer.webconf_url == wcs.cfg.public_url
    assert organizer.cookie.count(".") == 2 and organizer.participant
    assert organizer.expires_at.endswith("Z")
    assert organizer.cookie not in repr(organizer) and organizer.cookie not in str(organizer)
    assert organizer.to_json()["cookie"] == organizer.cookie

    bob = await client.admit("K7Q2", tenant=CONTOSO, organizer=ALICE,
                             user="bob@contoso.example")
    assert bob.role == "attendee" and bob.participant != organizer.participant
    assert bob.conference == conf
    carol = await client.admit("K7Q2", tenant=CONTOSO, organizer=ALICE,
                               user="carol@contoso.example", role="presenter")
    assert carol.role == "presenter"
    assert await items_status(wcs, bob) == 200  # the cookie works at the public API

    with pytest.raises(WcsRefused) as refused:
        await client.admit("K7Q2", tenant="fabrikam.example", organizer=ALICE,
                           user="eve@fabrikam.example")
    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    assert "tenant" in refused.value.message

    with pytest.raises(WcsRefused) as refused:
        await client.admit("NOPE", tenant=CONTOSO, organizer=ALICE, user="bob@contoso.example")
    assert (refused.value.status, refused.value.code) == (404, "not_found")

    with pytest.raises(WcsRefused) as refused:
        await client.admit("K7Q2", tenant=CONTOSO, organizer=ALICE, user="bob@contoso.example",
                           role="emperor")
    assert (refused.value.status, refused.value.code) == (400, "bad_request")

    with pytest.raises(WcsRefused) as refused:  # refused locally, never sent
        await client.admit("../x", tenant=CONTOSO, organizer=ALICE, user=ALICE)
    assert refused.value.status == 400

    assert await client.revoke(conf, bob.participant) is True
    assert await items_status(wcs, bob) == 401
    assert await client.revoke(conf, bob.participant) is True  # idempotent at the WCS
    assert await client.revoke(conf, "no-such-participant") is False
    assert await client.revoke("OTHER", carol.participant) is False

    assert await client.end(conf) is True
    assert await items_status(wcs, carol) == 401
    assert await client.end("NEVER-CREATED") is False
    with pytest.raises(WcsRefused) as refused:
        await client.admit("K7Q2", tenant=CONTOSO, organizer=ALICE, user="bob@contoso.example")
    assert refused.value.status == 404

    for cookie in (organizer.cookie, bob.cookie, carol.cookie):
        assert cookie not in caplog.text


async def test_one_pooled_session(wcs: Wcs, client: WcsClient) -> None:
    admissions = await asyncio.gather(*(
        client.admit(f"C{i}", tenant=CONTOSO, organizer=ALICE, user=ALICE) for i in range(20)))
    session = client._session
    assert session is not None
    await client.end(admissions[0].conference)
    assert client._session is session
    await client.close()
    assert client._session is None
    # usable again after close (a fresh session)
    assert await client.end(admissions[1].conference) is True


# -- a WCS that is not there, or not answering ------------------------------------------------

def unreachable_cfg(deployment: Config, port: int, timeout: float) -> Config:
    cfg = load_config(deployment.base_dir)
    cfg.wcs.internal_port = port
    cfg.focus.wcs_timeout_seconds = timeout
    return cfg


async def assert_unavailable_within(call: Awaitable[object], limit: float) -> WcsUnavailable:
    started = time.monotonic()
    with pytest.raises(WcsUnavailable) as info:
        await call
    assert time.monotonic() - started < limit
    return info.value


async def test_closed_port(deployment: Config) -> None:
    client = WcsClient(unreachable_cfg(deployment, free_port(), 1.0))
    try:
        error = await assert_unavailable_within(
            client.admit("K7Q2", tenant=CONTOSO, organizer=ALICE, user=ALICE), 2.0)
        assert error.status is None
        await assert_unavailable_within(client.end("K7Q2"), 2.0)
        await assert_unavailable_within(client.revoke("K7Q2", "p1"), 2.0)
    finally:
        await client.close()


async def test_port_that_never_answers(deployment: Config) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def never_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await asyncio.sleep(3600)

    server = await asyncio.start_server(never_read, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    timeout = 1.0
    client = WcsClient(unreachable_cfg(deployment, port, timeout))
    try:
        error = await assert_unavailable_within(
            client.admit("K7Q2", tenant=CONTOSO, organizer=ALICE, user=ALICE), timeout + 1)
        assert "no answer" in str(error)
        await assert_unavailable_within(client.end("K7Q2"), timeout + 1)
        # revoke retries once: two timeouts and the pause between them
        await assert_unavailable_within(client.revoke("K7Q2", "p1"), 2 * timeout + 0.2 + 1)
        assert accepted  # it really did connect
    finally:
        await client.close()
        for writer in accepted:
            writer.close()
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 2)


async def test_server_certificate_from_another_ca(deployment: Config, tmp_path) -> None:
    """A server the deployment CA did not certify is a TLS failure, hence unavailable."""
    from webconf.deploy.init import init_deployment

    other = init_deployment(tmp_path / "other", tenants=[CONTOSO])
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context(other, "wcs"))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = WcsClient(unreachable_cfg(deployment, port, 2.0))
    try:
        error = await assert_unavailable_within(client.end("K7Q2"), 3.0)
        assert "SSL" in str(error) or "certificate" in str(error).lower()
    finally:
        await client.close()
        await runner.cleanup()


# -- a WCS that answers badly ----------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def fake_wcs(deployment: Config, handler: Handler) -> AsyncIterator[WcsClient]:
    """An mTLS server with the deployment's WCS certificate, answering with `handler`."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    ctx = tls.server_context(deployment, "wcs", require_client_cert=True)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = WcsClient(unreachable_cfg(deployment, port, 2.0))
    try:
        yield client
    finally:
        await client.close()
        await runner.cleanup()


SECRET_COOKIE = "eyJhbGciOiJFZERTQSJ9.c2VjcmV0.c2lnbmF0dXJl"


async def test_5xx_and_malformed_success(deployment: Config,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    answers = [
        web.json_response({"error": {"code": "unavailable", "message": "db down"}}, status=503),
        web.Response(status=500, text="boom"),
        web.json_response({"participant": "p1", "cookie": SECRET_COOKIE}, status=201),
        web.Response(status=201, text=f"not json {SECRET_COOKIE}"),
        web.Response(status=418, text="no json"),
        web.Response(status=200),
    ]

    async def handler(request: web.Request) -> web.StreamResponse:
        return answers.pop(0)

    async with fake_wcs(deployment, handler) as client:
        admit = lambda: client.admit("K7Q2", tenant=CONTOSO, organizer=ALICE, user=ALICE)  # noqa: E731
        with pytest.raises(WcsUnavailable) as info:
            await admit()
        assert info.value.status == 503
        with pytest.raises(WcsUnavailable) as info:
            await admit()
        assert info.value.status == 500
        for _ in range(2):
            with pytest.raises(WcsUnavailable) as info:
                await admit()
            assert SECRET_COOKIE not in str(info.value) and SECRET_COOKIE not in repr(info.value)
            assert SECRET_COOKIE not in repr(info.value.__context__)
        with pytest.raises(WcsRefused) as refused:
            await admit()
        assert (refused.value.status, refused.value.code) == (418, "http_418")
        with pytest.raises(WcsUnavailable):
            await client.end("K7Q2")  # 200 is not what DELETE answers
    assert SECRET_COOKIE not in caplog.text


async def test_revoke_retries_once(deployment: Config) -> None:
    calls: list[str] = []
    statuses = [503, 204, 503, 503]

    async def handler(request: web.Request) -> web.StreamResponse:
        calls.append(f"{request.method} {request.path}")
        return web.Response(status=statuses.pop(0))

    async with fake_wcs(deployment, handler) as client:
        started = time.monotonic()
        assert await client.revoke("K7Q2", "p1") is True
        assert time.monotonic() - started >= 0.2
        assert calls == ["DELETE /internal/v1/conferences/K7Q2/participants/p1"] * 2
        with pytest.raises(WcsUnavailable):
            await client.revoke("K7Q2", "p1")  # two failures: gives up
        assert len(calls) == 4


async def test_sends_the_client_certificate(deployment: Config) -> None:
    seen: list[dict[str, object]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        transport = request.transport
        assert transport is not None
        seen.append(transport.get_extra_info("peercert"))
        seen.append(await request.json())
        return web.json_response({"conference": "K7Q2", "participant": "p9", "role": "organizer",
                                  "cookie": SECRET_COOKIE, "expires_at": "2030-01-01T00:00:00Z",
                                  "webconf_url": "https://127.0.0.1:8443"}, status=201)

    async with fake_wcs(deployment, handler) as client:
        admission = await client.admit("K7Q2", tenant=CONTOSO, organizer=ALICE, user=ALICE)
    assert admission == Admission("K7Q2", "p9", "organizer", SECRET_COOKIE,
                                  "2030-01-01T00:00:00Z", "https://127.0.0.1:8443")
    assert SECRET_COOKIE not in repr(admission)
    peercert, body = seen
    assert peercert  # the mTLS handshake carried the focus-client certificate
    lease = body.pop("focus_node")  # this focus process's lease (docs/protocol.md §7.4)
    assert isinstance(lease, str) and lease.startswith(deployment.node_name + ".")
    assert body == {"tenant": CONTOSO, "organizer": ALICE, "user": ALICE, "role": "attendee"}
