"""The internal API's operations, defined once for both of its transports.

The same admit, revoke, lease renewal and release arrive as HTTP requests
(`api/internal.py`, docs/protocol.md §7.2) and as operations on the focus's persistent link
(`api/link.py`, §7.3). Each transport only unpacks its own framing; the validation, the
service call and the answer live here, so the two cannot drift apart. Every refusal is a
`ServiceError` (its code picks the status, `api/errors.py`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..roster import read_roster
from ..service import ConferenceService, ServiceError, valid_id

ADMIT_ANSWER_FIELDS = ("conference", "participant", "role", "cookie", "expires_at",
                       "webconf_url")
"""The admit answer's keys, in their wire order (docs/protocol.md §7.2)."""
LEASE_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""A focus lease name, `<node>.<incarnation>` (docs/protocol.md §7.4); used with fullmatch."""


@dataclass(frozen=True, slots=True)
class AdmitRequest:
    """A validated admission request (docs/protocol.md §7.2, Admit)."""

    uri_id: str
    tenant: str
    organizer: str
    user: str
    role: str
    focus_node: str | None


def lease_name(value: object, what: str) -> str:
    """`value` if it is a lease name, else a 400 naming `what`."""
    if not isinstance(value, str) or not LEASE_RE.fullmatch(value):  # fullmatch: no "x\n"
        raise ServiceError("bad_request", f"invalid {what}")
    return value


def conference_id(value: object) -> str:
    """`value` if it is a conference id (a URI's or a public one), else a 400."""
    if not isinstance(value, str) or not valid_id(value):
        raise ServiceError("bad_request", "invalid conference id")
    return value


def admit_request(uri_id: object, body: Mapping[str, Any]) -> AdmitRequest:
    """Validate an admission: the URI's conference id and the body's fields (other keys
    are ignored)."""
    conference = conference_id(uri_id)
    fields = {}
    for name in ("tenant", "organizer", "user"):
        value = body.get(name)
        if not isinstance(value, str):
            raise ServiceError("bad_request", f"{name} must be a string")
        fields[name] = value
    role = body.get("role", "attendee")
    if not isinstance(role, str):
        raise ServiceError("bad_request", "role must be a string")
    focus_node = body.get("focus_node")
    if focus_node is not None:
        focus_node = lease_name(focus_node, "focus_node")
    return AdmitRequest(conference, fields["tenant"], fields["organizer"], fields["user"],
                        role, focus_node)


async def admit(service: ConferenceService, req: AdmitRequest) -> dict[str, Any]:
    """Admit and answer with the join body (status 201)."""
    admission = await service.admit_participant(
        req.uri_id, tenant=req.tenant, organizer=req.organizer, user=req.user,
        role=req.role, focus_node=req.focus_node)
    answer = admission.to_json()
    return {name: answer[name] for name in ADMIT_ANSWER_FIELDS}


async def revoke(service: ConferenceService, conference: object, participant: object) -> None:
    """Revoke a participant (status 204; idempotent); an unknown one is a 404."""
    conf = conference_id(conference)
    if not isinstance(participant, str) or not valid_id(participant) or (
            not await service.revoke_participant(conf, participant)):
        raise ServiceError("not_found", "unknown participant")


async def end(service: ConferenceService, conference: object) -> None:
    """End a conference (status 204); an unknown one is a 404."""
    if not await service.end_conference(conference_id(conference)):
        raise ServiceError("not_found", "unknown conference")


async def heartbeat(service: ConferenceService, name: object) -> None:
    """Create or renew a focus lease (status 204)."""
    await service.heartbeat_focus_node(lease_name(name, "focus node name"))


async def release(service: ConferenceService, name: object) -> None:
    """Drop a lease at its focus's clean stop (status 204; an unknown one is gone already)."""
    await service.release_focus_node(lease_name(name, "focus node name"))


async def roster(service: ConferenceService, op: Mapping[str, Any]) -> dict[str, Any]:
    """A conference's roster for the focus's RFC 4575 subscriptions (status 200; the link's
    `roster` operation, docs/protocol.md §7.3): named by its public id (`conference`) or by
    its URI (`uri_id`, `organizer`), always with the subscriber's `tenant` (another
    tenant's conference: 403). Unknown or ended: 404."""
    tenant = op.get("tenant")
    if not isinstance(tenant, str):
        raise ServiceError("bad_request", "tenant must be a string")
    if op.get("conference") is not None:
        conf = await service.store.conference(conference_id(op.get("conference")))
    else:
        organizer = op.get("organizer")
        if not isinstance(organizer, str):
            raise ServiceError("bad_request", "organizer must be a string")
        conf = await service.store.conference_by_uri(tenant, organizer,
                                                     conference_id(op.get("uri_id")))
    if conf is None or conf.ended_at is not None:
        raise ServiceError("not_found", "unknown conference")
    if conf.tenant != tenant:
        raise ServiceError("forbidden", "the conference belongs to another tenant")
    current = await read_roster(service.store, conf.id)
    return {"conference": current.conference, "seq": current.seq, "locked": current.locked,
            "participants": [{"id": p.id, "user": p.user, "role": p.role,
                              "joined_at": p.joined_at} for p in current.participants]}
