"""The roster: who is in a conference now, as the store says (docs/protocol.md §9.2).

Read in one query with the conference's newest event seq, so that a reader (the HTTP
`GET .../participants`, the focus link's RFC 4575 notices) can apply the
`participant.joined`/`left`/`role_changed` events after that seq and stay exact.
"""

from __future__ import annotations

from dataclasses import dataclass

from .store import Store


@dataclass(frozen=True, slots=True)
class RosterEntry:
    id: str
    """The participant id."""
    user: str
    """`user@tenant`."""
    role: str
    """"organizer", "presenter" or "attendee": the role in force."""
    joined_at: float
    """UNIX seconds."""


@dataclass(frozen=True, slots=True)
class Roster:
    conference: str
    """The WCS's public conference id."""
    seq: int
    """The conference's newest event-log seq when read (0 if none): the roster reflects
    every event up to it."""
    locked: bool
    participants: tuple[RosterEntry, ...]
    """Live (not revoked) participants, by `joined_at` then id."""


async def read_roster(store: Store, conference_id: str) -> Roster:
    """The conference's roster. An unknown conference reads as an empty one (seq 0, not
    locked), as does an ended one's participants (all have left)."""
    rows = await store.roster(conference_id)
    if rows is None:
        return Roster(conference=conference_id, seq=0, locked=False, participants=())
    return Roster(conference=conference_id, seq=rows.last_seq, locked=rows.locked,
                  participants=tuple(RosterEntry(id=p.id, user=p.user, role=p.role,
                                                 joined_at=p.joined_at)
                                     for p in rows.participants))
