"""The per-conference event log: rows appended in the transaction of the change they announce.

docs/protocol.md §4.4. Every change a channel client must hear of appends rows to
`conference_events` in the same transaction as the change, numbered by bumping
`conferences.last_seq`. The transaction first locks the conference row (`lock_conference`,
`FOR UPDATE` on PostgreSQL; SQLite has one writer anyway), so writers of one conference
commit one after another, in seq order, and the log has no gaps: a reader that has seen
seq N and finds N+1 has missed nothing. Locking the conference before any participant or
item row gives every writer the same lock order, so they cannot deadlock.

On PostgreSQL the transaction also queues `pg_notify('webconf_events', '<conference> <seq>')`,
which the server sends on commit only: ids and numbers, never a key or a name. A row is
the event's JSON without its seq; an `item.shared` row names only the item, and the node
that delivers it unwraps the item's key from `items` then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import conference_events, conferences

NOTIFY_CHANNEL = "webconf_events"
"""The PostgreSQL NOTIFY channel; its payload is `"<conference id> <seq>"`."""


@dataclass(frozen=True)
class NewEvent:
    """An event to append: its JSON (with its `type`, without `seq`) and its audience."""

    type: str
    payload: str
    participant_id: str | None = None
    """Only this participant's channels get it (None: the whole conference)."""
    final: bool = False
    """The event ends its recipients' channels."""


@dataclass(frozen=True)
class EventRow:
    conference_id: str
    seq: int
    type: str
    participant_id: str | None
    final: bool
    payload: str
    created_at: float


async def lock_conference(conn: AsyncConnection, conference_id: str) -> bool:
    """Lock the conference row for this transaction (first, always); False if unknown."""
    row = (await conn.execute(select(conferences.c.id).where(
        conferences.c.id == conference_id).with_for_update())).first()
    return row is not None


async def append(conn: AsyncConnection, conference_id: str, events: Sequence[NewEvent],
                 now: float) -> int:
    """Append `events` to the conference's log; return the seq of the last (0: none).

    The caller holds the conference's lock (`lock_conference`)."""
    if not events:
        return 0
    last = int((await conn.execute(update(conferences).where(
        conferences.c.id == conference_id).values(
        last_seq=conferences.c.last_seq + len(events)).returning(
        conferences.c.last_seq))).scalar_one())
    first = last - len(events) + 1
    await conn.execute(insert(conference_events), [
        event_row(conference_id, first + i, e, now) for i, e in enumerate(events)])
    if conn.dialect.name == "postgresql":
        await conn.execute(select(func.pg_notify(NOTIFY_CHANNEL, notify_payload(
            conference_id, last))))
    return last


def event_row(conference_id: str, seq: int, event: NewEvent, now: float) -> dict[str, object]:
    """The `conference_events` row of `event` numbered `seq`: one shape for every writer
    (`append`, and the group commit of writer.py)."""
    return {"conference_id": conference_id, "seq": seq, "type": event.type,
            "participant_id": event.participant_id, "final": event.final,
            "payload": event.payload, "created_at": now}


def notify_payload(conference_id: str, seq: int) -> str:
    """The NOTIFY payload announcing the conference's events up to `seq` (`parse_notify`)."""
    return f"{conference_id} {seq}"


async def rows_after(conn: AsyncConnection, conference_id: str, after: int,
                     limit: int) -> list[EventRow]:
    rows = (await conn.execute(select(conference_events).where(
        conference_events.c.conference_id == conference_id,
        conference_events.c.seq > after).order_by(conference_events.c.seq).limit(limit))).all()
    return [EventRow(**dict(r._mapping)) for r in rows]


def parse_notify(payload: str) -> tuple[str, int] | None:
    """The (conference id, seq) of a NOTIFY payload; None if it is not one of ours."""
    conference_id, _, seq = payload.partition(" ")
    if not conference_id or not seq.isdigit():
        return None
    return conference_id, int(seq)
