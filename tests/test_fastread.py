"""Per-request reads on SQLite without a thread hop (conferencing/store/fastread.py): the
same answers as through the engine, and a read that SQLite would make wait goes to the
engine instead of holding the event loop."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from conferencing.store import ConferenceRow, ItemRow, ParticipantRow, Store, presentation
from conferencing.store.log import NewEvent
from conferencing.store.schema import items

TENANT = "contoso.example"
CONF = "conf-fast"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'store.db'}")
    now = time.time()
    await opened.create_tenant(TENANT, b"k" * 40, 1, now)
    await opened.create_conference(ConferenceRow(
        id=CONF, tenant=TENANT, organizer=f"org@{TENANT}", uri_id="room", created_at=now,
        ended_at=None))
    try:
        yield opened
    finally:
        await opened.close()


def _participant(pid: str) -> ParticipantRow:
    now = time.time()
    return ParticipantRow(id=pid, conference_id=CONF, tenant=TENANT, user=f"{pid}@{TENANT}",
                          role="attendee", jti=f"jti-{pid}", joined_at=now,
                          expires_at=now + 3600, left_at=None)


async def _answers(store: Store) -> tuple[object, ...]:
    return (await store.events_after(CONF, 0), await store.cookie_state("jti-p1", CONF),
            await store.cookie_state("jti-p1", CONF, "item1"),
            await store.cookie_state("jti-gone", "no-such-conf"),
            await store.item_access(CONF, "item1"), await store.item_access(CONF, "nope"),
            await store.item_access("no-such-conf", "item1"),
            await store.last_seqs([CONF]), await store.last_seqs(["no-such-conf"]),
            await store.items(CONF), await store.items("no-such-conf"),
            await presentation.current(store, CONF))


async def test_the_same_answers_as_through_the_engine(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    await store.add_participant(_participant("p1"), [NewEvent(
        "participant.joined", json.dumps({"participant": {"id": "p1"}}))])
    await store.revoke_participant(CONF, "p1", time.time(), lambda p: [NewEvent(
        "revoked", "{}", participant_id=p.id, final=True)])
    async with store.engine.begin() as conn:
        await conn.execute(items.insert().values(
            id="item1", conference_id=CONF, tenant=TENANT, presenter_pid="p1",
            presenter=f"p1@{TENANT}", blob_id="blob1", wrapped_dek=b"w" * 40,
            tenant_key_version=1, sealed_name=b"n", sealed_content_type=b"t",
            sealed_sha256=None, plaintext_size=1, ciphertext_size=2, created_at=1.5))
    await store.set_conference_settings(CONF, {"downloads": False}, time.time(),
                                        lambda _s: ())
    await store.add_participant(replace(_participant("p3"), role="presenter"))
    outcome, _ = await presentation.set_state(store, CONF, "p3", "item1", 1, 1, time.time(),
                                              lambda: {"type": "presentation.shown"})
    assert outcome == "ok"
    fast = await _answers(store)
    assert store._reads is not None and store._reads.fallbacks == 0  # all ran on the loop
    monkeypatch.setattr(store, "_reads", None)
    assert fast == await _answers(store)
    item, switches = fast[4]  # type: ignore[misc]
    assert isinstance(item, ItemRow) and item.blob_id == "blob1"
    assert not switches.downloads and switches.server_decrypt
    assert fast[1].revoked and fast[0][1].final  # type: ignore[attr-defined,index]
    assert fast[7] == {CONF: 3} and fast[8] == {} and fast[10] == []  # type: ignore[misc]
    assert [i.id for i in fast[9]] == ["item1"]  # type: ignore[attr-defined]
    assert fast[11] is not None and fast[11].page == 1  # type: ignore[attr-defined]


async def test_a_read_that_cannot_run_here_goes_to_the_engine(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever keeps the loop's own read from running (here its database cannot be
    opened; in production SQLite answering busy instead of waiting) costs one fallback to
    the engine, with the same answer, and the next read tries the fast path again."""
    await store.add_participant(_participant("p2"), [NewEvent("participant.joined", "{}")])
    reads = store._reads
    assert reads is not None
    reads.close()
    monkeypatch.setattr(reads, "_database", str(tmp_path / "missing" / "store.db"))
    rows = await store.events_after(CONF, 0)
    assert [r.type for r in rows] == ["participant.joined"]
    assert reads.fallbacks == 1
    monkeypatch.undo()
    assert [r.type for r in await store.events_after(CONF, 0)] == ["participant.joined"]
    assert reads.fallbacks == 1  # the fast path again
