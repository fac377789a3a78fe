"""RFC 4575 subscriptions end to end (docs/protocol.md §9.3): `webconf serve` (focus and
WCS as real processes) over real TLS, a raw SIP subscriber that answers (or does not
answer) each NOTIFY, and real participants joining and leaving with clients.sip. Every
NOTIFY body is validated against RFC 4575's schema. Also the BYE the focus sends when a
participation is revoked outside its dialog (the internal revoke, with the focus's client
certificate), docs/protocol.md §7.3."""

from __future__ import annotations

import asyncio
import contextlib
import secrets

import aiohttp
import pytest

from clients.sip import ConferenceDialog, SipConnection
from focus.wcs_client import WcsClient
from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.deploy.local import free_port
from webconf.sip.digest_client import DigestClient
from webconf.sip.framing import NeedData, SipFramer
from webconf.sip.message import Request, Response, parse_name_addr, response_bytes

from .conftest import ServeProcess, wait_for
from .test_focus_bye import focus_events, sip_join
from .test_focus_e2e import CONF, USERS, add_users, tls_context
from .test_focus_subscribe_xml import NS, validated

HOSTILE = "m&l'o(r)y&amp;x"
"""The XML-significant characters a directory user name can hold (`&`, `'`; `<`, `"` and
non-ASCII cannot be in one: tests/test_focus_subscribe_xml.py covers them in documents)."""


@pytest.fixture
async def stack(deployment: Config, serve: ServeProcess):
    await add_users(deployment)
    deployment.focus.tcp_port = free_port()
    serve.env["WEBCONF_FOCUS_TCP_PORT"] = str(deployment.focus.tcp_port)
    serve.env["WEBCONF_FOCUS_MD5_ONLY_USER_AGENTS"] = "baresip,sipp"
    await asyncio.to_thread(serve.start)
    yield deployment


class Subscriber:
    """A raw SIP subscriber over TLS: SUBSCRIBE with Digest, then NOTIFYs as they come
    (answered 200 unless told otherwise)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 address: str, password: str) -> None:
        self.reader, self.writer = reader, writer
        self.user, _, self.domain = address.partition("@")
        self.digest = DigestClient(self.user, password)
        self.framer = SipFramer()
        self.call_id = secrets.token_hex(8)
        self.tag = secrets.token_hex(4)
        self.remote_tag: str | None = None
        self.cseq = 0
        self.responses: asyncio.Queue[Response] = asyncio.Queue()
        self.notifies: asyncio.Queue[Request] = asyncio.Queue()
        self.answer_notifies = True
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, cfg: Config, address: str, password: str | None = None) -> Subscriber:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", cfg.focus.sip_port, ssl=tls_context(cfg, "1.3"),
            server_hostname="contoso.example")
        return cls(reader, writer, address, password or USERS[address])

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            self.framer.feed(data)
            while not isinstance(event := self.framer.next_event(), NeedData):
                if isinstance(event, Response):
                    self.responses.put_nowait(event)
                elif isinstance(event, Request) and event.method == "NOTIFY":
                    self.notifies.put_nowait(event)
                    if self.answer_notifies:
                        self.writer.write(response_bytes(event, 200))

    def send(self, *, expires: int | None = 600, event: str = "conference",
             auth: str | None = None, uri: str = CONF) -> None:
        self.cseq += 1
        host, port = self.writer.get_extra_info("sockname")[:2]
        lines = [f"SUBSCRIBE {uri} SIP/2.0",
                 f"Via: SIP/2.0/TLS {host}:{port};branch=z9hG4bK{secrets.token_hex(6)}",
                 "Max-Forwards: 70",
                 f"From: <sip:{self.user}@{self.domain}>;tag={self.tag}",
                 f"To: <{CONF}>" + (f";tag={self.remote_tag}" if self.remote_tag else ""),
                 f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} SUBSCRIBE",
                 f"Contact: <sip:{self.user}@{host}:{port};transport=tls>",
                 f"Event: {event}", "Accept: application/conference-info+xml"]
        lines += [f"Expires: {expires}"] if expires is not None else []
        lines += [f"Authorization: {auth}"] if auth else []
        self.writer.write("\r\n".join([*lines, "Content-Length: 0", "", ""]).encode())

    async def response(self) -> Response:
        return await asyncio.wait_for(self.responses.get(), 10)

    async def notify(self, timeout: float = 10) -> Request:
        return await asyncio.wait_for(self.notifies.get(), timeout)

    async def subscribe(self, *, expires: int = 600, uri: str = CONF) -> Response:
        """SUBSCRIBE, answering one Digest challenge; the final response."""
        self.send(expires=expires, uri=uri)
        resp = await self.response()
        if resp.status == 401:
            auth = self.digest.answer(resp.headers.get_fields("WWW-Authenticate"),
                                      method="SUBSCRIBE", uri=uri)
            self.send(expires=expires, auth=auth, uri=uri)
            resp = await self.response()
        if resp.status == 200:
            self.remote_tag = parse_name_addr(resp.headers.get("To") or "").params.get("tag")
        return resp

    async def join(self) -> None:
        """INVITE (answering one challenge) and ACK: the SUBSCRIBEs that follow are in
        this join dialog."""
        host, port = self.writer.get_extra_info("sockname")[:2]

        def invite(auth: str | None) -> bytes:
            self.cseq += 1
            lines = [f"INVITE {CONF} SIP/2.0",
                     f"Via: SIP/2.0/TLS {host}:{port};branch=z9hG4bK{secrets.token_hex(6)}",
                     "Max-Forwards: 70", f"From: <sip:{self.user}@{self.domain}>;tag={self.tag}",
                     f"To: <{CONF}>", f"Call-ID: {self.call_id}", f"CSeq: {self.cseq} INVITE",
                     f"Contact: <sip:{self.user}@{host}:{port};transport=tls>",
                     "Accept: application/vnd.webconf.join+json"]
            lines += [f"Authorization: {auth}"] if auth else []
            return "\r\n".join([*lines, "Content-Length: 0", "", ""]).encode()

        self.writer.write(invite(None))
        challenge = await self.response()
        assert challenge.status == 401
        self.writer.write(response_ack(challenge, self.cseq))
        self.writer.write(invite(self.digest.answer(
            challenge.headers.get_fields("WWW-Authenticate"), method="INVITE", uri=CONF)))
        while (ok := await self.response()).status < 200:
            continue
        assert ok.status == 200
        self.remote_tag = parse_name_addr(ok.headers.get("To") or "").params.get("tag")
        self.writer.write(response_ack(ok, self.cseq, branch=f"z9hG4bK{secrets.token_hex(6)}"))

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task
        self.writer.close()


def response_ack(resp: Response, cseq: int, branch: str | None = None) -> bytes:
    """The ACK of an INVITE's final response (the 401's in its transaction, RFC 3261
    §17.1.1.3; the 200's on a new branch)."""
    via = resp.headers.get("Via") or ""
    if branch is not None:
        via = via.split(";branch=")[0] + f";branch={branch}"
    lines = [f"ACK {CONF} SIP/2.0", f"Via: {via}", "Max-Forwards: 70",
             f"From: {resp.headers.get('From')}", f"To: {resp.headers.get('To')}",
             f"Call-ID: {resp.headers.get('Call-ID')}", f"CSeq: {cseq} ACK"]
    return "\r\n".join([*lines, "Content-Length: 0", "", ""]).encode()


def users(notify: Request) -> dict[str, str]:
    assert notify.headers.get("Event") == "conference"
    assert notify.headers.get("Content-Type") == "application/conference-info+xml"
    root = validated(notify.body)
    return {u.findtext("ci:display-text", namespaces=NS) or u.get("entity", ""):
            u.get("state", "") for u in root.iterfind(".//ci:user", NS)}


def version(notify: Request) -> tuple[str | None, str | None]:
    root = validated(notify.body)
    return root.get("state"), root.get("version")


async def test_subscribe_join_leave_refresh_unsubscribe(stack: Config) -> None:
    cfg = stack
    alice_conn, alice = await sip_join(cfg, "alice@contoso.example")  # starts the conference
    watcher = await Subscriber.open(cfg, "bob@contoso.example")
    try:
        ok = await watcher.subscribe()
        assert ok.status == 200 and ok.headers.get("Expires") == "600"
        first = await watcher.notify()
        assert version(first) == ("full", "1")
        assert first.headers.get("Subscription-State") == "active;expires=600"
        assert users(first) == {"alice@contoso.example": "full"}
        # bob joins: partial, version 2
        bob_conn, bob = await sip_join(cfg, "bob@contoso.example")
        second = await watcher.notify()
        assert version(second) == ("partial", "2")
        assert users(second) == {"bob@contoso.example": "full"}
        roles = validated(second.body).findtext(".//ci:roles/ci:entry", namespaces=NS)
        assert roles == "attendee"
        # bob leaves: version 3, deleted
        assert await bob.leave() == 200
        third = await watcher.notify()
        assert version(third) == ("partial", "3")
        assert list(users(third).values()) == ["deleted"]
        # a refresh: 200, and the full state again (version 4)
        watcher.send(expires=900)
        assert (await watcher.response()).headers.get("Expires") == "900"
        refreshed = await watcher.notify()
        assert version(refreshed) == ("full", "4")
        assert refreshed.headers.get("Subscription-State") == "active;expires=900"
        # Expires: 0 ends it with a final NOTIFY
        watcher.send(expires=0)
        assert (await watcher.response()).status == 200
        last = await watcher.notify()
        assert last.headers.get("Subscription-State", "").startswith("terminated")
        await alice.leave()
        await bob_conn.close()
    finally:
        await watcher.close()
        await alice_conn.close()


async def test_subscribe_in_the_join_dialog(stack: Config) -> None:
    """Alice joins, then subscribes inside her join dialog (no new challenge on its
    connection): the NOTIFYs come in that dialog, with the focus's CSeq growing."""
    cfg = stack
    alice = await Subscriber.open(cfg, "alice@contoso.example")
    try:
        await alice.join()
        alice.send()
        ok = await alice.response()
        assert ok.status == 200
        first = await alice.notify()
        assert first.headers.get("Call-ID") == alice.call_id
        assert parse_name_addr(first.headers.get("From") or "").params.get("tag") == (
            alice.remote_tag)
        assert version(first) == ("full", "1")
        assert users(first) == {"alice@contoso.example": "full"}
        bob_conn, bob = await sip_join(cfg, "bob@contoso.example")
        second = await alice.notify()
        assert version(second) == ("partial", "2")
        assert int((second.headers.get("CSeq") or "0").split()[0]) > int(
            (first.headers.get("CSeq") or "0").split()[0])
        await bob.leave()
        await bob_conn.close()
        assert version(await alice.notify()) == ("partial", "3")
    finally:
        await alice.close()


async def test_refusals_over_tls(stack: Config) -> None:
    cfg = stack
    alice_conn, alice = await sip_join(cfg, "alice@contoso.example")
    watcher = await Subscriber.open(cfg, "bob@contoso.example")
    eve = await Subscriber.open(cfg, "eve@fabrikam.example")
    try:
        watcher.send(event="presence")
        bad = await watcher.response()
        assert bad.status == 489 and bad.headers.get("Allow-Events") == "conference"
        watcher.send()
        challenge = await watcher.response()
        assert challenge.status == 401 and challenge.headers.get_fields("WWW-Authenticate")
        assert (await eve.subscribe()).status == 403  # another tenant
        unknown = CONF.replace("E2E1", "NOPE")
        assert (await watcher.subscribe(uri=unknown)).status == 404
        await alice.leave()
    finally:
        await watcher.close()
        await eve.close()
        await alice_conn.close()


async def test_unanswered_notify_ends_the_subscription(stack: Config) -> None:
    """The subscriber stops answering: after Timer F (32 s) the subscription ends and the
    focus sends it nothing more."""
    cfg = stack
    alice_conn, alice = await sip_join(cfg, "alice@contoso.example")
    watcher = await Subscriber.open(cfg, "bob@contoso.example")
    try:
        watcher.answer_notifies = False
        assert (await watcher.subscribe()).status == 200
        await watcher.notify()

        def ended() -> bool:
            return any(e.get("event") == "subscription.end" and
                       e.get("reason") == "notify timeout" for e in focus_events(cfg))
        await wait_for(ended, timeout=60)
        await alice.leave()
        with pytest.raises(TimeoutError):
            await watcher.notify(timeout=1)
    finally:
        await watcher.close()
        await alice_conn.close()


async def test_hostile_name_in_the_roster_is_valid_xml(stack: Config) -> None:
    """A user whose name holds `&`, `'` and an entity-like text joins: the NOTIFY carries
    the name escaped (and nothing unescaped twice), and validates."""
    from focus.directory import Directory

    directory = await Directory.for_deployment(stack)
    try:
        await directory.add_user(f"{HOSTILE}@contoso.example", "m-pw")
    finally:
        await directory.close()
    alice_conn, alice = await sip_join(stack, "alice@contoso.example")
    watcher = await Subscriber.open(stack, "alice@contoso.example")
    conn = await SipConnection.open("127.0.0.1", stack.focus.sip_port,
                                    ssl_context=tls_context(stack, "1.3"),
                                    server_hostname="contoso.example")
    try:
        assert (await watcher.subscribe()).status == 200
        await watcher.notify()
        dialog = ConferenceDialog(conn, CONF, f"{HOSTILE}@contoso.example", "m-pw")
        await dialog.join()
        joined = await watcher.notify()
        assert b"m&amp;l'o(r)y&amp;amp;x@contoso.example" in joined.body
        assert users(joined) == {f"{HOSTILE}@contoso.example": "full"}
        await dialog.leave()
        assert list(users(await watcher.notify()).values()) == ["deleted"]
        await alice.leave()
    finally:
        await watcher.close()
        await conn.close()
        await alice_conn.close()


async def test_revocation_outside_the_dialog_gets_a_bye(stack: Config) -> None:
    """A participation revoked through the internal API (as an eject or a lease expiry
    would): the WCS tells the focus's link, and the focus sends BYE on the dialog."""
    cfg = stack
    alice_conn, alice = await sip_join(cfg, "alice@contoso.example")
    bob_conn, bob = await sip_join(cfg, "bob@contoso.example")
    assert bob.result is not None
    client = WcsClient(cfg)  # the focus's client certificate; HTTP (no link)
    try:
        assert await client.revoke(bob.result.conference, bob.result.participant)
    finally:
        await client.close()
    await asyncio.wait_for(bob.ended.wait(), 10)  # the focus's BYE, answered 200

    def left() -> list[dict[str, object]]:
        return [e for e in focus_events(cfg) if e.get("event") == "leave"
                and e.get("participant") == bob.result.participant]  # type: ignore[union-attr]
    await wait_for(lambda: len(left()) == 1)
    assert left()[0]["reason"] == "revoked"
    assert not alice.ended.is_set()
    await alice.leave()
    for conn in (alice_conn, bob_conn):
        await conn.close()


async def test_an_organizers_eject_gets_a_bye(stack: Config) -> None:
    """The organizer's `DELETE .../participants/{pid}` (docs/protocol.md §9.2): the WCS
    revokes, the focus reads the `participant.left` on its link and sends BYE on the
    ejected participant's dialog; everyone else stays."""
    cfg = stack
    alice_conn, alice = await sip_join(cfg, "alice@contoso.example")
    bob_conn, bob = await sip_join(cfg, "bob@contoso.example")
    assert alice.result is not None and bob.result is not None
    url = (f"{alice.result.webconf_url}/v1/conferences/{alice.result.conference}"
           f"/participants/{bob.result.participant}")
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg))) as http:
        headers = {"Authorization": f"Bearer {alice.result.cookie}"}
        async with http.delete(url, headers=headers) as answer:
            assert answer.status == 204
        await asyncio.wait_for(bob.ended.wait(), 10)  # the focus's BYE, answered 200
        async with http.get(f"{alice.result.webconf_url}/v1/conferences/"
                            f"{bob.result.conference}/items",
                            headers={"Authorization": f"Bearer {bob.result.cookie}"}) as answer:
            assert answer.status == 401
    assert not alice.ended.is_set()
    await alice.leave()
    for conn in (alice_conn, bob_conn):
        await conn.close()
