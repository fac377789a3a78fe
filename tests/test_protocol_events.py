"""The shared wire protocol: typed channel events (webconf.events), the join body and reason
constants (webconf.protocol), and how a client reads a refused join (clients.sip)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from clients.sip import SipError, sip_error_kind
from webconf import protocol
from webconf.events import (
    ConferenceEnded,
    ConferenceUpdated,
    ErrorFrame,
    EventError,
    ItemConversion,
    ItemRemoved,
    ItemShared,
    Participant,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantRoleChanged,
    Ping,
    Pong,
    Presentation,
    PresentationChanged,
    PresentationSet,
    Resumed,
    Revoked,
    SharedItem,
    UnknownEvent,
    Welcome,
    parse_event,
)

ITEM: dict[str, Any] = {"id": "it1", "name": "a.pdf", "content_type": "application/pdf",
                        "size": 3, "ciphertext_size": 91, "presenter": "sip:alice@x",
                        "created_at": "2026-01-01T00:00:00Z", "url": "https://w/c",
                        "key_url": "https://w/k"}
ENTRY = SharedItem(item=ITEM, key="a2V5", context="Y3R4")
ALICE = Participant(id="p1", user="alice@contoso.example", role="organizer")

# Each event beside the exact JSON text the WCS sent before the events were typed.
WIRE = [
    (ItemShared(ENTRY), {"type": "item.shared", "item": ITEM, "key": "a2V5", "context": "Y3R4"}),
    (ItemRemoved("it1"), {"type": "item.removed", "item": {"id": "it1"}}),
    (ParticipantJoined(ALICE), {"type": "participant.joined", "participant": {
        "id": "p1", "user": "alice@contoso.example", "role": "organizer"}}),
    (ParticipantLeft(ALICE), {"type": "participant.left", "participant": {
        "id": "p1", "user": "alice@contoso.example", "role": "organizer"}}),
    (Revoked("left"), {"type": "revoked", "reason": "left"}),
    (ConferenceEnded(), {"type": "conference.ended"}),
    (ItemConversion("it1", "failed", "LibreOffice could not read the deck"),
     {"type": "item.conversion", "item": "it1", "status": "failed",
      "error": "LibreOffice could not read the deck"}),
    (ConferenceUpdated(downloads=False), {"type": "conference.updated", "downloads": False,
                                          "locked": False}),
    (ConferenceUpdated(downloads=True, locked=True),
     {"type": "conference.updated", "downloads": True, "locked": True}),
    (ParticipantRoleChanged(Participant(id="p2", user="b@x", role="presenter")),
     {"type": "participant.role_changed",
      "participant": {"id": "p2", "user": "b@x", "role": "presenter"}}),
    (Revoked("ejected"), {"type": "revoked", "reason": "ejected"}),
    (Welcome(conference="C1", participant="p1", role="organizer", items=(ENTRY,)),
     {"type": "welcome", "conference": "C1", "participant": "p1", "role": "organizer",
      "seq": 0, "items": [{"item": ITEM, "key": "a2V5", "context": "Y3R4"}],
      "presentation": None}),
    (Welcome(conference="C1", participant="p1", role="organizer", items=(), seq=7),
     {"type": "welcome", "conference": "C1", "participant": "p1", "role": "organizer",
      "seq": 7, "items": [], "presentation": None}),
    (Welcome(conference="C1", participant="p1", role="organizer", items=(), seq=9,
             presentation=Presentation("it1", 3, "p2", 8)),
     {"type": "welcome", "conference": "C1", "participant": "p1", "role": "organizer",
      "seq": 9, "items": [], "presentation": {"item": "it1", "page": 3, "presenter": "p2",
                                              "seq": 8}}),
    (PresentationChanged("it1", 2, "p2", 11),
     {"type": "presentation.changed", "item": "it1", "page": 2, "presenter": "p2", "seq": 11}),
    (PresentationChanged(None, None, "p2", 12),
     {"type": "presentation.changed", "item": None, "page": None, "presenter": "p2",
      "seq": 12}),
    (PresentationSet("it1", 4), {"type": "presentation.set", "item": "it1", "page": 4}),
    (PresentationSet(None), {"type": "presentation.set", "item": None}),
    (ErrorFrame("forbidden", "no", "presentation.set"),
     {"type": "error", "code": "forbidden", "message": "no", "request": "presentation.set"}),
    (Resumed(conference="C1", participant="p1", role="attendee", seq=12),
     {"type": "resumed", "conference": "C1", "participant": "p1", "role": "attendee",
      "seq": 12}),
    (Ping(), {"type": "ping"}),
    (Pong(), {"type": "pong"}),
]


@pytest.mark.parametrize(("event", "wire"), WIRE)
def test_to_json_is_the_wire_object_and_parses_back(event: Any, wire: dict[str, Any]) -> None:
    assert json.dumps(event.to_json()) == json.dumps(wire)  # same keys, same order
    assert json.dumps(event.to_json(), separators=(",", ":")) == json.dumps(
        wire, separators=(",", ":"))
    assert parse_event(json.loads(json.dumps(wire))) == event


def test_unknown_types_pass_through() -> None:
    data = {"type": "poll.opened", "question": "?"}
    event = parse_event(data)
    assert event == UnknownEvent("poll.opened", data) and event.to_json() == data


@pytest.mark.parametrize("data", [
    [], "welcome", {"no": "type"}, {"type": 1},
    {"type": "item.shared", "item": ITEM, "key": "k"},
    {"type": "item.shared", "item": {"name": "no id"}, "key": "k", "context": "c"},
    {"type": "item.removed", "item": "it1"},
    {"type": "participant.joined", "participant": {"id": "p1"}},
    {"type": "revoked"},
    {"type": "conference.updated"},
    {"type": "conference.updated", "downloads": 0},
    {"type": "item.conversion", "item": "it1", "status": "failed"},
    {"type": "item.conversion", "item": {"id": "it1"}, "status": "failed", "error": "x"},
    {"type": "conference.updated", "downloads": True, "locked": "yes"},
    {"type": "participant.role_changed", "participant": {"id": "p1", "user": "u"}},
    {"type": "participant.role_changed"},
    {"type": "welcome", "conference": "C1", "participant": "p1", "role": "r", "items": {}},
    {"type": "welcome", "conference": "C1", "participant": "p1", "role": "r", "items": [1]},
    {"type": "welcome", "conference": "C1", "participant": "p1", "role": "r", "items": [],
     "presentation": {"item": "it1", "page": 0, "presenter": "p2"}},
    {"type": "presentation.changed", "item": "it1", "page": "2", "presenter": "p2"},
    {"type": "presentation.changed", "item": "it1", "page": 2},
    {"type": "presentation.set", "item": "it1"},
    {"type": "error", "code": "forbidden"},
])
def test_malformed_messages_are_refused(data: Any) -> None:
    with pytest.raises(EventError):
        parse_event(data)


def test_admission_is_the_join_body() -> None:
    admission = protocol.Admission(conference="C1", participant="p1", role="attendee",
                                   cookie="secret-cookie", expires_at="2030-01-01T00:00:00Z",
                                   webconf_url="https://wcs")
    assert protocol.Admission.from_bytes(admission.to_bytes()) == admission
    assert "secret-cookie" not in repr(admission)
    uri = protocol.conference_uri("alice@contoso.example", "K7Q2")
    assert uri == "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2"
    assert protocol.conference_id_of(uri) == "K7Q2"
    assert protocol.valid_id("K7Q2") and not protocol.valid_id("K7Q2\n")


@pytest.mark.parametrize(("status", "reason", "kind"), [
    (0, "connection closed by the focus", "transport"),
    (401, "Unauthorized", "credentials"),
    (403, protocol.REASON_BAD_CREDENTIALS, "credentials"),
    (403, protocol.REASON_ANOTHER_TENANT, "forbidden"),
    (403, protocol.REASON_FORBIDDEN, "forbidden"),
    (403, "Forbidden: bad credentials, or so", "forbidden"),  # no substring matching
    (404, protocol.REASON_CONFERENCE_NOT_FOUND, "not-found"),
    (408, "Request Timeout", "unavailable"),
    (503, protocol.REASON_WCS_UNAVAILABLE, "unavailable"),
    (486, "Busy Here", "refused"),
    (200, "join body is not JSON", "refused"),
])
def test_sip_error_kind_is_decided_once(status: int, reason: str, kind: str) -> None:
    assert sip_error_kind(status, reason) == kind
    assert SipError(status, reason).kind == kind
