"""The data channel's messages as typed events, written once for the WCS and the clients.

The WCS sends JSON text frames on the channel (docs/protocol.md §4): a `welcome` first,
then `item.shared`, `item.removed`, `item.conversion`, `participant.joined`,
`participant.left`, `participant.role_changed`, `revoked`, `conference.ended`,
`conference.updated`, `presentation.changed`, `pong` replies and `error` frames; a
client sends `ping` and `presentation.set` (docs/protocol.md §9.1).
Each message is a small frozen dataclass here (like aioquic's `h3/events.py`): the WCS
builds one and sends `to_json()`, a client reads a frame with `parse_event()`. `to_json()`
gives exactly the wire object, keys in wire order, so serializing it changes no byte on the wire.

An item is carried as its JSON view (the object the HTTP API returns for an item, §4):
the channel passes it through unchanged, so it stays a dict here, checked only for its id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias

__all__ = [
    "FINAL_EVENTS", "ChannelEvent", "ConferenceEnded", "ConferenceUpdated", "EventError",
    "ErrorFrame", "ItemConversion", "ItemRemoved", "ItemShared", "Participant",
    "ParticipantJoined", "ParticipantLeft", "ParticipantRoleChanged", "Ping", "Pong",
    "Presentation", "PresentationChanged", "PresentationSet", "Resumed", "Revoked",
    "SharedItem", "UnknownEvent", "Welcome", "event_seq", "parse_event",
]


class EventError(ValueError):
    """A channel message that is not an object of the shape its `type` requires."""

    def __init__(self, message: str, *, event_type: str | None = None) -> None:
        super().__init__(message)
        self.event_type = event_type
        """The message's `type`, when it had a string one."""


def _str(data: dict[str, Any], name: str, event_type: str) -> str:
    value = data.get(name)
    if not isinstance(value, str):
        raise EventError(f"{event_type} lacks a string {name!r}", event_type=event_type)
    return value


def _object(data: dict[str, Any], name: str, event_type: str) -> dict[str, Any]:
    value = data.get(name)
    if not isinstance(value, dict):
        raise EventError(f"{event_type} lacks an object {name!r}", event_type=event_type)
    return value


@dataclass(frozen=True, slots=True)
class SharedItem:
    """An item with its key: an entry of `welcome.items`, and the body of `item.shared`."""

    item: dict[str, Any]
    """The item's JSON view (id, name, content_type, size, ..., url, key_url)."""
    key: str
    """The item's data encryption key, base64url without padding. Secret."""
    context: str
    """The item's Cobblestone context, base64url without padding (§5)."""

    @property
    def item_id(self) -> str:
        """The item's id (its view's "id")."""
        return str(self.item["id"])

    def to_json(self) -> dict[str, Any]:
        return {"item": self.item, "key": self.key, "context": self.context}

    @classmethod
    def from_json(cls, data: dict[str, Any], event_type: str = "item") -> SharedItem:
        item = _object(data, "item", event_type)
        if not isinstance(item.get("id"), str):
            raise EventError(f"{event_type} lacks the item's id", event_type=event_type)
        return cls(item=item, key=_str(data, "key", event_type),
                   context=_str(data, "context", event_type))


@dataclass(frozen=True, slots=True)
class Participant:
    """A participant as the channel names it in `participant.joined`/`participant.left`."""

    id: str
    """The participant id (one per join)."""
    user: str
    """The SIP user, `user@tenant`."""
    role: str
    """"organizer", "presenter" or "attendee"."""

    def to_json(self) -> dict[str, str]:
        return {"id": self.id, "user": self.user, "role": self.role}

    @classmethod
    def from_json(cls, data: dict[str, Any], event_type: str) -> Participant:
        who = _object(data, "participant", event_type)
        return cls(id=_str(who, "id", event_type), user=_str(who, "user", event_type),
                   role=_str(who, "role", event_type))


@dataclass(frozen=True, slots=True)
class Welcome:
    """First message on every channel: who we are and every current item with its key."""

    TYPE: ClassVar[str] = "welcome"
    conference: str
    """The conference id."""
    participant: str
    """This channel's participant id."""
    role: str
    """This participant's role."""
    items: tuple[SharedItem, ...]
    """Every item in the conference now, with its key."""
    seq: int = 0
    """The seq of the newest event the item list reflects: resume from here (§4.3)."""
    presentation: Presentation | None = None
    """What is being presented now, on which page (§9.1); None: nothing."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "conference": self.conference,
                "participant": self.participant, "role": self.role, "seq": self.seq,
                "items": [entry.to_json() for entry in self.items],
                "presentation": (None if self.presentation is None
                                 else self.presentation.to_json())}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Welcome:
        raw_items = data.get("items")
        if not isinstance(raw_items, list) or not all(isinstance(e, dict) for e in raw_items):
            raise EventError("welcome lacks a list 'items'", event_type=cls.TYPE)
        return cls(conference=_str(data, "conference", cls.TYPE),
                   participant=_str(data, "participant", cls.TYPE),
                   role=_str(data, "role", cls.TYPE),
                   items=tuple(SharedItem.from_json(e, cls.TYPE) for e in raw_items),
                   seq=event_seq(data) or 0,
                   presentation=Presentation.from_json(data.get("presentation"), cls.TYPE))


@dataclass(frozen=True, slots=True)
class Resumed:
    """First message of a channel opened with `?after=N` while the log still holds every
    event after N: those events follow, then live ones (§4.3). No item list."""

    TYPE: ClassVar[str] = "resumed"
    conference: str
    participant: str
    role: str
    seq: int
    """The N the channel resumes after."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "conference": self.conference,
                "participant": self.participant, "role": self.role, "seq": self.seq}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Resumed:
        seq = event_seq(data)
        if seq is None:
            raise EventError("resumed lacks an integer 'seq'", event_type=cls.TYPE)
        return cls(conference=_str(data, "conference", cls.TYPE),
                   participant=_str(data, "participant", cls.TYPE),
                   role=_str(data, "role", cls.TYPE), seq=seq)


@dataclass(frozen=True, slots=True)
class ItemShared:
    """An item was shared: its view and its key, pushed to every participant."""

    TYPE: ClassVar[str] = "item.shared"
    entry: SharedItem
    """The item and its key."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, **self.entry.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemShared:
        return cls(SharedItem.from_json(data, cls.TYPE))


@dataclass(frozen=True, slots=True)
class ItemRemoved:
    """An item was deleted (its key is gone: it can no longer be fetched)."""

    TYPE: ClassVar[str] = "item.removed"
    item_id: str
    """The removed item's id."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "item": {"id": self.item_id}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemRemoved:
        return cls(_str(_object(data, "item", cls.TYPE), "id", cls.TYPE))


@dataclass(frozen=True, slots=True)
class ParticipantJoined:
    """Someone was admitted to the conference."""

    TYPE: ClassVar[str] = "participant.joined"
    participant: Participant
    """Who joined."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "participant": self.participant.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ParticipantJoined:
        return cls(Participant.from_json(data, cls.TYPE))


@dataclass(frozen=True, slots=True)
class ParticipantLeft:
    """Someone left (BYE, or their dialog ended) and their cookie was revoked."""

    TYPE: ClassVar[str] = "participant.left"
    participant: Participant
    """Who left."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "participant": self.participant.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ParticipantLeft:
        return cls(Participant.from_json(data, cls.TYPE))


@dataclass(frozen=True, slots=True)
class ParticipantRoleChanged:
    """The organizer changed someone's role (docs/protocol.md §9.2); `participant.role` is
    the new one, in force from the participant's next request."""

    TYPE: ClassVar[str] = "participant.role_changed"
    participant: Participant
    """Whose role changed, with the new role."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "participant": self.participant.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ParticipantRoleChanged:
        return cls(Participant.from_json(data, cls.TYPE))


@dataclass(frozen=True, slots=True)
class Revoked:
    """Final event for this participant: its cookie was revoked; the channel closes (1008)."""

    TYPE: ClassVar[str] = "revoked"
    reason: str
    """Why: "left" (BYE, end of the dialog) or "ejected" (the organizer, §9.2)."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Revoked:
        return cls(_str(data, "reason", cls.TYPE))


@dataclass(frozen=True, slots=True)
class ConferenceEnded:
    """Final event for everyone: the conference ended; the channel closes (1000)."""

    TYPE: ClassVar[str] = "conference.ended"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConferenceEnded:
        return cls()


@dataclass(frozen=True, slots=True)
class ConferenceUpdated:
    """The conference's settings changed (its organizer's `PATCH`, docs/protocol.md §8.3)."""

    TYPE: ClassVar[str] = "conference.updated"
    downloads: bool
    """Attendees may download items (`/content`, `/document`)."""
    locked: bool = False
    """Only the organizer may join (docs/protocol.md §9.2)."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "downloads": self.downloads, "locked": self.locked}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ConferenceUpdated:
        downloads = data.get("downloads")
        locked = data.get("locked", False)  # absent: a WCS from before the lock
        if not isinstance(downloads, bool) or not isinstance(locked, bool):
            raise EventError("conference.updated lacks a boolean 'downloads' or 'locked'",
                             event_type=cls.TYPE)
        return cls(downloads, locked)


@dataclass(frozen=True, slots=True)
class ItemConversion:
    """A shared deck could not be converted to PDF (docs/protocol.md §9.4): it stays shared
    as it is. A successful conversion is an `item.shared` of the PDF instead."""

    TYPE: ClassVar[str] = "item.conversion"
    item_id: str
    """The deck's item id."""
    status: str
    """"failed"."""
    error: str
    """Why, in a few words (never the deck's content)."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "item": self.item_id, "status": self.status,
                "error": self.error}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ItemConversion:
        return cls(_str(data, "item", cls.TYPE), _str(data, "status", cls.TYPE),
                   _str(data, "error", cls.TYPE))


def _page(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


@dataclass(frozen=True, slots=True)
class Presentation:
    """The conference's presentation state (§9.1): which item, which page (1-based), who
    set it, and the seq of the event that set it."""

    item: str
    page: int
    presenter: str
    """The participant id of whoever set it."""
    seq: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"item": self.item, "page": self.page, "presenter": self.presenter,
                "seq": self.seq}

    @classmethod
    def from_json(cls, data: object, event_type: str) -> Presentation | None:
        """None for JSON null (nothing presented)."""
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("item"), str) or not _page(
                data.get("page")):
            raise EventError(f"{event_type} has a malformed 'presentation'",
                             event_type=event_type)
        return cls(item=data["item"], page=data["page"],
                   presenter=_str(data, "presenter", event_type), seq=event_seq(data) or 0)


@dataclass(frozen=True, slots=True)
class PresentationChanged:
    """The presentation moved (§9.1): another item or page, or stopped (`item` None)."""

    TYPE: ClassVar[str] = "presentation.changed"
    item: str | None
    """The item shown; None: the presenter stopped presenting."""
    page: int | None
    """Its page, 1-based; None when `item` is None."""
    presenter: str
    """The participant id of whoever changed it."""
    seq: int = 0

    @property
    def state(self) -> Presentation | None:
        """The state it leaves (None: nothing presented)."""
        if self.item is None or self.page is None:
            return None
        return Presentation(self.item, self.page, self.presenter, self.seq)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "item": self.item, "page": self.page,
                "presenter": self.presenter, "seq": self.seq}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PresentationChanged:
        item, page = data.get("item"), data.get("page")
        if item is None and page is None:
            return cls(None, None, _str(data, "presenter", cls.TYPE), event_seq(data) or 0)
        if not isinstance(item, str) or not _page(page):
            raise EventError("presentation.changed lacks a string 'item' and a page >= 1",
                             event_type=cls.TYPE)
        assert isinstance(page, int)
        return cls(item, page, _str(data, "presenter", cls.TYPE), event_seq(data) or 0)


@dataclass(frozen=True, slots=True)
class PresentationSet:
    """Client -> WCS: show `item` at `page` (§9.1); `item` None stops presenting."""

    TYPE: ClassVar[str] = "presentation.set"
    item: str | None
    page: int | None = None

    def to_json(self) -> dict[str, Any]:
        if self.item is None:
            return {"type": self.TYPE, "item": None}
        return {"type": self.TYPE, "item": self.item, "page": self.page}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PresentationSet:
        item, page = data.get("item"), data.get("page")
        if item is None:
            return cls(None, None)
        if not isinstance(item, str) or not _page(page):
            raise EventError("presentation.set lacks a string 'item' and a page >= 1",
                             event_type=cls.TYPE)
        assert isinstance(page, int)
        return cls(item, page)


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    """WCS -> client: a channel request refused; the channel stays open (§9.1)."""

    TYPE: ClassVar[str] = "error"
    code: str
    """One of the HTTP API's error codes (§4.2)."""
    message: str
    request: str = ""
    """The `type` of the message refused."""

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE, "code": self.code, "message": self.message,
                "request": self.request}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ErrorFrame:
        request = data.get("request", "")
        return cls(_str(data, "code", cls.TYPE), _str(data, "message", cls.TYPE),
                   request if isinstance(request, str) else "")


@dataclass(frozen=True, slots=True)
class Ping:
    """Client -> WCS keep-alive, the only message a client may send."""

    TYPE: ClassVar[str] = "ping"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ping:
        return cls()


@dataclass(frozen=True, slots=True)
class Pong:
    """WCS -> client answer to a `ping`."""

    TYPE: ClassVar[str] = "pong"

    def to_json(self) -> dict[str, Any]:
        return {"type": self.TYPE}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Pong:
        return cls()


@dataclass(frozen=True, slots=True)
class UnknownEvent:
    """A message of a type this version does not know: passed on, so a newer WCS can add
    events without breaking older clients."""

    type: str
    """The message's `type`."""
    data: dict[str, Any]
    """The whole message as received."""

    def to_json(self) -> dict[str, Any]:
        return self.data


def event_seq(data: dict[str, Any]) -> int | None:
    """A message's `seq` (every event but `pong` has one, §4.3); None when absent."""
    seq = data.get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None


ChannelEvent: TypeAlias = (Welcome | Resumed | ItemShared | ItemRemoved | ParticipantJoined
                           | ParticipantLeft | ParticipantRoleChanged | Revoked | ConferenceEnded
                           | ConferenceUpdated | ItemConversion | PresentationChanged
                           | PresentationSet | ErrorFrame | Ping | Pong | UnknownEvent)
"""Any channel message, either direction."""

FINAL_EVENTS = (Revoked.TYPE, ConferenceEnded.TYPE)
"""Types after which the WCS closes the channel: no reconnect will be admitted."""

_PARSERS: dict[str, Any] = {cls.TYPE: cls.from_json for cls in (
    Welcome, Resumed, ItemShared, ItemRemoved, ParticipantJoined, ParticipantLeft,
    ParticipantRoleChanged, Revoked, ConferenceEnded, ConferenceUpdated, ItemConversion,
    PresentationChanged, PresentationSet, ErrorFrame, Ping, Pong)}


def parse_event(data: object) -> ChannelEvent:
    """The typed event of one decoded JSON message; raises `EventError` when it is not an
    object with a string `type`, or a known type lacks a field of the right JSON type."""
    if not isinstance(data, dict):
        raise EventError("channel message is not a JSON object")
    event_type = data.get("type")
    if not isinstance(event_type, str):
        raise EventError("channel message lacks a string 'type'")
    parser = _PARSERS.get(event_type)
    if parser is None:
        return UnknownEvent(event_type, data)
    event: ChannelEvent = parser(data)
    return event
