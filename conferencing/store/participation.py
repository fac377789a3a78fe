"""The store's queries for roles, the roster and the conference's settings
(docs/protocol.md §8.3, §9.2): a mixin of `Store`, so that store.py stays one screenful
of concerns fewer.

Every write here follows the event log's rule (log.py): lock the conference row first,
change, append the events in the same transaction, announce after the commit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from . import log
from .log import NewEvent
from .schema import conferences, participants

CONFERENCE_SETTINGS = ("downloads", "locked")
"""The `conferences` columns an organizer's `PATCH /v1/conferences/{conf}` sets."""


@dataclass(frozen=True)
class ParticipantRow:
    id: str
    conference_id: str
    tenant: str
    user: str
    role: str
    jti: str
    joined_at: float
    expires_at: float
    left_at: float | None
    focus_node: str | None = None
    """The focus lease ("node.incarnation") holding the participant's dialog."""


@dataclass(frozen=True)
class RosterRows:
    """A conference's live participants with the log position they reflect."""

    last_seq: int
    locked: bool
    participants: tuple[ParticipantRow, ...]
    """Not revoked (`left_at` NULL), by `joined_at` then id."""


@dataclass(frozen=True)
class RoleChange:
    """What `set_participant_role` found and did."""

    participant: ParticipantRow
    """The participant as it was before the change."""
    changed: bool
    """False: it already had that role, or it is an organizer (whose role never changes)."""


class ParticipationQueries:
    """Roles, roster and settings; `Store` provides the engine and the write path."""

    engine: AsyncEngine

    def _write(self) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        raise NotImplementedError

    def _announce(self, conference_id: str, seq: int) -> None:
        raise NotImplementedError

    async def roster(self, conference_id: str) -> RosterRows | None:
        """The conference's newest seq, lock and live participants, in ONE statement (so
        one snapshot: the seq is the log position the list reflects); None if unknown."""
        q = (select(conferences.c.last_seq, conferences.c.locked, *participants.c)
             .select_from(conferences.outerjoin(participants, and_(
                 participants.c.conference_id == conferences.c.id,
                 participants.c.left_at.is_(None))))
             .where(conferences.c.id == conference_id)
             .order_by(participants.c.joined_at, participants.c.id))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        if not rows:
            return None
        first = rows[0]._mapping
        live = tuple(ParticipantRow(**{c.name: r._mapping[c.name] for c in participants.c})
                     for r in rows if r._mapping["id"] is not None)
        return RosterRows(last_seq=int(first["last_seq"]), locked=bool(first["locked"]),
                          participants=live)

    async def set_participant_role(
            self, conference_id: str, pid: str, role: str, now: float,
            events: Callable[[ParticipantRow], Sequence[NewEvent]],
    ) -> RoleChange | None:
        """Give the live participant `pid` of the conference `role` and append
        `events(participant as it was)`, atomically, unless it has that role already or is
        an organizer. None: no such live participant."""
        async with self._write() as conn:
            if not await log.lock_conference(conn, conference_id):
                return None
            row = (await conn.execute(select(participants).where(
                participants.c.id == pid, participants.c.conference_id == conference_id,
                participants.c.left_at.is_(None)).with_for_update())).first()
            if row is None:
                return None
            before = ParticipantRow(**dict(row._mapping))
            if before.role == role or before.role == "organizer":
                return RoleChange(before, changed=False)
            await conn.execute(update(participants).where(participants.c.id == pid)
                               .values(role=role))
            seq = await log.append(conn, conference_id, events(before), now)
        self._announce(conference_id, seq)
        return RoleChange(before, changed=True)

    async def set_conference_settings(
            self, conference_id: str, changes: dict[str, bool], now: float,
            events: Callable[[dict[str, bool]], Sequence[NewEvent]],
    ) -> tuple[dict[str, bool], bool] | None:
        """Set `changes` (columns of `CONFERENCE_SETTINGS`) and, when one of them changed,
        append `events(every setting as it now is)` in the same transaction. Returns (the
        settings, whether anything changed); None for an unknown conference."""
        unknown = set(changes) - set(CONFERENCE_SETTINGS)
        if unknown:
            raise ValueError(f"not a conference setting: {sorted(unknown)}")
        columns = [conferences.c[name] for name in CONFERENCE_SETTINGS]
        async with self._write() as conn:
            if not await log.lock_conference(conn, conference_id):
                return None
            row = (await conn.execute(select(*columns).where(
                conferences.c.id == conference_id))).one()
            current: dict[str, Any] = {name: bool(row._mapping[name])
                                       for name in CONFERENCE_SETTINGS}
            after = {**current, **changes}
            if after == current:
                return after, False
            await conn.execute(update(conferences).where(conferences.c.id == conference_id)
                               .values(**changes))
            seq = await log.append(conn, conference_id, events(after), now)
        self._announce(conference_id, seq)
        return after, True
