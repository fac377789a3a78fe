"""The header container: ordered fields, case-insensitive names, compact forms expanded.

Fields are stored as written (one entry per header line, folded lines already joined) under
their canonical name (`v` and `VIA` both become `Via`; unknown names keep their spelling).
`get_all()` splits the comma-separated values of headers whose grammar is a list (Via,
Contact, Route, Allow, ...), never inside a quoted-string or `<...>`; headers whose values
contain commas of their own (WWW-Authenticate, Authorization, Date, ...) are never split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

COMPACT_FORMS = {
    "i": "Call-ID",
    "f": "From",
    "t": "To",
    "v": "Via",
    "l": "Content-Length",
    "m": "Contact",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
}

_CANONICAL_NAMES = (
    "Accept Accept-Encoding Accept-Language Alert-Info Allow Allow-Events Authentication-Info "
    "Authorization Call-ID Call-Info Contact Content-Disposition Content-Encoding "
    "Content-Language Content-Length Content-Type CSeq Date Error-Info Event Expires From "
    "In-Reply-To Max-Forwards MIME-Version Min-Expires Min-SE Organization Path Priority "
    "Proxy-Authenticate Proxy-Authorization Proxy-Require RAck Record-Route Refer-To "
    "Referred-By Replaces Reply-To Require Retry-After Route RSeq Server Service-Route "
    "Session-Expires Subject Subscription-State Supported Timestamp To Unsupported User-Agent "
    "Via Warning WWW-Authenticate"
)
CANONICAL = {name.lower(): name for name in _CANONICAL_NAMES.split()}
CANONICAL.update(COMPACT_FORMS)

LIST_HEADERS = frozenset(
    "accept accept-encoding accept-language alert-info allow allow-events call-info contact "
    "content-encoding content-language error-info in-reply-to path proxy-require "
    "record-route require route service-route supported unsupported via warning".split()
)


def canonical_name(name: str) -> str:
    """`v` -> `Via`, `call-id` -> `Call-ID`; unknown names are returned unchanged."""
    return CANONICAL.get(name.lower(), name)


def split_list(value: str) -> list[str]:
    """Split at top-level commas (not in quotes or angle brackets); drop empty items."""
    items: list[str] = []
    start = 0
    in_quote = in_angle = escaped = False
    for i, c in enumerate(value):
        if in_quote:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_quote = False
        elif c == '"':
            in_quote = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            items.append(value[start:i])
            start = i + 1
    items.append(value[start:])
    return [item.strip(" \t") for item in items if item.strip(" \t")]


class Headers:
    """Ordered (name, value) header fields with case-insensitive lookup."""

    __slots__ = ("_fields", "_index")

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] | None = None
        """Lower-case name -> values, built on the first lookup, dropped by any change: a
        request is read far more often than it is changed (a join reads ~100 times)."""
        for name, value in fields:
            self.add(name, value)

    def _lookup(self) -> dict[str, list[str]]:
        index = self._index
        if index is None:
            index = {}
            for n, v in self._fields:
                index.setdefault(n.lower(), []).append(v)
            self._index = index
        return index

    def add(self, name: str, value: str) -> None:
        """Append a field (the name is canonicalised)."""
        self._fields.append((canonical_name(name), value))
        self._index = None

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value: the first field, or for list headers its first item (so
        `get("Via")` is the topmost Via). `default` if the header is absent."""
        values = self.get_all(name)
        if values:
            return values[0]
        return "" if name in self else default

    def get_fields(self, name: str) -> list[str]:
        """Every field's value, unsplit, in order."""
        return list(self._lookup().get(canonical_name(name).lower(), ()))

    def get_all(self, name: str) -> list[str]:
        """Every value in order; list-valued headers are split at top-level commas."""
        values = self.get_fields(name)
        if canonical_name(name).lower() not in LIST_HEADERS:
            return values
        return [item for value in values for item in split_list(value)]

    def count(self, name: str) -> int:
        """How many fields (lines) carry this header."""
        return len(self.get_fields(name))

    def remove(self, name: str) -> None:
        """Drop every field of this header."""
        key = canonical_name(name).lower()
        self._fields = [(n, v) for n, v in self._fields if n.lower() != key]
        self._index = None

    def set(self, name: str, value: str) -> None:
        """Replace every field of this header with one, where the first one was."""
        self._index = None
        key = canonical_name(name).lower()
        for i, (field_name, _) in enumerate(self._fields):
            if field_name.lower() == key:
                self._fields[i] = (canonical_name(name), value)
                self._fields = [
                    f for j, f in enumerate(self._fields) if j <= i or f[0].lower() != key
                ]
                return
        self.add(name, value)

    def copy(self) -> Headers:
        new = Headers()
        new._fields = list(self._fields)
        return new

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return canonical_name(name).lower() in self._lookup()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._fields))

    def __len__(self) -> int:
        return len(self._fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(n.lower(), v) for n, v in self._fields] == [
            (n.lower(), v) for n, v in other._fields
        ]

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"
