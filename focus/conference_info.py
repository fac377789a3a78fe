"""RFC 4575 conference-info documents from the WCS's roster (docs/protocol.md §9.3).

Pure: the roster body of the link's `roster` operation in (`parse_roster`), XML bytes out
(`document`), built with `xml.etree` (every text and attribute value escaped by the
serialiser, never by hand). Shape, per RFC 4575 §5:

- `<conference-info entity=<conference URI> state="full"|"partial" version=N>`;
- `<conference-state>`: `<user-count>` (distinct users), `<active>true</active>`,
  `<locked>` (the organizer's lock, docs/protocol.md §9.2);
- `<users>`: one `<user entity="sip:<user>@<tenant>">` per distinct user (the user part
  percent-encoded, so the entity is a valid URI whatever the name), with `<display-text>`
  (the address as is, escaped), `<roles><entry>` (RFC 4575 §5.6: the roles of its live
  participations, strongest first) and one `<endpoint>` per participation
  (`entity="<user URI>;participant=<pid>"`, `<status>connected</status>`,
  `<joining-method>dialed-in</joining-method>`, `<joining-info><when>`).

A partial document (RFC 4575 §4.6) carries the `<conference-state>` when its count or lock
changed, and each user whose participations or roles changed as `state="full"` (the user
element replaces the old one whole), or `state="deleted"` when it has none left.
Characters XML 1.0 cannot carry (controls, lone surrogates) become U+FFFD.
"""

from __future__ import annotations

import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

__all__ = ["CONTENT_TYPE", "NAMESPACE", "Member", "RosterState", "document", "parse_roster"]

CONTENT_TYPE = "application/conference-info+xml"
NAMESPACE = "urn:ietf:params:xml:ns:conference-info"
ROLE_ORDER = ("organizer", "presenter", "attendee")
MAX_MEMBERS = 10_000
"""Participations in one roster, at most (a bigger answer is refused as malformed)."""
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_USER_SAFE = "-_.!~*'()&=+$,;?/"
"""RFC 3261 unreserved and user-unreserved marks: kept as they are in a SIP user part."""


@dataclass(frozen=True, slots=True)
class Member:
    """One live participation."""

    id: str
    user: str
    role: str
    joined_at: float


@dataclass(frozen=True, slots=True)
class RosterState:
    """A conference's roster as of its event `seq`."""

    conference: str
    seq: int
    locked: bool
    members: tuple[Member, ...]

    def users(self) -> dict[str, tuple[Member, ...]]:
        """Participations per distinct user, in join order."""
        by_user: dict[str, list[Member]] = {}
        for member in self.members:
            by_user.setdefault(member.user, []).append(member)
        return {user: tuple(members) for user, members in by_user.items()}


def parse_roster(body: Mapping[str, Any]) -> RosterState:
    """The link's roster body (docs/protocol.md §7.3); ValueError if malformed."""
    conference, seq, locked = body.get("conference"), body.get("seq"), body.get("locked")
    raw = body.get("participants")
    if not isinstance(conference, str) or type(seq) is not int or type(locked) is not bool \
            or not isinstance(raw, list) or len(raw) > MAX_MEMBERS:
        raise ValueError("malformed roster")
    members = []
    for entry in raw:
        if not isinstance(entry, dict):
            raise ValueError("malformed roster entry")
        pid, user, role, joined = (entry.get(k) for k in ("id", "user", "role", "joined_at"))
        if not (isinstance(pid, str) and isinstance(user, str) and isinstance(role, str)
                and isinstance(joined, int | float) and not isinstance(joined, bool)):
            raise ValueError("malformed roster entry")
        members.append(Member(pid, user, role, float(joined)))
    return RosterState(conference, seq, locked, tuple(members))


def _text(value: str) -> str:
    return _NOT_XML.sub("\ufffd", value)


def user_uri(user: str) -> str:
    """`sip:<user part>@<tenant>` with the user part percent-encoded (a valid URI)."""
    name, _, host = user.rpartition("@")
    encoded = urllib.parse.quote(name.encode("utf-8", "surrogateescape"), safe=_USER_SAFE)
    host = urllib.parse.quote(host.encode("utf-8", "surrogateescape"), safe="-.[]:")
    return f"sip:{encoded}@{host}"


def _roles(members: tuple[Member, ...]) -> list[str]:
    roles = {m.role for m in members}
    return [r for r in ROLE_ORDER if r in roles] + sorted(roles - set(ROLE_ORDER))


def _user(parent: ET.Element, user: str, members: tuple[Member, ...]) -> None:
    uri = user_uri(user)
    if not members:
        ET.SubElement(parent, "user", entity=uri, state="deleted")
        return
    elem = ET.SubElement(parent, "user", entity=uri, state="full")
    ET.SubElement(elem, "display-text").text = _text(user)
    roles = ET.SubElement(elem, "roles")
    for role in _roles(members):
        ET.SubElement(roles, "entry").text = _text(role)
    for member in members:
        endpoint = ET.SubElement(elem, "endpoint", entity=f"{uri};participant="
                                 f"{urllib.parse.quote(member.id, safe='-_.')}", state="full")
        ET.SubElement(endpoint, "status").text = "connected"
        ET.SubElement(endpoint, "joining-method").text = "dialed-in"
        when = datetime.fromtimestamp(max(0.0, member.joined_at), UTC)
        ET.SubElement(ET.SubElement(endpoint, "joining-info"), "when").text = (
            when.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _state(parent: ET.Element, roster: RosterState, user_count: int) -> None:
    state = ET.SubElement(parent, "conference-state")
    ET.SubElement(state, "user-count").text = str(user_count)
    ET.SubElement(state, "active").text = "true"
    ET.SubElement(state, "locked").text = "true" if roster.locked else "false"


def document(entity: str, version: int, roster: RosterState,
             previous: RosterState | None = None) -> bytes | None:
    """The conference-info document: full when `previous` is None, else the partial
    document from `previous` to `roster` (None when nothing a subscriber sees changed)."""
    users = roster.users()
    root = ET.Element("conference-info", entity=_text(entity),
                      state="full" if previous is None else "partial", version=str(version))
    if previous is None:
        _state(root, roster, len(users))
        listed = ET.SubElement(root, "users")
        for user, members in users.items():
            _user(listed, user, members)
        return _serialise(root)
    before = previous.users()
    if len(before) != len(users) or previous.locked != roster.locked:
        _state(root, roster, len(users))
    changed = [(u, m) for u, m in users.items() if before.get(u) != m]
    changed += [(u, ()) for u in before if u not in users]
    if changed:
        listed = ET.SubElement(root, "users", state="partial")
        for user, members in changed:
            _user(listed, user, members)
    if len(root) == 0:
        return None
    return _serialise(root)


def _serialise(root: ET.Element) -> bytes:
    # The default namespace as a plain attribute: the attributes stay unqualified, as
    # RFC 4575's schema wants (attributeFormDefault="unqualified").
    root.set("xmlns", NAMESPACE)
    data: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return data
