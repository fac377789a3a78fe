"""Group commit (conferencing/store/writer.py): concurrent admissions and revocations share
transactions, and each caller still sees exactly what a transaction of its own would give
it: its row committed before it returns, its own result, its own error, a gap-free event log
in the callers' order. Every test runs on both backends."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from conferencing.store import ConferenceRow, ParticipantRow, Store
from conferencing.store.log import NOTIFY_CHANNEL, NewEvent, parse_notify
from conferencing.store.schema import participants, revoked_cookies
from tests.backends import _LoopThread
from tests.tcp_relay import TcpRelay
from webconf.deploy.db import is_unavailable

TENANT = "contoso.example"
CONFERENCES = [f"conf{i}" for i in range(5)]


async def open_store(url: str) -> Store:
    """The store at `url` with a tenant and the five conferences."""
    opened = await Store.open(url)
    now = time.time()
    assert await opened.create_tenant(TENANT, b"k" * 40, 1, now)
    for i, conference in enumerate(CONFERENCES):
        await opened.create_conference(ConferenceRow(
            id=conference, tenant=TENANT, organizer=f"org{i}@{TENANT}", uri_id=f"room{i}",
            created_at=now, ended_at=None))
    return opened


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[Store]:
    """For the tests that need PostgreSQL itself (NOTIFY, a connection cut)."""
    opened = await open_store(pg_url)
    try:
        yield opened
    finally:
        await opened.close()


def participant(pid: str, conference: str, *, jti: str | None = None) -> ParticipantRow:
    now = time.time()
    return ParticipantRow(id=pid, conference_id=conference, tenant=TENANT,
                          user=f"{pid}@{TENANT}", role="attendee", jti=jti or f"jti-{pid}",
                          joined_at=now, expires_at=now + 3600, left_at=None)


def joined(pid: str) -> list[NewEvent]:
    return [NewEvent("participant.joined", json.dumps({"participant": {"id": pid}}))]


def left(p: ParticipantRow) -> list[NewEvent]:
    return [NewEvent("revoked", json.dumps({"reason": "left"}), participant_id=p.id,
                     final=True),
            NewEvent("participant.left", json.dumps({"participant": {"id": p.id}}))]


def pid_of(payload: str) -> str:
    return str(json.loads(payload)["participant"]["id"])


async def log_of(store: Store, conference: str) -> list[tuple[int, str, str]]:
    """(seq, type, payload) of every logged event of the conference, oldest first."""
    rows = await store.events_after(conference, 0, limit=10_000)
    return [(r.seq, r.type, r.payload) for r in rows]


async def assert_gap_free(store: Store, conference: str) -> list[tuple[int, str, str]]:
    events = await log_of(store, conference)
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    assert (await store.last_seqs([conference]))[conference] == len(events)
    return events


async def test_concurrent_admissions_share_transactions(store: Store) -> None:
    before = store.writer.transactions
    rows = [participant(f"p{i}", CONFERENCES[i % 5]) for i in range(300)]
    woken: list[tuple[str, int]] = []
    store.on_commit = lambda conference, seq, _rows: woken.append((conference, seq))
    results = await asyncio.gather(*(store.add_participant(r, joined(r.id)) for r in rows))
    assert results == [None] * 300
    transactions = store.writer.transactions - before
    assert 1 <= transactions <= 30, transactions  # 300 admissions, a handful of commits
    assert (await store.counts())["active_participants"] == 300
    for conference in CONFERENCES:
        events = await assert_gap_free(store, conference)
        expected = [r.id for r in rows if r.conference_id == conference]  # callers' order
        assert [pid_of(payload) for _, _, payload in events] == expected
        assert {t for _, t, _ in events} == {"participant.joined"}
        assert {r.id for r in await store.active_participants(conference)} == set(expected)
        # The feed was woken after the commits, up to the conference's last seq.
        assert max(seq for c, seq in woken if c == conference) == len(expected)


async def test_concurrent_revocations_revoke_each_participant_once(store: Store) -> None:
    rows = [participant(f"r{i}", CONFERENCES[i % 5]) for i in range(40)]
    await asyncio.gather(*(store.add_participant(r, joined(r.id)) for r in rows))
    now = time.time()
    calls: list[tuple[str, str]] = []
    for _ in range(3):  # every participant three times, interleaved, plus strangers
        calls += [(r.conference_id, r.id) for r in rows]
    calls += [(CONFERENCES[0], "nobody"), (CONFERENCES[1], rows[0].id)]  # wrong conference
    results = await asyncio.gather(*(store.revoke_participant(c, pid, now, left)
                                     for c, pid in calls))
    winners = results[:len(rows)]  # the first call of each participant, in callers' order
    assert [p.id if p else None for p in winners] == [r.id for r in rows]
    assert all(p is not None and p.left_at == now for p in winners)
    assert results[len(rows):] == [None] * (len(calls) - len(rows))
    async with store.engine.connect() as conn:
        jtis = (await conn.execute(select(revoked_cookies.c.jti))).scalars().all()
        active = await conn.scalar(select(func.count()).select_from(participants).where(
            participants.c.left_at.is_(None)))
    assert sorted(jtis) == sorted(r.jti for r in rows)  # one revocation row each
    assert active == 0
    for conference in CONFERENCES:
        events = await assert_gap_free(store, conference)
        mine = [r.id for r in rows if r.conference_id == conference]
        revocations = events[len(mine):]
        assert [(t, pid_of(payload) if t == "participant.left" else None)
                for _, t, payload in revocations] == [
            item for pid in mine for item in (("revoked", None), ("participant.left", pid))]
    # Revoked once, it stays revoked: the next call is None.
    assert await store.revoke_participant(rows[0].conference_id, rows[0].id, now, left) is None


async def test_a_failing_operation_fails_only_its_caller(store: Store) -> None:
    await store.add_participant(participant("victim", CONFERENCES[0]), joined("victim"))
    retried = store.writer.retried_batches
    seq_before = (await store.last_seqs([CONFERENCES[0]]))[CONFERENCES[0]]

    def exploding(p: ParticipantRow) -> list[NewEvent]:
        raise RuntimeError("the events callback failed")

    calls: list[Awaitable[Any]] = []
    good = [participant(f"g{i}", CONFERENCES[i % 5]) for i in range(20)]
    for i, row in enumerate(good):
        calls.append(store.add_participant(row, joined(row.id)))
        if i == 5:  # no such conference: a foreign key violation
            calls.append(store.add_participant(participant("lost", "no-such-conference")))
        if i == 10:  # the victim's jti again: a unique violation
            calls.append(store.add_participant(participant("twin", CONFERENCES[1],
                                                           jti="jti-victim")))
        if i == 15:
            calls.append(store.revoke_participant(CONFERENCES[0], "victim", time.time(),
                                                  exploding))
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 3 and results.count(None) == 20, results
    assert isinstance(results[6], IntegrityError) and isinstance(results[12], IntegrityError)
    assert isinstance(results[18], RuntimeError)
    assert not any(is_unavailable(e) for e in errors)
    assert store.writer.retried_batches > retried  # they did share a batch, then went alone
    assert await store.participant("lost") is None and await store.participant("twin") is None
    victim = await store.participant("victim")
    assert victim is not None and victim.left_at is None  # its failed revocation rolled back
    assert (await store.cookie_state("jti-victim", CONFERENCES[0])).revoked is False
    for row in good:
        assert await store.participant(row.id) == row
    for conference in CONFERENCES:
        await assert_gap_free(store, conference)
    events = await log_of(store, CONFERENCES[0])
    assert len(events) == seq_before + 4  # g0, g5, g10, g15: nothing of the failures


async def test_a_caller_cancelled_before_its_batch_has_nothing_written(store: Store) -> None:
    gone = asyncio.ensure_future(store.add_participant(participant("gone", CONFERENCES[0]),
                                                       joined("gone")))
    await asyncio.sleep(0)  # queued; its batch starts on the next turn of the loop
    gone.cancel()
    await store.add_participant(participant("kept", CONFERENCES[0]), joined("kept"))
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert await store.participant("gone") is None
    events = await assert_gap_free(store, CONFERENCES[0])
    assert [pid_of(payload) for _, _, payload in events] == ["kept"]


async def test_other_writers_run_beside_the_batches(store: Store) -> None:
    """The store's other writers (on SQLite: the same write lock) interleave with batches."""
    now = time.time()
    rows = [participant(f"m{i}", CONFERENCES[1 + i % 4]) for i in range(200)]
    outcomes = await asyncio.gather(
        *(store.add_participant(r, joined(r.id)) for r in rows[:100]),
        store.end_conference(CONFERENCES[0], now,
                             [NewEvent("conference.ended", "{}", final=True)]),
        *(store.heartbeat_focus_node(f"node{i}", now) for i in range(5)),
        store.purge_expired_revocations(now - 7200),
        *(store.add_participant(r, joined(r.id)) for r in rows[100:]),
        store.trim_events(now - 7200))
    assert outcomes[:100] + outcomes[107:207] == [None] * 200
    assert (await store.counts())["active_participants"] == 200
    for conference in CONFERENCES:
        await assert_gap_free(store, conference)
    assert (await log_of(store, CONFERENCES[0]))[-1][1] == "conference.ended"


@pytest.mark.sqlite_only
async def test_a_write_lock_held_elsewhere_fails_the_batch_once(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite's write lock held by another process past the busy timeout: every caller gets
    SQLite's "database is locked", at once, not after one timeout per operation."""
    from conferencing.store import writer

    monkeypatch.setattr(writer, "SQLITE_BUSY_TIMEOUT_SECONDS", 0.2)
    store = await open_store(store_url)
    other = sqlite3.connect(str(make_url(store_url).database), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        retried = store.writer.retried_batches
        rows = [participant(f"l{i}", CONFERENCES[i % 5]) for i in range(20)]
        results = await asyncio.gather(*(store.add_participant(r) for r in rows),
                                       return_exceptions=True)
        assert all(isinstance(r, OperationalError) and "locked" in str(r) for r in results)
        assert store.writer.retried_batches == retried
        other.execute("ROLLBACK")
        await asyncio.gather(*(store.add_participant(r) for r in rows))
        assert (await store.counts())["active_participants"] == 20
    finally:
        other.close()
        await store.close()


class Reader:
    """Reads from a connection of its own, synchronously: while it runs, the store's event
    loop is blocked, so nothing the store left to do after answering can happen meanwhile."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self._thread: _LoopThread | None = None
        self._pg: asyncpg.Connection | None = None
        self._sqlite: sqlite3.Connection | None = None
        if self.url.get_backend_name() == "sqlite":
            self._sqlite = sqlite3.connect(str(self.url.database), check_same_thread=False)
        else:
            self._thread = _LoopThread()
            self._pg = self._thread.run(asyncpg.connect(
                self.url.set(drivername="postgresql").render_as_string(hide_password=False)))

    def scalar(self, sql: str, *args: Any) -> Any:
        if self._sqlite is not None:
            return self._sqlite.execute(sql.replace("$1", "?"), args).fetchone()[0]
        assert self._thread is not None and self._pg is not None
        return self._thread.run(self._pg.fetchval(sql, *args))

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._thread is not None and self._pg is not None:
            self._thread.run(self._pg.close())
            self._thread.close()


@pytest.fixture
def reader(store_url: str) -> Iterator[Reader]:
    opened = Reader(store_url)
    try:
        yield opened
    finally:
        opened.close()


async def test_a_call_returns_only_after_its_transaction_committed(store: Store,
                                                                   reader: Reader) -> None:
    """Each caller looks, as soon as it has its answer, from a connection of its own, with
    the store's event loop blocked. On PostgreSQL a commit still to come could not happen
    meanwhile, so an early answer always fails this; on SQLite the writer thread races
    the look, which catches it most of the time."""
    unseen: list[str] = []

    async def admit_then_look(row: ParticipantRow) -> None:
        await store.add_participant(row, joined(row.id))
        if not reader.scalar("SELECT count(*) FROM participants WHERE id = $1", row.id):
            unseen.append(row.id)

    async def revoke_then_look(row: ParticipantRow) -> None:
        p = await store.revoke_participant(row.conference_id, row.id, time.time(), left)
        assert p is not None
        if not reader.scalar("SELECT count(*) FROM revoked_cookies WHERE jti = $1", row.jti):
            unseen.append(row.jti)

    rows = [participant(f"c{i}", CONFERENCES[i % 5]) for i in range(100)]
    await asyncio.gather(*(admit_then_look(r) for r in rows))
    await asyncio.gather(*(revoke_then_look(r) for r in rows))
    assert unseen == []


async def test_close_commits_what_was_queued_then_refuses(store_url: str,
                                                          store: Store) -> None:
    rows = [participant(f"q{i}", CONFERENCES[i % 5]) for i in range(50)]
    calls = [asyncio.ensure_future(store.add_participant(r, joined(r.id))) for r in rows]
    await asyncio.sleep(0)  # queued, not yet written
    await store.close()
    assert await asyncio.gather(*calls) == [None] * 50
    assert not [t for t in threading.enumerate() if t.name.startswith("store-writer")]
    with pytest.raises(RuntimeError, match="closed"):
        await store.add_participant(participant("late", CONFERENCES[0]))
    reopened = await Store.open(store_url)
    try:
        assert (await reopened.counts())["active_participants"] == 50
        for conference in CONFERENCES:
            assert len(await assert_gap_free(reopened, conference)) == 10
    finally:
        await reopened.close()


async def test_one_notify_per_conference_and_batch(pg_store: Store, pg_url: str) -> None:
    store = pg_store
    dsn = make_url(pg_url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    listener = await asyncpg.connect(dsn)
    heard: list[tuple[str, int]] = []

    def on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        parsed = parse_notify(payload)
        assert parsed is not None
        heard.append(parsed)

    await listener.add_listener(NOTIFY_CHANNEL, on_notify)
    try:
        before = store.writer.transactions
        rows = [participant(f"n{i}", CONFERENCES[i % 5]) for i in range(300)]
        await asyncio.gather(*(store.add_participant(r, joined(r.id)) for r in rows))
        transactions = store.writer.transactions - before
        async with asyncio.timeout(30):
            while not all((c, 60) in heard for c in CONFERENCES):
                await asyncio.sleep(0.05)
        assert len(heard) <= transactions * len(CONFERENCES)
        assert len(set(heard)) == len(heard)
    finally:
        await listener.close()


# -- the database out of reach (PostgreSQL: a relay that cuts every connection) -------------


async def test_an_outage_fails_every_caller_with_the_original_error(
        pg_store: Store, relay: TcpRelay, pg_url: str) -> None:
    store = pg_store
    relayed = await Store.open(relay.url_for(pg_url), create=False)
    try:
        await relayed.add_participant(participant("before", CONFERENCES[0]))
        retried = relayed.writer.retried_batches
        await asyncio.to_thread(relay.cut)
        calls: list[Callable[[], Awaitable[Any]]] = [
            *(lambda i=i: relayed.add_participant(participant(f"o{i}", CONFERENCES[i % 5]))
              for i in range(10)),
            lambda: relayed.revoke_participant(CONFERENCES[0], "before", time.time(), left)]
        results = await asyncio.gather(*(call() for call in calls), return_exceptions=True)
        assert all(isinstance(r, Exception) and is_unavailable(r) for r in results), results
        assert relayed.writer.retried_batches == retried  # no futile one-by-one retries
        await asyncio.to_thread(relay.reopen)
        await relayed.add_participant(participant("after", CONFERENCES[0]))
        assert await relayed.revoke_participant(CONFERENCES[0], "before", time.time(), left)
    finally:
        await relayed.close()
    assert await store.participant("o0") is None
    assert await store.participant("after") is not None
    await assert_gap_free(store, CONFERENCES[0])



# -- guarded admissions: the conference's state is read in the admission's transaction -------


async def test_a_guarded_admission_goes_in_only_while_the_conference_is_open(
        store: Store) -> None:
    conference, organizer = CONFERENCES[1], f"org1@{TENANT}"
    assert await store.add_participant_if_open(participant("open", conference), joined("open"))
    assert await store.set_conference_settings(conference, {"locked": True}, time.time(),
                                               lambda _s: ())
    assert not await store.add_participant_if_open(participant("late", conference),
                                                   joined("late"))
    boss = participant("boss", conference)
    boss = ParticipantRow(**{**boss.__dict__, "user": organizer})
    assert await store.add_participant_if_open(boss, joined("boss"))  # the organizer may
    assert await store.end_conference(conference, time.time()) is not None
    assert not await store.add_participant_if_open(
        ParticipantRow(**{**participant("again", conference).__dict__, "user": organizer}))
    assert not await store.add_participant_if_open(participant("nowhere", "no-such-conf"))
    assert await store.participant("late") is None and await store.participant("again") is None
    types = [t for _, t, _ in await assert_gap_free(store, conference)]
    assert types.count("participant.joined") == 2  # the refused ones logged nothing


async def test_guarded_admissions_in_one_batch_are_decided_one_by_one(store: Store) -> None:
    await store.set_conference_settings(CONFERENCES[2], {"locked": True}, time.time(),
                                        lambda _s: ())
    rows = [participant(f"g{i}", CONFERENCES[2 + i % 2]) for i in range(40)]
    results = await asyncio.gather(*(store.add_participant_if_open(r, joined(r.id))
                                     for r in rows))
    assert results == [i % 2 == 1 for i in range(40)]
    for conference in CONFERENCES[2:4]:
        await assert_gap_free(store, conference)


async def test_a_commit_hands_its_own_log_rows_to_the_hook(store: Store) -> None:
    seen: list[tuple[str, int, list[tuple[int, str]]]] = []
    store.on_commit = lambda conference, seq, rows: seen.append(
        (conference, seq, [(r.seq, r.type) for r in rows]))
    await asyncio.gather(*(store.add_participant(participant(f"h{i}", CONFERENCES[4]),
                                                 joined(f"h{i}")) for i in range(5)))
    logged = [(seq, t) for seq, t, _ in await log_of(store, CONFERENCES[4])]
    assert [row for _, _, rows in seen for row in rows] == logged  # exactly the log's rows
    assert seen[-1][1] == logged[-1][0]
