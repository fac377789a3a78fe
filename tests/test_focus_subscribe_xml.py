"""Every conference-info document the focus builds validates against RFC 4575's schema
(tests/vectors/rfc4575, with its licence note), and hostile names come out escaped."""

from __future__ import annotations

import functools
from pathlib import Path

from lxml import etree

from focus.conference_info import Member, RosterState, document, parse_roster, user_uri

VECTORS = Path(__file__).resolve().parent / "vectors" / "rfc4575"
XML_XSD_URL = "http://www.w3.org/2001/03/xml.xsd"
ENTITY = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2"
NS = {"ci": "urn:ietf:params:xml:ns:conference-info"}
HOSTILE = 'x<y>&z"q\'é€😀\x01]]>@contoso.example'


class _LocalXmlSchema(etree.Resolver):
    """The schema's import of the xml namespace's schema, from the repo (no network)."""

    def resolve(self, url: str | None, pubid: str | None, context: object) -> object:
        if url == XML_XSD_URL or (url or "").endswith("/xml.xsd"):
            return self.resolve_filename(str(VECTORS / "xml.xsd"), context)
        return None


@functools.cache
def schema() -> etree.XMLSchema:
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    parser.resolvers.add(_LocalXmlSchema())
    return etree.XMLSchema(etree.parse(str(VECTORS / "conference-info.xsd"), parser))


def validated(data: bytes) -> etree._Element:
    """Parse a document (strictly: no entities, no network) and validate it."""
    root = etree.fromstring(data, etree.XMLParser(no_network=True, resolve_entities=False))
    assert schema().validate(root), schema().error_log
    return root


def roster(members: list[tuple[str, str, str]], *, seq: int, locked: bool = False
           ) -> RosterState:
    return RosterState("K7Q2", seq, locked, tuple(
        Member(pid, user, role, 1_700_000_000.0 + i) for i, (pid, user, role) in
        enumerate(members)))


def test_schema_and_licence_are_shipped() -> None:
    licence = (VECTORS / "LICENSE-rfc4575").read_text()
    assert "IETF Trust" in licence and "Revised BSD" in licence
    assert 'targetNamespace="urn:ietf:params:xml:ns:conference-info"' in (
        VECTORS / "conference-info.xsd").read_text()
    bad = b'<conference-info xmlns="urn:ietf:params:xml:ns:conference-info" state="nope"/>'
    assert not schema().validate(etree.fromstring(bad))  # the schema does check


def test_every_document_kind_validates() -> None:
    alice = ("p1", "alice@contoso.example", "organizer")
    bob = ("p2", "bob@contoso.example", "attendee")
    bob_again = ("p3", "bob@contoso.example", "presenter")
    steps = [roster([alice], seq=1),
             roster([alice, bob], seq=2),                    # a join
             roster([alice, bob, bob_again], seq=3),         # the same user twice
             roster([alice, ("p2", bob[1], "presenter"), bob_again], seq=4),  # a role
             roster([alice, bob_again], seq=5, locked=True),  # a leave and the lock
             roster([alice], seq=6, locked=True),            # bob gone: deleted
             roster([], seq=7, locked=False)]                # empty
    full = validated(document(ENTITY, 1, steps[0]) or b"")
    assert (full.get("state"), full.get("version"), full.get("entity")) == ("full", "1", ENTITY)
    versions = []
    for version, (before, after) in enumerate(zip(steps, steps[1:], strict=False), start=2):
        data = document(ENTITY, version, after, before)
        assert data is not None, after
        root = validated(data)
        assert root.get("state") == "partial"
        versions.append(root)
        validated(document(ENTITY, version, after) or b"")  # the full form too
    deleted = versions[4].find(".//ci:user", NS)
    assert deleted is not None and deleted.get("state") == "deleted"
    assert versions[3].findtext(".//ci:locked", namespaces=NS) == "true"
    roles = [e.text for e in versions[1].iterfind(".//ci:roles/ci:entry", NS)]
    assert roles == ["presenter", "attendee"]
    assert document(ENTITY, 9, steps[1], steps[1]) is None  # nothing changed: no NOTIFY


def test_hostile_names_are_escaped_and_valid() -> None:
    state = roster([("p1", HOSTILE, "organizer"), ("p2", "bob@contoso.example", "attendee")],
                   seq=1)
    data = document(ENTITY, 1, state) or b""
    assert b"<y>" not in data and b"]]>" not in data.replace(b"]]&gt;", b"")
    root = validated(data)
    texts = [e.text for e in root.iterfind(".//ci:display-text", NS)]
    assert texts[0] == HOSTILE.replace("\x01", "\ufffd")  # XML 1.0 cannot carry U+0001
    entity = root.find(".//ci:user", NS).get("entity")  # type: ignore[union-attr]
    assert entity == user_uri(HOSTILE) and entity.isascii() and "<" not in entity
    gone = RosterState("K7Q2", 2, False, state.members[1:])  # the hostile one left
    deleted = validated(document(ENTITY, 2, gone, state) or b"").findall(".//ci:user", NS)
    assert [(u.get("entity"), u.get("state")) for u in deleted] == [(entity, "deleted")]


def test_parse_roster_refuses_malformed_bodies() -> None:
    good = {"conference": "K", "seq": 1, "locked": False, "participants": [
        {"id": "p", "user": "u@t", "role": "attendee", "joined_at": 1.5}]}
    assert parse_roster(good).members[0].joined_at == 1.5
    for bad in ({**good, "seq": "1"}, {**good, "locked": 0}, {**good, "participants": [1]},
                {**good, "participants": [{"id": "p", "user": 3, "role": "r",
                                           "joined_at": 1}]}):
        try:
            parse_roster(bad)
        except ValueError:
            continue
        raise AssertionError(bad)
