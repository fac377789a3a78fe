"""The focus ends a conference's dialogs with its own BYE (focus/requests.py,
docs/protocol.md §7.3, §8.6): first the sans-IO core with plain bytes, then end to end with
`webconf serve` (focus + WCS as real processes) and real SIP clients over TLS, the
organizer's DELETE and `webconf end` both."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from clients.sip import ConferenceDialog, SipConnection
from focus.core import FocusCore
from focus.events import Admit, Conn, Log, Revoke, Send
from focus.requests import BYE_TIMEOUT_SECONDS
from focus.wcs_client import WcsClient, WcsRefused
from webconf.deploy import tls
from webconf.deploy.config import Config, load_config
from webconf.sip.message import Request, parse_message, response_bytes

from .conftest import ServeProcess, running_wcs, wait_for
from .test_focus_core import CONN, NOW, admission, join, make_core
from .test_focus_e2e import CONF, USERS, add_users, tls_context

ROOT = Path(__file__).resolve().parent.parent


def joined(core: FocusCore, participant: str, *, user: str = "alice", conn: Conn = CONN,
           call_id: str = "call-1") -> None:
    out = join(core, user=user, conn=conn, call_id=call_id)
    [admit] = [o for o in out if isinstance(o, Admit)]
    core.admitted(admit.ticket, admission(participant), NOW)


def byes(outputs: list) -> list[Request]:
    sent = [parse_message(o.data) for o in outputs if isinstance(o, Send)]
    return [m for m in sent if isinstance(m, Request)]


def test_end_sends_one_bye_per_dialog_and_the_200_ends_it() -> None:
    core = make_core()
    joined(core, "p1")
    joined(core, "p2", user="bob", call_id="call-2")
    out = core.end_conference("K7Q2", NOW)
    sent = byes(out)
    assert [b.method for b in sent] == ["BYE", "BYE"]
    first = sent[0]
    assert str(first.uri) == "sip:alice@127.0.0.1:40000;transport=tls"  # their Contact
    assert first.headers.get("Call-ID") == "call-1"
    assert first.headers.get("To") == "<sip:alice@contoso.example>;tag=from-alice"
    assert ";tag=" in first.headers.get("From") and "opaque=app:conf" in first.headers.get("From")
    assert first.headers.get("CSeq") == "1 BYE" and first.headers.get("Max-Forwards") == "70"
    via = first.headers.get("Via")
    assert via.startswith("SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bK")
    assert sent[0].headers.get("Via") != sent[1].headers.get("Via")  # fresh branches
    assert not [o for o in out if isinstance(o, Revoke)]  # not before the answer
    assert core.end_conference("K7Q2", NOW) == []  # a second notice: nothing more
    assert core.end_conference("other", NOW) == []
    assert core.dialog_count == 2
    answer = core.receive_data(CONN.id, response_bytes(first, 200), NOW)
    assert [(o.participant_id, o.reason) for o in answer if isinstance(o, Revoke)] == [
        ("p1", "conference ended")]
    assert any(isinstance(o, Log) and o.event["event"] == "leave" for o in answer)
    assert core.dialog_count == 1
    # 481 (the agent forgot the dialog) ends it too; a stray response matches nothing.
    assert core.receive_data(CONN.id, response_bytes(first, 200), NOW) == []
    assert core.receive_data(CONN.id, response_bytes(sent[1], 100), NOW) == []
    gone = core.receive_data(CONN.id, response_bytes(sent[1], 481), NOW)
    assert [o.participant_id for o in gone if isinstance(o, Revoke)] == ["p2"]
    assert core.dialog_count == 0 and core.next_deadline() is None


def test_unanswered_bye_times_out_and_orphans_end_at_once() -> None:
    core = make_core()
    joined(core, "p1")
    other = Conn(2, "127.0.0.1", 40001)
    core.connection_made(other)
    joined(core, "p2", user="bob", conn=other, call_id="call-2")
    core.connection_lost(other.id, NOW)  # bob's dialog has no connection left
    out = core.end_conference("K7Q2", NOW)
    assert len(byes(out)) == 1  # alice's; bob's cannot be reached and ends now
    assert [o.participant_id for o in out if isinstance(o, Revoke)] == ["p2"]
    deadline = core.next_deadline()
    assert deadline == NOW + BYE_TIMEOUT_SECONDS
    assert core.expire(deadline - 0.001) == []
    late = core.expire(deadline)
    assert [o.participant_id for o in late if isinstance(o, Revoke)] == ["p1"]
    assert core.dialog_count == 0


def test_agent_bye_while_ours_is_out_ends_it_once() -> None:
    core = make_core()
    joined(core, "p1")
    [ours] = byes(core.end_conference("K7Q2", NOW))
    theirs = ("BYE sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:40000;branch=z9hG4bKb\r\n"
              "Max-Forwards: 70\r\nFrom: <sip:alice@contoso.example>;tag=from-alice\r\n"
              f"To: {ours.headers.get('From')}\r\nCall-ID: call-1\r\nCSeq: 3 BYE\r\n"
              "Content-Length: 0\r\n\r\n").encode()
    out = core.receive_data(CONN.id, theirs, NOW)
    assert [o.participant_id for o in out if isinstance(o, Revoke)] == ["p1"]
    assert core.receive_data(CONN.id, response_bytes(ours, 481), NOW) == []


# -- the link: ends reach the focus from any node ---------------------------------------------

async def test_link_is_told_of_ends_from_any_node(deployment: Config) -> None:
    """Two WCS nodes on one store: the focus's link is on node A; the conference ends on
    node B; the event log carries it to A, which tells the link. A `watch` of a conference
    that has ended already is told at once; a bad one is refused."""
    cfg_b = load_config(deployment.base_dir)
    async with running_wcs(deployment) as node_a, running_wcs(cfg_b) as node_b:
        ended: list[str] = []
        client = WcsClient(node_a.cfg)
        client.on_ended = ended.append
        try:
            await client.start_link(wait=10)
            admission = await client.admit("X1", tenant="contoso.example",
                                           organizer="alice@contoso.example",
                                           user="alice@contoso.example")
            conf = admission.conference
            async with node_b.internal.delete(
                    f"{node_b.internal_url}/internal/v1/conferences/{conf}") as resp:
                assert resp.status == 204
            await wait_for(lambda: ended == [conf], timeout=10)
            ended.clear()
            await client.watch([conf])
            await wait_for(lambda: ended == [conf], timeout=10)
            with pytest.raises(WcsRefused):
                await client.watch(["not an id"])
        finally:
            await client.close()


# -- end to end ------------------------------------------------------------------------------

async def start(deployment: Config, serve: ServeProcess) -> Config:
    await add_users(deployment)
    await asyncio.to_thread(serve.start)
    return deployment


async def sip_join(cfg: Config, address: str) -> tuple[SipConnection, ConferenceDialog]:
    conn = await SipConnection.open("127.0.0.1", cfg.focus.sip_port,
                                    ssl_context=tls_context(cfg, "1.3"),
                                    server_hostname="contoso.example")
    dialog = ConferenceDialog(conn, CONF, address, USERS[address])
    await dialog.join()
    return conn, dialog


def focus_events(cfg: Config) -> list[dict[str, object]]:
    return [json.loads(line) for line in (cfg.log_dir / "focus.log").read_text().splitlines()]


async def test_organizer_delete_byes_every_dialog(deployment: Config,
                                                  serve: ServeProcess) -> None:
    cfg = await start(deployment, serve)
    alice_conn, alice = await sip_join(cfg, "alice@contoso.example")
    bob_conn, bob = await sip_join(cfg, "bob@contoso.example")
    assert alice.result is not None and bob.result is not None
    url = f"{alice.result.webconf_url}/v1/conferences/{alice.result.conference}"
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg))) as http:
        async with http.delete(url, headers={
                "Authorization": f"Bearer {bob.result.cookie}"}) as resp:
            assert resp.status == 403  # an attendee cannot end it
        async with http.delete(url, headers={
                "Authorization": f"Bearer {alice.result.cookie}"}) as resp:
            assert resp.status == 204
        for dialog in (alice, bob):  # each client saw the focus's BYE and answered 200
            await asyncio.wait_for(dialog.ended.wait(), 5)
        async with http.get(f"{url}/items", headers={
                "Authorization": f"Bearer {bob.result.cookie}"}) as resp:
            assert resp.status == 401

    def left() -> list[dict[str, object]]:
        return [e for e in focus_events(cfg) if e.get("event") == "leave"]

    await wait_for(lambda: len(left()) == 2)
    assert {e["reason"] for e in left()} == {"conference ended"}
    assert await alice.leave() == 200  # ended already: nothing left to send
    for conn in (alice_conn, bob_conn):
        await conn.close()


async def test_webconf_end_command(deployment: Config, serve: ServeProcess) -> None:
    cfg = await start(deployment, serve)
    alice_conn, alice = await sip_join(cfg, "alice@contoso.example")  # she starts it
    bob_conn, bob = await sip_join(cfg, "bob@contoso.example")
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, "WEBCONF_PASSWORD": "bob-pw"}
    base = [sys.executable, "-m", "webconf", "end", CONF, "--focus",
            f"127.0.0.1:{cfg.focus.sip_port}", "--ca", str(cfg.certs_dir / "ca.pem")]
    refused = await asyncio.to_thread(
        subprocess.run, [*base, "--user", "bob@contoso.example"], capture_output=True,
        text=True, timeout=60, env=env)
    assert refused.returncode == 7, refused.stderr  # forbidden: bob is not the organizer
    assert not bob.ended.is_set()
    env["WEBCONF_PASSWORD"] = "alice-pw"
    done = await asyncio.to_thread(
        subprocess.run, [*base, "--user", "alice@contoso.example"], capture_output=True,
        text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ended E2E1"]
    for dialog in (alice, bob):
        await asyncio.wait_for(dialog.ended.wait(), 5)
    for conn in (alice_conn, bob_conn):
        await conn.close()
