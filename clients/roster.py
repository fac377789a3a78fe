"""The roster as a client sees it (docs/protocol.md §9.2): loaded once with
`GET .../participants`, then kept current from the channel's `participant.joined`,
`participant.left` and `participant.role_changed` events; and the lines `webconf join`
prints for roster changes.

The roster answer carries the seq it reflects: an event with a seq not above it is already
in it (the channel may deliver events the GET has seen), and is skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from webconf.events import (
    ChannelEvent,
    EventError,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantRoleChanged,
    Revoked,
    event_seq,
    parse_event,
)


@dataclass(frozen=True, slots=True)
class Member:
    """One live participant."""

    id: str
    user: str
    """`user@tenant`."""
    role: str
    joined_at: str = ""
    """RFC 3339; empty for someone first seen by a `participant.joined` event."""


class LiveRoster:
    """Participant id -> `Member`, current as of `seq`."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.seq = 0
        """The newest event the roster reflects."""
        self.locked = False
        self.loaded = False

    def load(self, body: dict[str, Any]) -> None:
        """Replace the roster with a `GET .../participants` answer."""
        members: dict[str, Member] = {}
        for entry in body.get("participants", []):
            if not isinstance(entry, dict):
                continue
            pid, user, role = entry.get("id"), entry.get("user"), entry.get("role")
            if isinstance(pid, str) and isinstance(user, str) and isinstance(role, str):
                joined_at = entry.get("joined_at")
                members[pid] = Member(pid, user, role,
                                      joined_at if isinstance(joined_at, str) else "")
        self.members = members
        seq = event_seq(body)
        self.seq = seq if seq is not None else 0
        self.locked = body.get("locked") is True
        self.loaded = True

    def apply(self, data: dict[str, Any]) -> bool:
        """Apply one channel event (its JSON); True if it changed the roster."""
        seq = event_seq(data)
        if seq is not None and seq <= self.seq:
            return False  # the loaded roster has it already
        try:
            event = parse_event(data)
        except EventError:
            return False
        if seq is not None:
            self.seq = seq
        if isinstance(event, ParticipantJoined):
            who = event.participant
            self.members[who.id] = Member(who.id, who.user, who.role)
            return True
        if isinstance(event, ParticipantLeft):
            return self.members.pop(event.participant.id, None) is not None
        if isinstance(event, ParticipantRoleChanged):
            who = event.participant
            old = self.members.get(who.id)
            self.members[who.id] = Member(who.id, who.user, who.role,
                                          old.joined_at if old is not None else "")
            return old is None or old.role != who.role
        if data.get("type") == "conference.updated" and isinstance(data.get("locked"), bool):
            self.locked = bool(data["locked"])
        return False


def roster_line(event: ChannelEvent, show: Any = str) -> str | None:
    """The line `webconf join` prints for a roster change (None: not one). `show` escapes
    names chosen by others (clients/commands.py `show`)."""
    if isinstance(event, (ParticipantJoined, ParticipantLeft)):
        who = event.participant
        return f"{event.TYPE} {show(who.user)} ({show(who.role)})"
    if isinstance(event, ParticipantRoleChanged):
        who = event.participant
        return f"{event.TYPE} {show(who.user)} is now {show(who.role)}"
    if isinstance(event, Revoked):
        return "revoked" if event.reason == "left" else f"revoked ({show(event.reason)})"
    return None
