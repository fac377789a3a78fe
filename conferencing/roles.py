"""The organizer's hold on participants (docs/protocol.md §9.2): the roster over HTTP, role
changes and ejects.

- A role change is written with `participant.role_changed` in the same transaction
  (store/participation.py). The role in force is the store's: every cookie check reads it
  (`ConferenceService._authenticate`), each node's cookie cache drops the participant's
  entries when the row is read (and this node at once), and open channels follow it
  (`EventHub.follow_role`). An upload that began before a demotion is refused at its
  commit. The organizer's own role never changes: 409 `cannot_change_organizer`.
- An eject is a revocation (the path of BYE): the cookie is refused on every node, the
  participant's channels get `revoked` with reason "ejected" and close, and the focus
  sends BYE on its SIP dialog when it reads the `participant.left` row. An organizer
  cannot be ejected (409 `cannot_eject_organizer`): the organizer leaves with BYE, or ends
  the meeting for everyone.
"""

from __future__ import annotations

import json
import time
from typing import Any

from webconf.events import Participant, ParticipantRoleChanged

from .roster import Roster, read_roster
from .service import ConferenceService, Principal, ServiceError, rfc3339, valid_id
from .store import NewEvent, ParticipantRow

ASSIGNABLE_ROLES = ("presenter", "attendee")
"""What `PATCH .../participants/{pid}` may set; "organizer" is the conference's owner's."""


def require_organizer(who: Principal, action: str) -> None:
    if who.role != "organizer":
        raise ServiceError("forbidden", f"only the organizer may {action}")


def parse_role_change(body: object) -> str:
    """The role of a `PATCH .../participants/{pid}` body, `{"role": "presenter"|"attendee"}`
    exactly (else 400)."""
    if not isinstance(body, dict):
        raise ServiceError("bad_request", "body must be a JSON object")
    unknown = sorted(set(body) - {"role"})
    if unknown:
        raise ServiceError("bad_request", f"unknown field {unknown[0]!r}")
    role = body.get("role")
    if role not in ASSIGNABLE_ROLES:
        raise ServiceError("bad_request", "'role' must be \"presenter\" or \"attendee\"")
    return str(role)


def roster_view(roster: Roster) -> dict[str, Any]:
    """The JSON of `GET .../participants`."""
    return {"conference": roster.conference, "seq": roster.seq, "locked": roster.locked,
            "participants": [{"id": p.id, "user": p.user, "role": p.role,
                              "joined_at": rfc3339(p.joined_at)}
                             for p in roster.participants]}


async def roster(service: ConferenceService, who: Principal) -> dict[str, Any]:
    """`GET .../participants`: any participant of the conference."""
    return roster_view(await read_roster(service.store, who.conference_id))


async def change_role(service: ConferenceService, who: Principal, participant_id: str,
                      role: str) -> dict[str, Any]:
    """`PATCH .../participants/{pid}`: give the participant `role`; returns its entry."""
    require_organizer(who, "change roles")
    if not valid_id(participant_id):
        raise ServiceError("not_found", "unknown participant")

    def events(p: ParticipantRow) -> list[NewEvent]:
        event = ParticipantRoleChanged(Participant(id=p.id, user=p.user, role=role))
        return [NewEvent(type=event.TYPE,
                         payload=json.dumps(event.to_json(), separators=(",", ":")))]

    try:
        change = await service.store.set_participant_role(
            who.conference_id, participant_id, role, time.time(), events)
    finally:  # this node reads the role again from the commit on, not from the log read
        service.cookie_cache.drop_participant(who.conference_id, participant_id)
    if change is None:
        raise ServiceError("not_found", "unknown participant")
    p = change.participant
    if p.role == "organizer":
        raise ServiceError("cannot_change_organizer", "the organizer's role cannot change")
    if change.changed:
        service.audit.record("participant.role", tenant=who.tenant,
                             conference=who.conference_id, who=who.participant_id,
                             participant=p.id, role=role)
    return {"id": p.id, "user": p.user, "role": role, "joined_at": rfc3339(p.joined_at)}


async def eject(service: ConferenceService, who: Principal, participant_id: str) -> None:
    """`DELETE .../participants/{pid}`: revoke the participant (reason "ejected")."""
    require_organizer(who, "eject participants")
    if not valid_id(participant_id):
        raise ServiceError("not_found", "unknown participant")
    target = await service.store.participant(participant_id)
    if (target is None or target.conference_id != who.conference_id
            or target.left_at is not None):
        raise ServiceError("not_found", "unknown participant")
    if target.role == "organizer":  # an organizer's role never changes: no race here
        raise ServiceError("cannot_eject_organizer",
                           "the organizer cannot be ejected: leave (BYE) or end the meeting")
    if not await service.revoke_participant(who.conference_id, participant_id,
                                            reason="ejected"):
        raise ServiceError("not_found", "unknown participant")
    service.audit.record("participant.eject", tenant=who.tenant,
                         conference=who.conference_id, who=who.participant_id,
                         participant=participant_id)
