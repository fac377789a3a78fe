"""The header container: ordered fields, case-insensitive names, compact forms expanded.

Fields are stored as written (one entry per header line, folded lines already joined) under
their canonical name (`v` and `VIA` both become `Via`; unknown names keep their spelling).
`get_all()` splits the comma-separated values of headers whose grammar is a list (Via,
Contact, Route, Allow, ...), never inside a quoted-string or `<...>`; headers whose values
contain commas of their own (WWW-Authenticate, Authorization, Date, ...) are never split.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

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


_MEMO_MAX = 4096
"""Bound on each name memo below (a peer choosing header names cannot grow them further)."""
_canonical_memo: dict[str, str] = {}
_key_memo: dict[str, str] = {}


def _seed() -> None:
    """Every known spelling first, so that a peer's made-up names (which fill the memos
    up to their bound) can never crowd out the names every request carries."""
    for spelling in [*CANONICAL, *CANONICAL.values()]:
        _canonical_memo[spelling] = CANONICAL.get(spelling.lower(), spelling)
        _key_memo[spelling] = _canonical_memo[spelling].lower()


def canonical_name(name: str) -> str:
    """`v` -> `Via`, `call-id` -> `Call-ID`; unknown names are returned unchanged."""
    canonical = _canonical_memo.get(name)
    if canonical is None:
        canonical = CANONICAL.get(name.lower(), name)
        if len(_canonical_memo) < _MEMO_MAX:
            _canonical_memo[name] = canonical
    return canonical


def _key(name: str) -> str:
    """The lookup key of a header name: its canonical name, lower-cased (memoised: every
    lookup of a request computes it, and the code asks for a few dozen names only)."""
    key = _key_memo.get(name)
    if key is None:
        key = canonical_name(name).lower()
        if len(_key_memo) < _MEMO_MAX:
            _key_memo[name] = key
    return key


_seed()


def split_list(value: str) -> list[str]:
    """Split at top-level commas (not in quotes or angle brackets); drop empty items."""
    if "," not in value:  # the common case: one item, no scan needed
        item = value.strip(" \t")
        return [item] if item else []
    if '"' not in value and "<" not in value:
        return [item.strip(" \t") for item in value.split(",") if item.strip(" \t")]
    return _scan_list(value)


def _scan_list(value: str) -> list[str]:
    """`split_list` character by character (quotes and angle brackets hide commas)."""
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

    @classmethod
    def from_canonical(cls, fields: list[tuple[str, str]]) -> Headers:
        """Headers over `fields` as they are (taken over, not copied), whose names are
        already canonical: what the parser builds, without a second pass over the names."""
        headers = cls()
        headers._fields = fields
        return headers

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value: the first field, or for list headers its first item (so
        `get("Via")` is the topmost Via). `default` if the header is absent."""
        key = _key_memo.get(name) or _key(name)
        index = self._index if self._index is not None else self._lookup()
        values = index.get(key)
        if not values:
            return default
        if key not in LIST_HEADERS:
            return values[0]
        for value in values:
            items = split_list(value)
            if items:
                return items[0]
        return ""

    def view(self, name: str) -> Sequence[str]:
        """Every field's value, unsplit, in order, without a copy: read, never change it
        (the hot paths of a server look each header up many times per request)."""
        index = self._index if self._index is not None else self._lookup()
        return index.get(_key_memo.get(name) or _key(name), ())

    def get_fields(self, name: str) -> list[str]:
        """Every field's value, unsplit, in order."""
        return list(self.view(name))

    def get_all(self, name: str) -> list[str]:
        """Every value in order; list-valued headers are split at top-level commas."""
        key = _key(name)
        values = self._lookup().get(key, ())
        if key not in LIST_HEADERS:
            return list(values)
        return [item for value in values for item in split_list(value)]

    def count(self, name: str) -> int:
        """How many fields (lines) carry this header."""
        return len(self.view(name))

    def remove(self, name: str) -> None:
        """Drop every field of this header."""
        key = _key(name)
        self._fields = [(n, v) for n, v in self._fields if n.lower() != key]
        self._index = None

    def set(self, name: str, value: str) -> None:
        """Replace every field of this header with one, where the first one was."""
        self._index = None
        key = _key(name)
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
        index = self._index if self._index is not None else self._lookup()
        return (_key_memo.get(name) or _key(name)) in index

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
