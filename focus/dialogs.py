"""The focus's state records: INVITEs in progress and the dialogs they create.

An out-of-dialog INVITE moves through two waits, each its own record keyed by a ticket:
`AwaitingCredentials` (the HA1 lookup is out; the connection's input is paused) and then
`AwaitingAdmission` (the WCS call is out; CANCEL may still arrive). A 200 OK creates a
`Dialog`, whose life is the `DialogState` machine below: every transition goes through
`Dialog.advance`, and `TERMINATED` can be entered once only, which is what makes the
revocation of a participation happen exactly once.
"""

from __future__ import annotations

import enum
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field

from webconf.sip import digest
from webconf.sip.message import Request, SipURI
from webconf.sip.ws_framing import Framer

from .events import Conn

DialogKey = tuple[str, str, str]
"""(Call-ID, our tag, their tag)."""


@dataclass
class AwaitingCredentials:
    """A request with credentials whose HA1s are being looked up: an out-of-dialog INVITE,
    or a BYE or re-INVITE that came on a connection its dialog is not bound to."""

    ticket: int
    conn_id: int
    request: Request
    branch: str
    realm: str
    """The caller's domain (From host, lower case): the Digest realm."""
    caller_user: str
    """The From user part (the dialog's user, in a dialog): the Digest username must match."""
    algorithms: list[str]
    """The algorithms offered to this agent."""
    throttle_user: str | None
    """`user@realm` of the Authorization: the failure throttle's user key."""
    dialog: DialogKey | None = None
    """The dialog an in-dialog request authenticates for; None for a new INVITE."""


@dataclass
class AwaitingAdmission:
    """An authenticated, authorised INVITE waiting for the WCS (100 Trying sent)."""

    ticket: int
    conn: Conn
    request: Request
    branch: str
    conference_id: str
    conference_uri: SipURI
    user: str
    """`user@tenant` of the caller."""
    to_tag: str
    """Our tag, chosen now so that a 487 and the 200 carry the same one."""
    cancelled: bool = False
    """A CANCEL answered it 487: an admission that still arrives is revoked at once."""
    sdp_session_id: int = field(default_factory=lambda: secrets.randbelow(2**62))


class DialogState(enum.Enum):
    """Where a dialog is in its life (RFC 3261 §12, §13.3.1.4, §15)."""

    ACCEPTED = "accepted"
    """Our 200 OK is sent; the ACK has not arrived yet (the dialog exists: BYE works)."""
    CONFIRMED = "confirmed"
    """The ACK arrived."""
    TERMINATED = "terminated"
    """Ended by BYE or by the orphan grace running out; its participation is revoked."""


_TRANSITIONS: dict[DialogState, frozenset[DialogState]] = {
    DialogState.ACCEPTED: frozenset({DialogState.CONFIRMED, DialogState.TERMINATED}),
    DialogState.CONFIRMED: frozenset({DialogState.CONFIRMED, DialogState.TERMINATED}),
    DialogState.TERMINATED: frozenset(),
}
"""The only moves a dialog can make; a repeated ACK keeps a confirmed dialog confirmed."""


@dataclass(frozen=True, slots=True)
class DialogRoute:
    """What a request the focus sends in a dialog needs (RFC 3261 §12.1.1)."""

    remote_target: str
    """The Request-URI: the INVITE's Contact URI (else its From URI)."""
    route_set: tuple[str, ...]
    """The INVITE's Record-Route values in order: our Route header fields."""
    local: str
    """Our From: the INVITE's To value (the conference URI), without our tag."""
    remote: str
    """Our To: the INVITE's From value, with the caller's tag."""


@dataclass
class Dialog:
    """One joined participant's dialog with the focus."""

    call_id: str
    local_tag: str
    remote_tag: str
    conn_ids: set[int]
    """The connections it is bound to: its INVITE's, and each one on which a request
    authenticated as its user (agents may move, docs/protocol.md §2). A BYE or re-INVITE
    on any other connection must authenticate first; it is orphaned when the last is gone."""
    conference_id: str
    """The conference URI's id (the organizer's own, docs/protocol.md §2.1): what logs name."""
    wcs_conference: str
    """The WCS's public id of the conference, from its admit answer: what revocations name."""
    participant_id: str
    user: str
    role: str
    answer: tuple[str, bytes]
    """Content-Type and body of our 200 OK, resent for re-INVITEs."""
    contact: str
    state: DialogState = DialogState.ACCEPTED
    orphaned_at: float | None = None
    """When its connection went away (it ends at this + the grace), None while bound."""
    sdp_session_id: int = 0
    sdp_version: int = 1
    """RFC 3264 §8: later answers keep the session id and bump the version."""
    route: DialogRoute | None = None
    """How to send it a request (focus/requests.py): the BYE when its conference ends."""
    local_cseq: int = 0
    """The CSeq of the last request the focus sent in it (BYE, NOTIFY; RFC 3261 §12.2.1.1)."""

    @property
    def key(self) -> DialogKey:
        return (self.call_id, self.local_tag, self.remote_tag)

    @property
    def confirmed(self) -> bool:
        return self.state is DialogState.CONFIRMED

    def advance(self, to: DialogState) -> bool:
        """Move to `to` if the machine allows it; False (and no change) otherwise."""
        if to not in _TRANSITIONS[self.state]:
            return False
        self.state = to
        if to is DialogState.TERMINATED:
            self.orphaned_at = None
        return True

    @property
    def realm(self) -> str:
        """The Digest realm of its user (the tenant domain)."""
        return self.user.rpartition("@")[2]

    @property
    def username(self) -> str:
        """The Digest username of its user (the user part)."""
        return self.user.rpartition("@")[0]

    def unbind(self, conn_id: int, now: float) -> None:
        """A connection is gone: once none is left, start the grace period (once)."""
        self.conn_ids.discard(conn_id)
        if (not self.conn_ids and self.state is not DialogState.TERMINATED
                and self.orphaned_at is None):
            self.orphaned_at = now

    def bind(self, conn_id: int) -> None:
        """Its user authenticated on `conn_id` (or it is the INVITE's): follow the agent
        there, and stop the grace."""
        self.conn_ids.add(conn_id)
        self.orphaned_at = None


@dataclass
class ConnState:
    """One connection's state in the core (focus/core.py)."""

    conn: Conn
    framer: Framer
    nc_tracker: digest.NonceCountTracker = field(default_factory=digest.NonceCountTracker)
    pending: dict[str, int] = field(default_factory=dict)
    """Top-Via branch of each INVITE waiting for the WCS -> ticket."""
    completed: OrderedDict[tuple[str, str], bytes] = field(default_factory=OrderedDict)
    """(branch, method) -> final response bytes, to answer retransmissions."""
    dialogs: set[DialogKey] = field(default_factory=set)
    lookup: int | None = None
    """Ticket of the credentials lookup in flight: input is paused until it is answered."""
    received: int = 0
    """Framer units handled (messages, keep-alives, framing errors)."""
    closed: bool = False
    """A `Close` was emitted: input is discarded, replies are dropped."""
    fetches: int = 0
    """SUBSCRIBEs of this connection waiting for the roster (focus/subscribing.py)."""
    more: bool = False
    """`_drain` stopped at `requests_per_turn`: complete messages may still be buffered."""
