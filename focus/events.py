"""What goes into the focus core and what comes out of it: small dataclasses, no behaviour.

Like aioquic's `h3/events.py`: the asyncio edge (`focus/server.py`) and the tests speak to
`FocusCore` only through these. Outputs are either bytes to write (`Send`, `Close`) or
effects the edge performs and whose results it feeds back (`LookupCredentials` ->
`credentials_found`, `Admit` -> `admitted`/`admission_failed`, `FetchRoster` ->
`roster_fetched`/`roster_failed`), or performs and forgets
(`Revoke`, `Log`).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias


@dataclass(frozen=True)
class Conn:
    """One transport connection as the core sees it."""

    id: int
    """The edge's number for the connection; every other input and output names it."""
    peer_host: str
    """The peer's address: the failure throttle's source key, and logged."""
    peer_port: int
    """The peer's port (logged only)."""
    transport: str = "TLS"
    """"TLS", "TCP" or "WSS" (RFC 7118): the Contact we hand out, and the framing."""
    tls_version: str | None = None
    """The negotiated protocol ("TLSv1.3", "TLSv1.2"), logged with each join; None on TCP."""
    nonce_scope: bytes = field(default_factory=lambda: secrets.token_bytes(16), repr=False)
    """16 random bytes unique to this connection: the Digest nonces issued on it are bound
    to them, so a captured Authorization does not work on another connection (a connection
    lives on one focus node; docs/protocol.md §2)."""


# -- outputs: bytes -----------------------------------------------------------------------
@dataclass(frozen=True)
class Send:
    """Write these bytes to the connection."""

    conn_id: int
    """The connection to write to."""
    data: bytes
    """One serialised response, or a CRLF keep-alive answer."""


@dataclass(frozen=True)
class Close:
    """Close the connection: after a fatal framing error, or instead of an oversized reply."""

    conn_id: int
    """The connection to close; the core ignores its input from now on."""
    abort: bool = False
    """True: drop what is still unsent (the peer cannot take it); False: flush, then close."""


# -- outputs: effects ---------------------------------------------------------------------
@dataclass(frozen=True)
class LookupCredentials:
    """Look up the caller's HA1s; answer with `credentials_found(ticket, ...)`.

    The connection's input is paused until then (the edge should not read meanwhile), so a
    pipelined burst of guesses is checked against the throttle one by one.
    """

    ticket: int
    """Names this lookup in `credentials_found`."""
    realm: str
    """The tenant domain (lower case) the Authorization names."""
    username: str
    """The user part the Authorization names (valid UTF-8)."""
    algorithms: tuple[str, ...]
    """The HA1 algorithms wanted ("SHA-256", "MD5"): the ones offered to this agent."""


@dataclass(frozen=True)
class Admit:
    """Ask the WCS to admit `user` to the conference; answer with admitted/admission_failed."""

    ticket: int
    """Names this admission in `admitted` / `admission_failed`."""
    conference_id: str
    """The conference id from the Request-URI's opaque parameter."""
    tenant: str
    """The tenant domain of the conference URI (and of the caller)."""
    organizer: str
    """`user@tenant` of the conference URI: the conference's organizer."""
    user: str
    """`user@tenant` of the authenticated caller."""
    role: str = "attendee"
    """The role asked for; the WCS decides (the organizer gets "organizer")."""


@dataclass(frozen=True)
class FetchRoster:
    """Read a conference's roster from the WCS (the link's `roster` operation, §7.3);
    answer with `roster_fetched(ticket, body)` or `roster_failed(ticket, failure)`."""

    ticket: int
    """Names this fetch in the answer."""
    tenant: str
    """The subscriber's tenant: the WCS refuses another tenant's conference (403)."""
    conference: str | None = None
    """The WCS's public id (a change, or a SUBSCRIBE in a join dialog), else None and:"""
    organizer: str = ""
    """`user@tenant` of the conference URI (a new subscription out of any dialog)."""
    uri_id: str = ""
    """The conference URI's id."""


@dataclass(frozen=True)
class Revoke:
    """End a participation at the WCS (its cookie stops working). Emitted once per admission."""

    conference_id: str
    """The conference's public id, from the WCS's admit answer (docs/protocol.md §2.1)."""
    participant_id: str
    """The participant id the WCS returned when it admitted the caller."""
    reason: str
    """Why: "bye", "cancelled", "connection lost", "connection lost before answer", ..."""


@dataclass(frozen=True)
class Log:
    """One structured log line for the focus log."""

    event: dict[str, Any]
    """The JSON object to log (never holds a cookie or a password)."""
    level: Literal["info", "warning"] = "info"
    """The log level."""


Output: TypeAlias = Send | Close | LookupCredentials | Admit | FetchRoster | Revoke | Log


# -- inputs: results of effects -----------------------------------------------------------
Credentials: TypeAlias = Mapping[str, str]
"""HA1 hex by algorithm ("MD5", "SHA-256") for the user a `LookupCredentials` named."""


@dataclass(frozen=True)
class AdmitRefused:
    """The WCS refused the admission with a 4xx (docs/protocol.md §4)."""

    status: int
    """The HTTP status: 403 another tenant, 404 unknown conference, 400 a bug on our side."""
    code: str = ""
    """The WCS's JSON error code, for the log."""


@dataclass(frozen=True)
class AdmitUnavailable:
    """No usable answer from the WCS in time (down, timeout, 5xx, 429, malformed answer)."""

    status: int | None = None
    """The HTTP status if the WCS answered at all, else None."""


AdmitFailure: TypeAlias = AdmitRefused | AdmitUnavailable
