"""Conference ids are scoped to their organizer (issue 15, finding 3; docs/protocol.md §2.1).

The id in a conference URI is the organizer's own, as in Skype for Business: no tenant and no
organizer can take another's id, or learn from any answer whether another's id exists. The WCS
names each conference by a random public id of its own, which the join body, the cookie, the
HTTP API and the internal revoke/end carry.
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import Column, Float, MetaData, String, Table
from sqlalchemy.ext.asyncio import create_async_engine

from clients.sip import ConferenceDialog, SipConnection, SipError
from conferencing.store.store import Store, StoreSchemaError
from focus.directory import Directory
from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.protocol import REASON_ANOTHER_TENANT, conference_uri, valid_id

from .conftest import ServeProcess, Wcs

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"
CAROL = "carol@contoso.example"
MALLORY = "mallory@fabrikam.example"
TROY = "troy@fabrikam.example"


async def admit_raw(wcs: Wcs, uri_id: str, *, tenant: str, organizer: str,
                    user: str) -> tuple[int, dict[str, Any]]:
    """The internal admit call as the focus makes it; (status, JSON body)."""
    async with wcs.internal.post(
            f"{wcs.internal_url}/internal/v1/conferences/{uri_id}/participants",
            json={"tenant": tenant, "organizer": organizer, "user": user}) as resp:
        return resp.status, await resp.json()


async def list_items(wcs: Wcs, conf: str, cookie: str) -> tuple[int, dict[str, Any]]:
    async with wcs.http.get(f"{wcs.url}/v1/conferences/{conf}/items",
                            headers={"Authorization": f"Bearer {cookie}"}) as resp:
        return resp.status, await resp.json()


async def test_another_tenant_cannot_take_an_id(wcs: Wcs) -> None:
    mallory = await wcs.admit("K7Q9", MALLORY)
    alice = await wcs.admit("K7Q9", ALICE)  # was 403 while ids were global
    assert (mallory.role, alice.role) == ("organizer", "organizer")
    assert valid_id(mallory.conference) and valid_id(alice.conference)
    assert alice.conference != mallory.conference
    assert "K7Q9" not in (alice.conference, mallory.conference)
    # Each has a conference of their own: the other's items never show.
    assert (await wcs.upload(mallory, b"fabrikam secret", name="m.txt"))[0] == 201
    assert (await wcs.upload(alice, b"contoso secret", name="a.txt"))[0] == 201
    for who, other, name in ((alice, mallory, "a.txt"), (mallory, alice, "m.txt")):
        status, body = await list_items(wcs, who.conference, who.cookie)
        assert status == 200 and [i["name"] for i in body["items"]] == [name]
        status, _ = await list_items(wcs, other.conference, who.cookie)
        assert status == 403
    # Contoso users join alice's conference, not mallory's.
    bob = await wcs.admit("K7Q9", BOB, organizer=ALICE)
    assert bob.conference == alice.conference and bob.role == "attendee"


async def test_organizers_of_one_tenant_do_not_block_each_other(wcs: Wcs) -> None:
    bob = await wcs.admit("K7Q9", BOB)
    alice = await wcs.admit("K7Q9", ALICE)  # was 404: bob "owned" K7Q9
    assert alice.role == "organizer" and alice.conference != bob.conference
    carol = await wcs.admit("K7Q9", CAROL, organizer=ALICE)
    dave = await wcs.admit("K7Q9", "dave@contoso.example", organizer=BOB)
    assert (carol.conference, dave.conference) == (alice.conference, bob.conference)
    assert (await wcs.upload(bob, b"bob's deck"))[0] == 201
    status, body = await list_items(wcs, alice.conference, carol.cookie)
    assert status == 200 and body["items"] == []
    # Ending bob's K7Q9 leaves alice's alone.
    assert await wcs.end(bob.conference) == 204
    assert (await list_items(wcs, alice.conference, alice.cookie))[0] == 200
    assert (await list_items(wcs, bob.conference, dave.cookie))[0] == 401


async def test_ids_are_undetectable_from_another_tenant(wcs: Wcs) -> None:
    """Every probe a fabrikam user (or organizer) can make answers the same for an id that
    alice@contoso uses as for one nobody uses."""
    alice = await wcs.admit("USED", ALICE)
    assert (await wcs.upload(alice, b"contoso secret"))[0] == 201
    mallory = await wcs.admit("MINE", MALLORY)
    probes = [  # (tenant, organizer, user) of an admit of alice's id, as a forger would
        ("fabrikam.example", ALICE, MALLORY),
        ("contoso.example", ALICE, MALLORY),
        ("fabrikam.example", MALLORY, ALICE),
    ]
    for tenant, organizer, user in probes:
        used = await admit_raw(wcs, "USED", tenant=tenant, organizer=organizer, user=user)
        unused = await admit_raw(wcs, "UNUSED", tenant=tenant, organizer=organizer, user=user)
        assert used == unused, (tenant, organizer, user)
        assert used[0] == 403
    # Mallory as the organizer of alice's id gets a fresh conference of her own, exactly
    # as for an unused id; a fabrikam attendee of it finds nothing either way.
    for uri_id in ("USED", "UNUSED"):
        status, body = await admit_raw(wcs, uri_id, tenant="fabrikam.example",
                                       organizer=MALLORY, user=MALLORY)
        assert status == 201 and body["conference"] != alice.conference
    used = await admit_raw(wcs, "USED2", tenant="fabrikam.example", organizer=MALLORY,
                           user=TROY)
    unused = await admit_raw(wcs, "UNUSED2", tenant="fabrikam.example", organizer=MALLORY,
                             user=TROY)
    assert used == unused and used[0] == 404
    # The public API: alice's public id, her URI id and made-up ids answer alike.
    answers = [await list_items(wcs, conf, mallory.cookie)
               for conf in (alice.conference, "USED", secrets.token_urlsafe(16), "UNUSED")]
    assert all(answer == answers[0] for answer in answers), answers
    assert answers[0][0] == 403


async def test_reopened_conference_keeps_its_public_id(wcs: Wcs) -> None:
    alice = await wcs.admit("R1", ALICE)
    assert await wcs.end(alice.conference) == 204
    await wcs.admit("R1", BOB, organizer=ALICE, expect=404)  # ended: only alice reopens it
    again = await wcs.admit("R1", ALICE)
    assert again.conference == alice.conference
    assert (await list_items(wcs, alice.conference, again.cookie))[0] == 200


async def test_concurrent_first_joins_create_one_conference(wcs: Wcs) -> None:
    admissions = await asyncio.gather(*(wcs.admit("RACE", ALICE) for _ in range(8)))
    assert len({a.conference for a in admissions}) == 1


async def test_internal_revoke_and_end_take_the_public_id(wcs: Wcs) -> None:
    alice = await wcs.admit("PUB", ALICE)
    bob = await wcs.admit("PUB", BOB, organizer=ALICE)
    base = f"{wcs.internal_url}/internal/v1/conferences"
    async with wcs.internal.delete(f"{base}/PUB/participants/{bob.pid}") as resp:
        assert resp.status == 404  # the URI's id names nothing at the WCS
    async with wcs.internal.delete(f"{base}/PUB") as resp:
        assert resp.status == 404
    assert await wcs.revoke(bob) == 204
    async with wcs.internal.delete(f"{base}/{alice.conference}") as resp:
        assert resp.status == 204


async def test_old_schema_database_is_refused(tmp_path: Path) -> None:
    """There are no migrations yet: a database of the old schema fails at once, clearly."""
    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    old = MetaData()
    Table("conferences", old, Column("id", String(64), primary_key=True),
          Column("tenant", String(255), nullable=False),
          Column("organizer", String(512), nullable=False),
          Column("created_at", Float, nullable=False), Column("ended_at", Float))
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(old.create_all)
    await engine.dispose()
    with pytest.raises(StoreSchemaError, match="older schema"):
        await Store.open(url)
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'new.db'}")
    await store.close()


# -- end to end: SIP joins through the focus ---------------------------------------------------

USERS = {ALICE: "alice-pw", BOB: "bob-pw", MALLORY: "mallory-pw"}


@pytest.fixture
async def stack(deployment: Config, serve: ServeProcess) -> Config:
    directory = await Directory.for_deployment(deployment)
    try:
        for address, password in USERS.items():
            await directory.add_user(address, password)
    finally:
        await directory.close()
    await asyncio.to_thread(serve.start)
    return deployment


async def sip_join(cfg: Config, organizer: str, uri_id: str, user: str
                   ) -> tuple[SipConnection, ConferenceDialog]:
    conn = await SipConnection.open("127.0.0.1", cfg.focus.sip_port,
                                    ssl_context=tls.client_context(cfg),
                                    server_hostname="contoso.example")
    return conn, ConferenceDialog(conn, conference_uri(organizer, uri_id), user, USERS[user])


async def test_sip_joins_are_scoped_and_bye_revokes(stack: Config) -> None:
    connections: list[SipConnection] = []
    try:
        conn, mallory = await sip_join(stack, MALLORY, "K7Q9", MALLORY)
        connections.append(conn)
        mallory_joined = await mallory.join()
        conn, alice = await sip_join(stack, ALICE, "K7Q9", ALICE)
        connections.append(conn)
        alice_joined = await alice.join()
        assert alice_joined.role == "organizer"
        assert alice_joined.conference != mallory_joined.conference
        conn, bob = await sip_join(stack, ALICE, "K7Q9", BOB)
        connections.append(conn)
        bob_joined = await bob.join()
        assert bob_joined.conference == alice_joined.conference
        # Mallory is refused at alice's used id exactly as at an unused one.
        reasons = []
        for uri_id in ("K7Q9", "NEVER"):
            conn, probe = await sip_join(stack, ALICE, uri_id, MALLORY)
            connections.append(conn)
            with pytest.raises(SipError) as refused:
                await probe.join()
            reasons.append((refused.value.status, refused.value.reason))
        assert reasons == [(403, REASON_ANOTHER_TENANT)] * 2
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls.client_context(stack))) as http:
            async def items_status(joined: Any) -> int:
                async with http.get(
                        f"{joined.webconf_url}/v1/conferences/{joined.conference}/items",
                        headers={"Authorization": f"Bearer {joined.cookie}"}) as resp:
                    return resp.status

            assert await items_status(bob_joined) == 200
            assert await bob.leave() == 200  # the focus revokes bob by the public id
            for _ in range(50):
                if await items_status(bob_joined) == 401:
                    break
                await asyncio.sleep(0.1)
            assert await items_status(bob_joined) == 401
            assert await items_status(alice_joined) == 200
            assert await items_status(mallory_joined) == 200
    finally:
        for conn in connections:
            await conn.close()
