"""The roster of a conference: its live participants, as the store has them.

Stand-in of helper "roles"'s module (the lead keeps theirs at merge): same API. The focus's
`roster` link operation (docs/protocol.md §7.3) reads it for RFC 4575 subscriptions.
"""

from __future__ import annotations

from dataclasses import dataclass

from .store import Store

__all__ = ["Roster", "RosterEntry", "read_roster"]


@dataclass(frozen=True, slots=True)
class RosterEntry:
    id: str
    user: str
    role: str
    joined_at: float


@dataclass(frozen=True, slots=True)
class Roster:
    conference: str
    seq: int
    """The conference's newest event seq when read: the roster is as of that event."""
    locked: bool
    participants: tuple[RosterEntry, ...]
    """The live ones, by joined_at then id."""


async def read_roster(store: Store, conference_id: str) -> Roster:
    """The roster now (seq read first: a change after it is announced by a newer seq)."""
    conf = await store.conference(conference_id)
    seq = conf.last_seq if conf is not None else 0
    rows = await store.active_participants(conference_id)
    entries = sorted((RosterEntry(r.id, r.user, r.role, r.joined_at) for r in rows),
                     key=lambda e: (e.joined_at, e.id))
    return Roster(conference_id, seq, False, tuple(entries))
