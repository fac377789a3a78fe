"""The wire protocol's names and shapes, written once for every wing (docs/protocol.md).

The focus, the WCS and the clients meet only on the wire; what they must agree on (media
types, the conference URI, the id grammar, the join body) lives here, so that a change to
the protocol is a change to one module and to docs/protocol.md.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

JOIN_CONTENT_TYPE = "application/vnd.webconf.join+json"
"""Media type of the join body in the focus's 200 OK (docs/protocol.md §2)."""

CONFERENCE_OPAQUE = "app:conf:focus:id:"
"""Prefix of the conference URI's `opaque` parameter; the conference id follows it. That id
is the organizer's own (§2.1): the WCS names the conference by a public id of its own."""

ID_PATTERN = r"[A-Za-z0-9._~-]{1,64}"
"""Conference, participant and item ids: URL-safe without escaping, at most 64 characters."""

ID_RE = re.compile(rf"^{ID_PATTERN}$")

ROLES = ("organizer", "presenter", "attendee")
"""Participant roles, most privileged first."""

# Reason phrases of the focus's join refusals (docs/protocol.md §2). A SIP status alone does
# not tell a client why a 403 came: these phrases do, so both ends compare against one constant.
REASON_BAD_CREDENTIALS = "Credentials Do Not Match From"
"""403: the Digest username is not the From user. Clients treat it as bad credentials."""
REASON_ANOTHER_TENANT = "Forbidden: Another Tenant"
"""403: the caller's tenant is not the conference's (policy, not credentials)."""
REASON_FORBIDDEN = "Forbidden"
"""403: the WCS refused the admission (policy)."""
REASON_CONFERENCE_NOT_FOUND = "Conference Not Found"
"""404: no such conference, or it has ended and only its organizer may reopen it."""
REASON_WCS_UNAVAILABLE = "WCS Unavailable"
"""503 (with Retry-After): the focus could not reach the WCS."""

_OPAQUE_RE = re.compile(rf"(?:^|;)opaque={re.escape(CONFERENCE_OPAQUE)}([^;?>]+)")


def valid_id(value: object) -> bool:
    """True when `value` is a string of the id grammar (fullmatch: `$` alone lets "id\n" in)."""
    return isinstance(value, str) and ID_RE.fullmatch(value) is not None


def new_id(random_bytes: int) -> str:
    """A fresh random id of the id grammar (base64url of `random_bytes` random bytes) that
    never starts with "-", so that it can follow an option on a command line
    (`webconf fetch --item ID`) without being taken for one."""
    while True:
        value = secrets.token_urlsafe(random_bytes)
        if not value.startswith("-"):
            return value


def conference_uri(organizer: str, conference_id: str, *, scheme: str = "sip") -> str:
    """The conference URI of `organizer` (`user@tenant`) and `conference_id` (§2)."""
    return f"{scheme}:{organizer};gruu;opaque={CONFERENCE_OPAQUE}{conference_id}"


def conference_id_of(uri: str) -> str | None:
    """The conference id carried by a conference URI's `opaque` parameter, or None."""
    m = _OPAQUE_RE.search(uri)
    return m.group(1) if m else None


class JoinBodyError(ValueError):
    """A join body that is not the JSON object of docs/protocol.md §2."""


@dataclass(frozen=True, slots=True)
class Admission:
    """A participant the WCS admitted: the join body the focus returns (§2), which is also
    the internal API's admit answer (§7), unchanged."""

    conference: str
    """The conference's public id, which the WCS assigns (§2.1): what the cookie, the HTTP
    API and revocations name. Not the id in the conference URI (that is the organizer's)."""
    participant: str
    """The participant id: what a revocation names."""
    role: str
    """"organizer", "presenter" or "attendee", as the WCS decided."""
    cookie: str = field(repr=False)
    """The signed bearer cookie (a JWT). Secret: never logged, never in a repr."""
    expires_at: str
    """The cookie's expiry, RFC 3339."""
    webconf_url: str
    """The WCS's public base URL."""

    def to_json(self) -> dict[str, str]:
        return {"conference": self.conference, "participant": self.participant,
                "role": self.role, "webconf_url": self.webconf_url, "cookie": self.cookie,
                "expires_at": self.expires_at}

    def to_bytes(self) -> bytes:
        """The `application/vnd.webconf.join+json` body."""
        return json.dumps(self.to_json()).encode()

    @classmethod
    def from_json(cls, data: Any) -> Admission:
        """Read a join body or an internal admit answer (the same object).

        Every field must be a non-empty string; raises `JoinBodyError` otherwise, with a
        message that never includes the cookie.
        """
        if not isinstance(data, dict):
            raise JoinBodyError("join body is not a JSON object")
        values: dict[str, str] = {}
        for name in ("conference", "participant", "role", "cookie", "expires_at",
                     "webconf_url"):
            value = data.get(name)
            if not isinstance(value, str) or not value:
                raise JoinBodyError(f"join body lacks a string {name!r}")
            values[name] = value
        return cls(**values)

    @classmethod
    def from_bytes(cls, body: bytes) -> Admission:
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise JoinBodyError("join body is not JSON") from None
        return cls.from_json(data)
