"""Roles, the roster, the lock and ejects (docs/protocol.md §9.2), over the public API.

Real in-process WCS servers over real TLS, on SQLite and PostgreSQL; two nodes are two
`WcsServer`s on one database (as in test_eventlog.py). What is checked:

- `GET .../participants`: the live participants, the seq they reflect, the lock;
- `PATCH .../participants/{pid}`: the organizer only, never the organizer's own role;
  pushed as `participant.role_changed`; in force on the participant's next request with
  the same cookie (a cached one included, on the node that changed it and on another), and
  on its open channel;
- `DELETE .../participants/{pid}`: an eject revokes (cookie 401, `revoked` "ejected", the
  channel closes); the organizer cannot be ejected;
- `PATCH /v1/conferences/{conf}` `{"locked"}`: only the organizer joins while locked; a
  reopened conference starts unlocked;
- bad input: unknown or foreign pids 404, bad roles and bodies 400, other types 415.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from datetime import datetime
from typing import Any

from aiohttp import WSMsgType

from clients.roster import LiveRoster
from conferencing.api.channel import current_principal
from conferencing.roster import Roster, RosterEntry, read_roster
from conferencing.service import ConferenceService
from webconf.deploy.config import Config

from .conftest import Participant, Wcs, wait_for
from .test_channel import connect, recv_json, recv_type
from .test_cookie_cache import REFUSED_WITHIN, cached
from .test_eventlog import two_nodes
from .test_hostile_http import blob_files, settled
from .test_upload_revocation import FIRST, channel_events, start_upload

ORGANIZER = "alice@contoso.example"
CAROL = "carol@contoso.example"
BOB = "bob@contoso.example"


def service_of(wcs: Wcs) -> ConferenceService:
    assert wcs.server is not None and wcs.server.service is not None
    return wcs.server.service


async def meeting(wcs: Wcs, conf: str) -> tuple[Participant, Participant, Participant]:
    """(organizer, presenter, attendee) of a fresh conference."""
    alice = await wcs.admit(conf, ORGANIZER)
    carol = await wcs.admit(conf, CAROL, organizer=ORGANIZER, role="presenter")
    bob = await wcs.admit(conf, BOB, organizer=ORGANIZER)
    return alice, carol, bob


def participants_url(wcs: Wcs, who: Participant, pid: str | None = None) -> str:
    url = f"{wcs.url}/v1/conferences/{who.conference}/participants"
    return url if pid is None else f"{url}/{pid}"


async def call(wcs: Wcs, method: str, url: str, who: Participant, *, body: Any = None,
               data: bytes | None = None, content_type: str = "application/json"
               ) -> tuple[int, Any]:
    headers = dict(who.headers)
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = content_type
    async with wcs.http.request(method, url, data=data, headers=headers) as resp:
        raw = await resp.read()
        return resp.status, json.loads(raw) if raw else None


async def set_role(wcs: Wcs, by: Participant, target: Participant | str,
                   role: Any) -> tuple[int, Any]:
    pid = target if isinstance(target, str) else target.pid
    return await call(wcs, "PATCH", participants_url(wcs, by, pid), by, body={"role": role})


async def settings(wcs: Wcs, by: Participant, body: Any) -> tuple[int, Any]:
    return await call(wcs, "PATCH", f"{wcs.url}/v1/conferences/{by.conference}", by, body=body)


def code(body: Any) -> str:
    return str(body["error"]["code"])


async def upload_status(wcs: Wcs, who: Participant) -> int:
    status, _ = await wcs.upload(who, b"slide " * 50, name="s.pdf")
    return status


# -- the roster ----------------------------------------------------------------------------

async def test_the_roster_lists_live_participants_with_their_seq(wcs: Wcs) -> None:
    alice, carol, bob = await meeting(wcs, "R1")
    ws, hello = await connect(wcs, bob)
    try:
        status, body = await call(wcs, "GET", participants_url(wcs, bob), bob)
        assert status == 200
        assert body["conference"] == bob.conference and body["locked"] is False
        assert body["seq"] == hello["seq"]  # three joins, nothing since
        assert [(p["id"], p["user"], p["role"]) for p in body["participants"]] == [
            (alice.pid, ORGANIZER, "organizer"), (carol.pid, CAROL, "presenter"),
            (bob.pid, BOB, "attendee")]
        for p in body["participants"]:
            assert p["joined_at"].endswith("Z")
            datetime.fromisoformat(p["joined_at"])
        roster = await read_roster(service_of(wcs).store, bob.conference)
        assert isinstance(roster, Roster) and roster.seq == body["seq"]
        assert roster.participants[0] == RosterEntry(
            id=alice.pid, user=ORGANIZER, role="organizer",
            joined_at=roster.participants[0].joined_at)
        # Carol leaves: gone from the roster, and the seq moved past her `participant.left`.
        assert await wcs.revoke(carol) == 204
        left = await recv_type(ws, "participant.left")
        status, body = await call(wcs, "GET", participants_url(wcs, alice), alice)
        assert status == 200 and body["seq"] == left["seq"]
        assert [p["id"] for p in body["participants"]] == [alice.pid, bob.pid]
    finally:
        await ws.close()
    # Cookies of another conference, or none, see nothing of it.
    zoe = await wcs.admit("R1X", "zoe@contoso.example")
    assert (await call(wcs, "GET", participants_url(wcs, bob), zoe))[0] == 403
    async with wcs.http.get(participants_url(wcs, bob)) as resp:
        assert resp.status == 401
    assert await read_roster(service_of(wcs).store, "nosuchconference") == Roster(
        conference="nosuchconference", seq=0, locked=False, participants=())


# -- role changes --------------------------------------------------------------------------

async def test_the_organizer_changes_roles_and_everyone_hears_of_it(wcs: Wcs) -> None:
    alice, carol, bob = await meeting(wcs, "R2")
    ws, _ = await connect(wcs, bob)
    watcher, _ = await connect(wcs, carol)
    try:
        for by in (bob, carol):  # only the organizer
            status, body = await set_role(wcs, by, bob, "presenter")
            assert status == 403 and code(body) == "forbidden"
        assert await upload_status(wcs, bob) == 403
        status, body = await set_role(wcs, alice, bob, "presenter")
        assert status == 200
        assert body["id"] == bob.pid and body["user"] == BOB and body["role"] == "presenter"
        for channel in (ws, watcher):
            event = await recv_type(channel, "participant.role_changed")
            assert event["participant"] == {"id": bob.pid, "user": BOB, "role": "presenter"}
            assert isinstance(event["seq"], int)
        # Bob's open channel follows its own role (what channel messages are checked with).
        subs = [s for s in service_of(wcs).events._by_conference[bob.conference]
                if s.participant_id == bob.pid]
        assert subs and all(s.role == "presenter" for s in subs)
        who = await service_of(wcs).authenticate(bob.cookie, bob.conference)
        assert who.role == "presenter"
        assert current_principal(who, subs[0]).role == "presenter"
        # The same cookie uploads now.
        assert await upload_status(wcs, bob) == 201
        assert (await recv_type(ws, "item.shared"))["item"]["presenter"] == f"sip:{BOB}"
        # The same role again: 200, no event (the next event on the channel is Carol's).
        assert (await set_role(wcs, alice, bob, "presenter"))[0] == 200
        assert (await set_role(wcs, alice, carol, "attendee"))[0] == 200
        event = await recv_type(ws, "participant.role_changed")
        assert event["participant"]["id"] == carol.pid
        assert event["participant"]["role"] == "attendee"
        # The organizer's role never changes, whoever asks.
        for role in ("attendee", "presenter"):
            status, body = await set_role(wcs, alice, alice, role)
            assert status == 409 and code(body) == "cannot_change_organizer"
        status, body = await call(wcs, "GET", participants_url(wcs, alice), alice)
        assert [p["role"] for p in body["participants"]] == ["organizer", "attendee",
                                                             "presenter"]
    finally:
        await ws.close()
        await watcher.close()
    audit = (wcs.cfg.log_dir / "audit.log").read_text()
    assert '"event":"participant.role"' in audit


async def test_a_demoted_presenter_cannot_upload_on_its_next_request(wcs: Wcs) -> None:
    alice, carol, _ = await meeting(wcs, "R3")
    items = wcs.items_url(carol.conference)
    await cached(wcs, carol, items)  # a cached success with the presenter role
    status, body = await wcs.upload(carol, b"mine", name="own.pdf")
    assert status == 201
    item_url = body["item"]["url"].removesuffix("/content")
    assert (await set_role(wcs, alice, carol, "attendee"))[0] == 200
    assert await upload_status(wcs, carol) == 403  # the very next request, same cookie
    async with wcs.http.delete(item_url, headers=carol.headers) as resp:
        assert resp.status == 403  # nor delete her own item
    async with wcs.http.get(items, headers=carol.headers) as resp:
        assert resp.status == 200  # still a participant
    # Promoted again: the same cookie shares again.
    assert (await set_role(wcs, alice, carol, "presenter"))[0] == 200
    assert await upload_status(wcs, carol) == 201


async def test_an_upload_in_flight_when_its_presenter_is_demoted_commits_nothing(
        wcs: Wcs) -> None:
    """The role is checked again in the commit's transaction (docs/protocol.md §4.1)."""
    alice, carol, bob = await meeting(wcs, "R3B")
    ws, _ = await connect(wcs, bob)
    blobs = blob_files(wcs)
    rest = os.urandom(100_000)
    conn = await start_upload(wcs, carol, len(FIRST) + len(rest))
    try:
        assert (await set_role(wcs, alice, carol, "attendee"))[0] == 200
        await conn.send(rest)
        resp = await conn.response()
    finally:
        await conn.close()
    assert resp is not None and resp.status == 403, resp
    assert resp.json()["error"]["code"] == "forbidden"
    kinds = await channel_events(ws, 0.5)
    assert "participant.role_changed" in kinds and "item.shared" not in kinds
    await ws.close()
    await settled(wcs, alice, set(), blobs)


async def test_a_role_change_on_one_node_is_in_force_on_the_other(deployment: Config) -> None:
    async with two_nodes(deployment) as (node1, node2):
        alice = await node1.admit("R4", ORGANIZER)
        carol = await node1.admit("R4", CAROL, organizer=ORGANIZER, role="presenter")
        await cached(node2, carol)
        ws, _ = await connect(node2, carol)
        try:
            assert (await set_role(node1, alice, carol, "attendee"))[0] == 200
            # An upload that the stale entry would let through is refused at its commit.
            assert await upload_status(node2, carol) == 403
            event = await recv_type(ws, "participant.role_changed")
            assert event["participant"]["role"] == "attendee"
            subs = [s for s in service_of(node2).events._by_conference[carol.conference]
                    if s.participant_id == carol.pid]
            assert subs and subs[0].role == "attendee"
        finally:
            await ws.close()
        # The entry itself goes: node 2 reads the role in force within the second.
        started = time.monotonic()
        await wait_for(lambda: not any(
            e.claims.participant_id == carol.pid
            for e in service_of(node2).cookie_cache._entries.values()), REFUSED_WITHIN)
        assert time.monotonic() - started < REFUSED_WITHIN
        who = await service_of(node2).authenticate(carol.cookie, carol.conference)
        assert who.role == "attendee"


# -- ejects --------------------------------------------------------------------------------

async def test_an_eject_revokes_the_participant(wcs: Wcs) -> None:
    alice, carol, bob = await meeting(wcs, "R5")
    ws, _ = await connect(wcs, bob)
    watcher, _ = await connect(wcs, carol)
    try:
        status, body = await call(wcs, "DELETE", participants_url(wcs, carol, bob.pid), carol)
        assert status == 403 and code(body) == "forbidden"
        status, _ = await call(wcs, "DELETE", participants_url(wcs, alice, bob.pid), alice)
        assert status == 204
        event = await recv_json(ws)
        assert event["type"] == "revoked" and event["reason"] == "ejected"
        msg = await asyncio.wait_for(ws.receive(), 3.0)
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and ws.close_code == 1008
        left = await recv_type(watcher, "participant.left")
        assert left["participant"] == {"id": bob.pid, "user": BOB, "role": "attendee"}
    finally:
        await ws.close()
        await watcher.close()
    async with wcs.http.get(wcs.items_url(bob.conference), headers=bob.headers) as resp:
        assert resp.status == 401
    # Gone: a second eject finds nobody.
    status, body = await call(wcs, "DELETE", participants_url(wcs, alice, bob.pid), alice)
    assert status == 404 and code(body) == "not_found"
    audit = (wcs.cfg.log_dir / "audit.log").read_text()
    assert '"event":"participant.eject"' in audit


async def test_the_organizer_cannot_be_ejected(wcs: Wcs) -> None:
    alice, carol, _ = await meeting(wcs, "R6")
    again = await wcs.admit("R6", ORGANIZER)  # the organizer's second device
    for target in (alice, again):
        status, body = await call(wcs, "DELETE", participants_url(wcs, alice, target.pid),
                                  alice)
        assert status == 409 and code(body) == "cannot_eject_organizer"
    async with wcs.http.get(wcs.items_url(alice.conference), headers=alice.headers) as resp:
        assert resp.status == 200
    status, _ = await call(wcs, "DELETE", participants_url(wcs, carol, alice.pid), carol)
    assert status == 403


# -- the lock ------------------------------------------------------------------------------

async def test_a_locked_conference_admits_only_its_organizer(wcs: Wcs) -> None:
    alice, carol, bob = await meeting(wcs, "R7")
    ws, _ = await connect(wcs, bob)
    try:
        status, body = await settings(wcs, carol, {"locked": True})
        assert status == 403 and code(body) == "forbidden"
        for bad in ({"locked": "yes"}, {"locked": None}, {"locked": 1}, {}, {"lock": True}):
            status, body = await settings(wcs, alice, bad)
            assert status == 400 and code(body) == "bad_request", bad
        status, body = await settings(wcs, alice, {"locked": True})
        assert status == 200
        assert body == {"conference": alice.conference, "downloads": True, "locked": True}
        event = await recv_type(ws, "conference.updated")
        assert event["locked"] is True and event["downloads"] is True
        refused = await wcs.admit("R7", "dave@contoso.example", organizer=ORGANIZER,
                                  expect=403)
        assert refused.pid == ""
        async with wcs.internal.post(
                f"{wcs.internal_url}/internal/v1/conferences/R7/participants",
                json={"tenant": "contoso.example", "organizer": ORGANIZER,
                      "user": "dave@contoso.example", "role": "presenter"}) as resp:
            assert resp.status == 403
            assert code(await resp.json()) == "conference_locked"
        again = await wcs.admit("R7", ORGANIZER)  # the organizer still joins
        assert again.role == "organizer"
        status, body = await call(wcs, "GET", participants_url(wcs, bob), bob)
        assert body["locked"] is True and len(body["participants"]) == 4
        # Both settings in one PATCH; then unlocked, others join again.
        status, body = await settings(wcs, alice, {"locked": False, "downloads": False})
        assert body == {"conference": alice.conference, "downloads": False, "locked": False}
        event = await recv_type(ws, "conference.updated")
        assert (event["locked"], event["downloads"]) == (False, False)
        dave = await wcs.admit("R7", "dave@contoso.example", organizer=ORGANIZER)
        assert dave.role == "attendee"
    finally:
        await ws.close()


async def test_a_reopened_conference_starts_unlocked(wcs: Wcs) -> None:
    alice, _, _ = await meeting(wcs, "R8")
    assert (await settings(wcs, alice, {"locked": True}))[0] == 200
    assert await wcs.end("R8") == 204
    reopened = await wcs.admit("R8", ORGANIZER)
    assert reopened.conference == alice.conference
    bob = await wcs.admit("R8", BOB, organizer=ORGANIZER)
    status, body = await call(wcs, "GET", participants_url(wcs, bob), bob)
    assert status == 200 and body["locked"] is False
    assert [p["id"] for p in body["participants"]] == [reopened.pid, bob.pid]


# -- bad input -----------------------------------------------------------------------------

async def test_bad_role_changes_and_ejects_are_refused(wcs: Wcs) -> None:
    alice, carol, bob = await meeting(wcs, "R9")
    other = await wcs.admit("R9X", "zoe@contoso.example")
    zed = await wcs.admit("R9X", "zed@contoso.example", organizer="zoe@contoso.example")
    assert await wcs.revoke(carol) == 204
    for pid in ("nosuchpid", zed.pid, carol.pid, other.pid, "..", "a" * 65):
        status, body = await set_role(wcs, alice, pid, "presenter")
        assert status == 404 and code(body) == "not_found", pid
        status, body = await call(wcs, "DELETE", participants_url(wcs, alice, pid), alice)
        assert status == 404 and code(body) == "not_found", pid
    url = participants_url(wcs, alice, bob.pid)
    for bad in ({"role": "organizer"}, {"role": "boss"}, {"role": 1}, {"role": None}, {},
                {"role": "presenter", "extra": 1}, ["presenter"], "presenter"):
        status, body = await call(wcs, "PATCH", url, alice, body=bad)
        assert status == 400 and code(body) == "bad_request", bad
    for raw in (b"not json", b"{", b'{"role": "\\ud800"}', b"{" * 100, b""):
        status, body = await call(wcs, "PATCH", url, alice, data=raw)
        assert status == 400 and code(body) == "bad_request", raw
    status, body = await call(wcs, "PATCH", url, alice, data=b'{"role": "presenter"}',
                              content_type="text/plain")
    assert status == 415
    status, body = await call(wcs, "PATCH", url, alice, data=b" " * 20_000)
    assert status == 413
    async with wcs.http.post(participants_url(wcs, alice), headers=alice.headers) as resp:
        assert resp.status == 405
    # Nothing changed.
    status, body = await call(wcs, "GET", participants_url(wcs, bob), bob)
    assert [(p["id"], p["role"]) for p in body["participants"]] == [
        (alice.pid, "organizer"), (bob.pid, "attendee")]


async def test_a_browser_cookie_from_another_site_changes_no_role(wcs: Wcs) -> None:
    """The cross-site rule of docs/protocol.md §3 covers the new state-changing routes."""
    alice, _, bob = await meeting(wcs, "R10")
    url = participants_url(wcs, alice, bob.pid)
    headers = {"Cookie": f"webconf_auth={alice.cookie}", "Origin": "https://evil.example"}
    async with wcs.http.patch(url, json={"role": "presenter"}, headers=headers) as resp:
        assert resp.status == 403
    async with wcs.http.delete(url, headers=headers) as resp:
        assert resp.status == 403
    status, body = await call(wcs, "GET", participants_url(wcs, bob), bob)
    assert [p["role"] for p in body["participants"]] == ["organizer", "presenter",
                                                         "attendee"]  # unchanged


# -- the client's roster -------------------------------------------------------------------

def test_the_client_roster_applies_only_what_it_has_not_seen() -> None:
    roster = LiveRoster()
    roster.load({"conference": "C", "seq": 5, "locked": False, "participants": [
        {"id": "p1", "user": ORGANIZER, "role": "organizer", "joined_at": "2026-01-01T00:00:00Z"},
        {"id": "p2", "user": BOB, "role": "attendee", "joined_at": "2026-01-01T00:00:01Z"}]})
    assert list(roster.members) == ["p1", "p2"] and roster.seq == 5
    joined = {"type": "participant.joined", "participant": {"id": "p2", "user": BOB,
                                                            "role": "attendee"}}
    assert not roster.apply({**joined, "seq": 5})  # the GET had it already
    assert not roster.apply({"type": "participant.left", "participant": {
        "id": "p2", "user": BOB, "role": "attendee"}, "seq": 4})
    assert roster.apply({"type": "participant.joined", "seq": 6, "participant": {
        "id": "p3", "user": CAROL, "role": "presenter"}})
    assert roster.apply({"type": "participant.role_changed", "seq": 7, "participant": {
        "id": "p2", "user": BOB, "role": "presenter"}})
    assert roster.members["p2"].role == "presenter"
    assert roster.members["p2"].joined_at == "2026-01-01T00:00:01Z"
    assert roster.apply({"type": "participant.left", "seq": 8, "participant": {
        "id": "p3", "user": CAROL, "role": "presenter"}})
    assert not roster.apply({"type": "conference.updated", "seq": 9, "downloads": True,
                             "locked": True})
    assert roster.locked and roster.seq == 9 and list(roster.members) == ["p1", "p2"]
    assert not roster.apply({"type": "participant.joined", "seq": 10})  # malformed: ignored
