"""The store and the directory behave the same on SQLite and PostgreSQL (tests/backends.py):
races that end in a unique violation, the single-writer lock, and input that one engine
cannot store. Every test here runs on both backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from conferencing.store import ConferenceRow, ParticipantRow, Store
from focus.directory import Directory
from tests.conftest import Wcs

KEY = b"directory-key-for-the-tests-32b!"


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(store_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.mark.parametrize("turn", ["first", "second"])
async def test_each_test_has_a_database_of_its_own(store: Store, turn: str) -> None:
    """Both turns create the same tenant: the second would find the first's row if the
    databases were shared."""
    assert await store.counts() == {"conferences": 0, "items": 0, "active_participants": 0}
    assert await store.create_tenant("isolation.example", b"k" * 40, 1, time.time()) is True


async def test_racing_tenant_creations_make_one(store: Store) -> None:
    results = await asyncio.gather(*(
        store.create_tenant("race.example", bytes([i]) * 40, 1, time.time())
        for i in range(6)))
    assert sorted(results) == [False] * 5 + [True]
    key = await store.tenant_key("race.example")
    assert key is not None and key.version == 1


async def test_racing_conference_creations_agree_on_one(store: Store) -> None:
    """The unique (tenant, organizer, uri_id) violation maps to "the other writer's row"."""
    now = time.time()
    assert await store.create_tenant("contoso.example", b"k" * 40, 1, now)
    rows = [ConferenceRow(id=f"conf{i}", tenant="contoso.example",
                          organizer="alice@contoso.example", uri_id="weekly",
                          created_at=now, ended_at=None) for i in range(6)]
    created = await asyncio.gather(*(store.create_conference(row) for row in rows))
    assert len({row.id for row in created}) == 1
    assert await store.counts() == {"conferences": 1, "items": 0, "active_participants": 0}


async def test_the_single_writer_lock_is_sqlite_only(store: Store, backend: str) -> None:
    assert store.engine.dialect.name == backend
    assert (store._write_lock is not None) == (backend == "sqlite")


async def test_racing_users_of_a_new_tenant_all_land(store_url: str) -> None:
    """Each writer may find the tenant missing and insert it; the losers retry."""
    directory = await Directory.open(store_url, KEY)
    try:
        await asyncio.gather(*(directory.add_user(f"user{i}@new.example", f"pw{i}")
                               for i in range(6)))
        assert await directory.list_users() == [f"user{i}@new.example" for i in range(6)]
    finally:
        await directory.close()


async def test_nul_in_an_address_is_refused_not_a_server_error(wcs: Wcs) -> None:
    """PostgreSQL text cannot hold NUL: refused up front, the same on both backends."""
    user = "a\x00b@contoso.example"
    async with wcs.internal.post(
            f"{wcs.internal_url}/internal/v1/conferences/weekly/participants",
            json={"tenant": "contoso.example", "organizer": user, "user": user,
                  "role": "attendee"}) as resp:
        assert resp.status == 400, await resp.text()
    await wcs.admit("weekly", "alice@contoso.example")  # and the server is fine


async def test_an_end_racing_revocations_revokes_each_cookie_once(store: Store) -> None:
    """On PostgreSQL the end and the revocations run at once (no writer lock): the end must
    revoke only the participants that its own UPDATE marked left."""
    now = time.time()
    assert await store.create_tenant("contoso.example", b"k" * 40, 1, now)
    for round_ in range(5):
        conference = await store.create_conference(ConferenceRow(
            id=f"conf{round_}", tenant="contoso.example", organizer="alice@contoso.example",
            uri_id=f"weekly{round_}", created_at=now, ended_at=None))
        pids = [f"p{round_}x{i}" for i in range(8)]
        for pid in pids:
            await store.add_participant(ParticipantRow(
                id=pid, conference_id=conference.id, tenant="contoso.example",
                user=f"{pid}@contoso.example", role="attendee", jti=f"jti-{pid}",
                joined_at=now, expires_at=now + 3600, left_at=None))
        revoked = await asyncio.gather(
            *(store.revoke_participant(conference.id, pid, now) for pid in pids[::2]),
            store.end_conference(conference.id, now),
            *(store.revoke_participant(conference.id, pid, now) for pid in pids[1::2]))
        ended = revoked.pop(len(pids) // 2)
        by_revocation = {p.id for p in revoked if p is not None}
        assert by_revocation | {p.id for p in ended} == set(pids)  # type: ignore[union-attr]
        assert not by_revocation & {p.id for p in ended}  # type: ignore[union-attr]
        for pid in pids:
            state = await store.cookie_state(f"jti-{pid}", conference.id)
            assert state.revoked and state.conference_ended
