"""RFC 4575 subscriptions to a conference's roster: RFC 6665 notifier state, sans-IO.

The core (focus/core.py) authenticates a SUBSCRIBE and gets the roster from the WCS
(`FetchRoster`); this module decides the rest (docs/protocol.md §9.3):

- `check(req)`: the request-level answers before any authentication: `489 Bad Event`
  with `Allow-Events: conference` for any other (or no) event package, `406` when
  `Accept` leaves out `application/conference-info+xml`, `423` with `Min-Expires` for an
  `Expires` under `MIN_EXPIRES` (but 0), `400` for one that is not a number. The expiry
  granted is `Expires` capped at `MAX_EXPIRES` (`DEFAULT_EXPIRES` without one).
- `Subscriptions.start(...)` makes a subscription once the roster is known (the core has
  answered 200) and sends the first NOTIFY: `state="full"`, version 1. `roster(...)`
  takes each newer roster of a conference and sends every subscription of it a partial
  NOTIFY (version + 1) of what changed since what it was last sent.
- One NOTIFY per subscription is in flight at a time (a client transaction; over TLS/TCP
  it is not retransmitted): a change meanwhile is sent, as the difference from what the
  subscriber has, once it is answered. A 2xx answer keeps the subscription; any other
  final answer (481 first) ends it, and so does no final answer within
  `NOTIFY_TIMEOUT_SECONDS` (RFC 3261 Timer F), RFC 6665 §4.2.2.
- `refresh(...)` (an in-dialog SUBSCRIBE) renews the expiry and sends the full state
  again; `Expires: 0` ends it with a final NOTIFY `Subscription-State: terminated`
  (for a subscription that was never active, a fetch: with the state in its body). At
  its expiry it ends with `terminated;reason=timeout`. A lost connection ends its
  subscriptions (the focus cannot reach the subscriber any other way).
- Bounds: `MAX_PER_CONNECTION`, `MAX_PER_USER` and `MAX_TOTAL` subscriptions (past them
  the core answers 503 with Retry-After).
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from dataclasses import dataclass, field

from webconf.sip.message import Request, Response

from .conference_info import CONTENT_TYPE, RosterState, document
from .dialogs import Dialog, DialogKey, DialogRoute
from .events import Conn, Log, Output, Send
from .requests import RequestWriter, top_branch

EVENT = "conference"
MIN_EXPIRES = 60
DEFAULT_EXPIRES = 3600
"""RFC 4575 §3.7's suggested default."""
MAX_EXPIRES = 7200
NOTIFY_TIMEOUT_SECONDS = 32.0
"""RFC 3261 Timer F (64 x T1): a NOTIFY with no final answer by then ends its subscription."""
MAX_PER_CONNECTION = 16
MAX_PER_USER = 32
MAX_TOTAL = 20_000
_EXPIRES_RE = re.compile(r"[0-9]{1,10}")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A SUBSCRIBE's answer before any authentication."""

    status: int
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def _event_package(req: Request) -> str | None:
    value = req.headers.get("Event") or req.headers.get("o")
    if value is None:
        return None
    return value.split(";")[0].strip().lower()


def check(req: Request) -> Refusal | int:
    """The expiry granted to this SUBSCRIBE (seconds; 0: unsubscribe or fetch), or why not."""
    if _event_package(req) != EVENT:
        return Refusal(489, "Bad Event", (("Allow-Events", EVENT),))
    accepts = [a.split(";")[0].strip().lower() for a in req.headers.get_all("Accept")]
    if accepts and not any(a in (CONTENT_TYPE, "application/*", "*/*") for a in accepts):
        return Refusal(406, "Not Acceptable", (("Accept", CONTENT_TYPE),))
    raw = req.headers.get("Expires")
    if raw is None:
        return DEFAULT_EXPIRES
    if not _EXPIRES_RE.fullmatch(raw.strip()):
        return Refusal(400, "Bad Expires")
    expires = int(raw)
    if 0 < expires < MIN_EXPIRES:
        return Refusal(423, "Interval Too Brief", (("Min-Expires", str(MIN_EXPIRES)),))
    return min(expires, MAX_EXPIRES)


@dataclass(eq=False)
class AwaitingRoster:
    """An authenticated SUBSCRIBE waiting for the roster (`FetchRoster`)."""

    ticket: int
    conn: Conn
    request: Request
    branch: str
    user: str
    expires: int
    entity: str
    """The conference URI: the documents' `entity`."""
    contact: str
    dialog: Dialog | None
    """The join dialog it came in (None: a subscription dialog of its own)."""


@dataclass(eq=False)
class Subscription:
    key: DialogKey
    conn: Conn
    route: DialogRoute
    user: str
    conference: str
    """The WCS's public id."""
    entity: str
    contact: str
    expires_at: float
    dialog: Dialog | None
    """The join dialog it shares (its CSeq), or None."""
    cseq: int = 0
    version: int = 0
    sent: RosterState | None = None
    """What the subscriber was last sent (None: nothing yet, so the full state next)."""
    full_next: bool = False
    in_flight: str | None = None
    """Branch of the NOTIFY out."""
    deadline: float = 0.0
    """When the NOTIFY out times out."""

    def next_cseq(self) -> int:
        if self.dialog is not None:
            self.dialog.local_cseq += 1
            return self.dialog.local_cseq
        self.cseq += 1
        return self.cseq


@dataclass
class Subscriptions:
    """Every subscription of the focus, by dialog key."""

    writer: RequestWriter
    subs: dict[DialogKey, Subscription] = field(default_factory=dict)
    rosters: dict[str, RosterState] = field(default_factory=dict)
    """The newest roster of each conference with subscriptions."""
    wanted: dict[str, int] = field(default_factory=dict)
    """The newest seq announced per conference (a fetch is due while above the roster's)."""
    _branches: dict[str, DialogKey] = field(default_factory=dict)
    _by_conference: dict[str, set[DialogKey]] = field(default_factory=dict)
    _per_conn: Counter[int] = field(default_factory=Counter)
    _per_user: Counter[str] = field(default_factory=Counter)

    # -- queries ---------------------------------------------------------------------------
    def get(self, key: DialogKey) -> Subscription | None:
        return self.subs.get(key)

    def conferences(self) -> set[str]:
        return set(self._by_conference)

    def of(self, conference: str) -> list[Subscription]:
        return [self.subs[k] for k in self._by_conference.get(conference, ())]

    def on_connection(self, conn_id: int) -> bool:
        return self._per_conn[conn_id] > 0

    def room_for(self, conn_id: int, user: str) -> bool:
        """Whether one more subscription fits the bounds."""
        if len(self.subs) >= MAX_TOTAL:
            return False
        return (self._per_conn[conn_id] < MAX_PER_CONNECTION
                and self._per_user[user] < MAX_PER_USER)

    def next_deadline(self) -> float | None:
        times = [s.expires_at for s in self.subs.values()]
        times += [s.deadline for s in self.subs.values() if s.in_flight is not None]
        return min(times, default=None)

    def due(self, conference: str, seq: int) -> bool:
        """A change notice with `seq`: True if the roster must be fetched again."""
        if conference not in self._by_conference:
            return False
        have = self.rosters.get(conference)
        if have is not None and have.seq >= seq:
            return False
        self.wanted[conference] = max(seq, self.wanted.get(conference, 0))
        return True

    # -- life ------------------------------------------------------------------------------
    def start(self, pending: AwaitingRoster, key: DialogKey, route: DialogRoute,
              conference: str, roster: RosterState, now: float) -> list[Output]:
        """The 200 went out: the subscription exists; its first NOTIFY (full state)."""
        sub = Subscription(key, pending.conn, route, pending.user, conference, pending.entity,
                           pending.contact, now + pending.expires, pending.dialog)
        self._keep(roster)
        if pending.expires == 0:  # a fetch: the state, and the end at once
            sub.version = 1
            out = self._notify(sub, document(sub.entity, 1, roster), now, terminated="")
            if conference not in self._by_conference:
                self.rosters.pop(conference, None)
            return out
        self.subs[key] = sub
        self._by_conference.setdefault(conference, set()).add(key)
        self._per_conn[sub.conn.id] += 1
        self._per_user[sub.user] += 1
        return self._send(sub, now) + [Log({
            "event": "subscribe", "conference": conference, "user": sub.user,
            "expires": pending.expires, "peer": sub.conn.peer_host,
            "transport": sub.conn.transport})]

    def refresh(self, sub: Subscription, expires: int, now: float) -> list[Output]:
        """An in-dialog SUBSCRIBE was answered 200: renew, or end (`expires` 0)."""
        if expires == 0:
            return self._end(sub, now, "unsubscribed", notify="")
        sub.expires_at = now + expires
        sub.full_next = True
        return self._send(sub, now)

    def roster(self, roster: RosterState, now: float) -> list[Output]:
        """A roster fetched from the WCS: notify each subscription of its conference."""
        if not self._keep(roster):
            return []
        out: list[Output] = []
        for sub in self.of(roster.conference):
            out += self._send(sub, now)
        return out

    def answered(self, response: Response, now: float) -> list[Output] | None:
        """A response to one of our NOTIFYs (None: not a NOTIFY's)."""
        cseq = (response.headers.get("CSeq") or "").split()
        if len(cseq) != 2 or cseq[1] != "NOTIFY":
            return None
        key = self._branches.get(top_branch(response))
        if key is None or response.status < 200:
            return []
        del self._branches[top_branch(response)]
        sub = self.subs.get(key)
        if sub is None:
            return []
        sub.in_flight = None
        if response.status >= 300:
            return self._end(sub, now, f"notify answered {response.status}")
        return self._send(sub, now)

    def expired(self, now: float) -> list[Output]:
        out: list[Output] = []
        for sub in list(self.subs.values()):
            if sub.in_flight is not None and now >= sub.deadline:
                self._branches.pop(sub.in_flight, None)
                out += self._end(sub, now, "notify timeout")
            elif now >= sub.expires_at:
                out += self._end(sub, now, "expired", notify="timeout")
        return out

    def connection_lost(self, conn_id: int, now: float) -> list[Output]:
        out: list[Output] = []
        if not self._per_conn[conn_id]:
            return out
        for sub in [s for s in self.subs.values() if s.conn.id == conn_id]:
            out += self._end(sub, now, "connection lost")
        return out

    # -- helpers ---------------------------------------------------------------------------
    def _keep(self, roster: RosterState) -> bool:
        have = self.rosters.get(roster.conference)
        if have is not None and have.seq >= roster.seq:
            return False
        self.rosters[roster.conference] = roster
        return True

    def fetch_again(self, conference: str) -> bool:
        """After a fetch: True if a newer change was announced meanwhile."""
        have = self.rosters.get(conference)
        return (have is not None and self.wanted.get(conference, 0) > have.seq
                and conference in self._by_conference)

    def _send(self, sub: Subscription, now: float) -> list[Output]:
        """The NOTIFY this subscription is due, if any and none is out."""
        roster = self.rosters.get(sub.conference)
        if sub.in_flight is not None or roster is None:
            return []
        previous = None if sub.full_next or sub.sent is None else sub.sent
        body = document(sub.entity, sub.version + 1, roster, previous)
        if body is None:
            sub.sent = roster
            return []
        sub.version += 1
        sub.sent, sub.full_next = roster, False
        return self._notify(sub, body, now)

    def _notify(self, sub: Subscription, body: bytes | None, now: float, *,
                terminated: str | None = None) -> list[Output]:
        """One NOTIFY; `terminated`: the final one, with this reason ("" for none)."""
        if terminated is None:
            left = max(0, int(sub.expires_at - now))
            state = f"active;expires={left}"
        else:
            state = "terminated" + (f";reason={terminated}" if terminated else "")
        headers = [("Contact", sub.contact), ("Event", EVENT), ("Subscription-State", state)]
        if body is not None:
            headers.append(("Content-Type", CONTENT_TYPE))
        written = self.writer.write("NOTIFY", sub.route, local_tag=sub.key[1],
                                    call_id=sub.key[0], cseq=sub.next_cseq(), conn=sub.conn,
                                    headers=headers, body=body or b"")
        if written is None:
            return []
        branch, data = written
        if terminated is None:
            sub.in_flight, sub.deadline = branch, now + NOTIFY_TIMEOUT_SECONDS
            self._branches[branch] = sub.key
        return [Send(sub.conn.id, data)]

    def _end(self, sub: Subscription, now: float, reason: str, *,
             notify: str | None = None) -> list[Output]:
        """Forget the subscription; `notify`: send the final NOTIFY with this reason."""
        if self.subs.pop(sub.key, None) is not None:
            keys = self._by_conference.get(sub.conference, set())
            keys.discard(sub.key)
            if not keys:
                self._by_conference.pop(sub.conference, None)
                self.rosters.pop(sub.conference, None)
                self.wanted.pop(sub.conference, None)
            self._per_conn[sub.conn.id] -= 1
            if self._per_conn[sub.conn.id] <= 0:
                del self._per_conn[sub.conn.id]
            self._per_user[sub.user] -= 1
            if self._per_user[sub.user] <= 0:
                del self._per_user[sub.user]
        if sub.in_flight is not None:
            self._branches.pop(sub.in_flight, None)
        out: list[Output] = [Log({"event": "subscription.end", "conference": sub.conference,
                                  "user": sub.user, "reason": reason})]
        if notify is not None:
            out += self._notify(sub, None, now, terminated=notify)
        return out


def new_tag() -> str:
    return secrets.token_hex(8)
