"""The focus while its tenant directory's database is out of reach (issue 10, item 8): the
request whose credentials had to be looked up gets `503 Directory Unavailable` with
Retry-After; the SIP connection and its other dialogs stay; the outage is logged once, not
per request; and the same join works once the database is back.

First the core alone (sans-IO, as in tests/test_focus_core.py), then a real node: `webconf
serve` on PostgreSQL through a TCP relay (tests/tcp_relay.py) that aborts every database
connection and refuses new ones."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from clients.sip import ConferenceDialog, SipConnection, SipError
from focus.events import Admit, Close, Conn, Log, LookupCredentials, Revoke
from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.deploy.init import init_deployment
from webconf.deploy.local import ServeProcess, add_users, free_port

from .conftest import TENANTS
from .tcp_relay import TcpRelay
from .test_focus_core import (
    CONN,
    NOW,
    admission,
    answer_challenge,
    feed,
    invite,
    join,
    make_core,
    responses,
)

# -- the core -------------------------------------------------------------------------------


def test_an_unavailable_directory_is_503_and_the_connection_goes_on() -> None:
    core = make_core(retry_after_seconds=7)
    [admit] = [o for o in join(core) if isinstance(o, Admit)]  # alice's dialog on CONN
    [ok] = responses(core.admitted(admit.ticket, admission("p1"), NOW))
    to_tag = ok.headers.get("To").split("tag=")[1]

    [challenge] = responses(feed(core, CONN, invite(user="bob", call_id="c2", branch="b1")))
    auth = answer_challenge(challenge, user="bob", password="bob-pw")
    [lookup] = core.receive_data(  # an OPTIONS pipelined behind waits for the lookup
        CONN.id, invite(user="bob", call_id="c2", branch="b2", cseq=2, auth=auth)
        + invite(method="OPTIONS", call_id="o1", branch="o1"), NOW)
    assert isinstance(lookup, LookupCredentials)
    out = core.credentials_unavailable(lookup.ticket, NOW)
    assert [(r.status, r.reason) for r in responses(out)] == [
        (503, "Directory Unavailable"), (200, "OK")]
    unavailable = responses(out)[0]
    assert unavailable.headers.get("Retry-After") == "7"
    assert unavailable.headers.get("Call-ID") == "c2" and "tag=" in unavailable.headers.get("To")
    assert not [o for o in out if isinstance(o, (Close, Admit, Revoke, Log))]  # no log per
    assert core.credentials_unavailable(lookup.ticket, NOW) == []  # request; answered once
    assert core.counts()["lookups"] == 0 and core.dialog_count == 1

    # Not counted as a failure: the same credentials, retried, go on to the WCS.
    retried = feed(core, CONN, invite(user="bob", call_id="c2", branch="b3", cseq=3,
                                      auth=answer_challenge(challenge, user="bob",
                                                            password="bob-pw", nc=2)))
    assert [o.user for o in retried if isinstance(o, Admit)] == ["bob@contoso.example"]
    # alice's dialog lived through it.
    out = feed(core, CONN, invite(method="BYE", to_tag=to_tag, cseq=3, branch="bye1"))
    assert [r.status for r in responses(out)] == [200]
    assert [o for o in out if isinstance(o, Revoke)] == [Revoke("K7Q2", "p1", "bye")]


def test_an_unavailable_directory_leaves_a_dialog_moved_by_bye_in_place() -> None:
    """A BYE from another connection must authenticate (a lookup): with the directory out
    of reach it gets the 503, and the dialog is not ended."""
    core = make_core()
    [admit] = [o for o in join(core) if isinstance(o, Admit)]
    [ok] = responses(core.admitted(admit.ticket, admission("p1"), NOW))
    to_tag = ok.headers.get("To").split("tag=")[1]
    second = Conn(7, "127.0.0.1", 40007)
    core.connection_made(second)
    [challenge] = responses(feed(core, second, invite(method="BYE", to_tag=to_tag, cseq=3,
                                                      branch="bye1")))
    assert challenge.status == 401
    auth = answer_challenge(challenge, user="alice", password="alice-pw")
    [lookup] = core.receive_data(second.id, invite(method="BYE", to_tag=to_tag, cseq=4,
                                                   branch="bye2", auth=auth), NOW)
    assert isinstance(lookup, LookupCredentials)
    out = core.credentials_unavailable(lookup.ticket, NOW)
    [resp] = responses(out)
    assert (resp.status, resp.reason) == (503, "Directory Unavailable")
    assert resp.headers.get("Retry-After") == "5"
    assert not [o for o in out if isinstance(o, Revoke)] and core.dialog_count == 1


# -- a real node ----------------------------------------------------------------------------

CONF = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:DBO1"
USERS = {"alice@contoso.example": "alice-pw", "bob@contoso.example": "bob-pw"}
ATTEMPTS = 3


@pytest.fixture
def pg_deployment(tmp_path: Path, pg_url: str) -> Config:
    """A deployment on this test's PostgreSQL database, with its users (both written
    directly, not through the relay)."""
    cfg = init_deployment(tmp_path / "dep", https_port=free_port(), internal_port=free_port(),
                          sip_port=free_port(), tenants=TENANTS, database=pg_url)
    add_users(cfg.base_dir, USERS.items())
    return cfg


def log_events(path: Path) -> list[dict[str, object]]:
    events: list[dict[str, object]] = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            events.append({"raw": line})
    return events


async def test_a_join_during_an_outage_is_503_and_the_connection_stays(
        pg_deployment: Config, relay: TcpRelay, pg_url: str) -> None:
    cfg = pg_deployment
    serve = ServeProcess(cfg.base_dir, {"WEBCONF_STORE_URL": relay.url_for(pg_url)})
    conn: SipConnection | None = None
    try:
        await serve.astart()
        conn = await SipConnection.open("127.0.0.1", cfg.focus.sip_port,
                                        ssl_context=tls.client_context(cfg),
                                        server_hostname="contoso.example")
        # alice (the organizer) joins first, on the connection that will see the outage.
        alice = ConferenceDialog(conn, CONF, "alice@contoso.example",
                                 USERS["alice@contoso.example"])
        await alice.join()
        assert relay.accepted > 0  # the node does reach the database through the relay

        await asyncio.to_thread(relay.cut)
        for _ in range(ATTEMPTS):  # bob's credentials were never looked up: not cached
            bob = ConferenceDialog(conn, CONF, "bob@contoso.example",
                                   USERS["bob@contoso.example"])
            with pytest.raises(SipError) as err:
                await bob.join()
            assert (err.value.status, err.value.reason) == (503, "Directory Unavailable")
            assert err.value.retry_after == 5  # as for a WCS that is unavailable
        probe = ConferenceDialog(conn, CONF, "bob@contoso.example", "-")
        assert (await probe.options()).status == 200  # the same connection still serves

        await asyncio.to_thread(relay.reopen)
        bob = ConferenceDialog(conn, CONF, "bob@contoso.example", USERS["bob@contoso.example"])
        result = await bob.join()  # the same join, on the same connection
        assert result.role == "attendee"
        assert await bob.leave() == 200
        assert await alice.leave() == 200  # alice's dialog lived through the outage
        assert serve.proc is not None and serve.proc.poll() is None
        assert "restarting" not in serve.stderr_text()  # no process died of it
    finally:
        if conn is not None:
            await conn.close()
        await serve.astop()

    events = log_events(cfg.log_dir / "focus.log")
    outages = [e for e in events if str(e.get("event", "")).startswith("database.")]
    assert [e["event"] for e in outages] == ["database.unavailable", "database.available"]
    assert str(relay.port) in str(outages[0]["database"])
    refused = [e for e in events if e.get("level") in ("warning", "error")
               and e not in outages and not str(e.get("event", "")).startswith("lease.")]
    assert refused == []  # nothing per request
    assert not [e for e in events if "exc" in e or "raw" in e]  # no traceback
    assert not [e for e in events if e.get("event") == "connection.closed"]
