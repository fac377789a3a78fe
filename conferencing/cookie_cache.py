"""A bounded, short-lived cache of cookies this process verified (docs/protocol.md §3).

A repeat request with the same cookie costs a hash and a dict lookup instead of the EdDSA
verification and the store query. Nothing about what is accepted changes:

- Only a cookie that passed the whole check (signature and claims, then the store: not
  revoked, the conference known, not ended, of the cookie's tenant) is added, right after
  that check. A miss runs the check exactly as without a cache.
- The key is the SHA-256 of the token (the token itself is neither kept nor logged), so a
  forged or altered token finds no entry: it takes the full check and fails there.
- A hit still applies `exp` through the same `CookieAuthority.expired` (refused from `exp`
  on) and still requires the conference of the URL; an entry lives `ttl_seconds` at most,
  and `max_entries` bounds the cache (the oldest entry goes first: with one TTL for all, it
  has the least time left).
- Revocation, within one second on every node (docs/protocol.md §4.4): the cache watches the
  event log of every conference it holds entries of (`EventFeed.watch`), and drops a
  participant's entries at its `revoked` row (and at `participant.role_changed`: the role
  in force is read again, docs/protocol.md §9.2) and a conference's at `conference.ended`. A hit
  needs the conference's track to have been in sync less than `fresh_seconds` ago (the
  feed's poll renews that every second): a lost NOTIFY, a slow reader or a database outage
  make entries miss, never serve a revoked cookie. This process's own revocations and ends
  drop their entries synchronously as they commit (`drop_participant`, `drop_conference`).
- Races: a miss registers a `Ticket` before its store query. A revocation read while the
  query runs marks the ticket stale, and a stale ticket adds nothing. A ticket adds only if
  its conference's track was already reading the log when it was taken, so every row
  committed after the query's snapshot is read while the ticket or its entry exists.
  The first miss of a conference only starts the watch (in the background, so a miss stays
  one query); the watch lingers `idle_watch_seconds` after its last entry or ticket goes,
  so the next miss can add.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from webconf.events import ConferenceEnded, ParticipantRoleChanged, Revoked

from .cookies import CookieClaims
from .eventlog import EventFeed, Track
from .events import role_change
from .store import EventRow

MAX_ENTRIES = 50_000
TTL_SECONDS = 30.0
FRESH_SECONDS = 1.0
"""The revocation bound: an entry is served only while its conference's log was read to
the end less than this long ago."""
IDLE_WATCH_SECONDS = 10.0
MAX_TOKEN_CHARS = 4096
"""What `CookieAuthority.verify` accepts at most; longer tokens are never looked up."""


def token_key(token: str) -> bytes | None:
    """The cache key of a token; None for one that verification refuses on sight."""
    if len(token) > MAX_TOKEN_CHARS or not token.isascii():
        return None
    return hashlib.sha256(token.encode("ascii")).digest()


@dataclass(eq=False, slots=True)
class _Conference:
    """The cache's share of one conference: its watch, its entries, its misses in flight."""

    track: Track
    entries: dict[str, set[bytes]] = field(default_factory=dict)
    """participant id -> keys of its cached cookies."""
    size: int = 0
    pending: set[Ticket] = field(default_factory=set)


@dataclass(eq=False, slots=True)
class Ticket:
    """A miss in flight: taken before its store query, closed after (`CookieCache.end`)."""

    claims: CookieClaims
    conference: _Conference
    track: Track
    armed: bool
    """The track was reading the log when the ticket was taken: an entry may follow."""
    stale: bool = False
    """A revocation or end of this cookie was read meanwhile: add nothing."""


@dataclass(slots=True)
class _Entry:
    claims: CookieClaims
    conference: _Conference
    until: float
    """`time.monotonic()` at which the entry goes, whatever its `exp`."""


class CookieCache:
    """Verified cookies by SHA-256 of the token; see the module docstring."""

    def __init__(self, feed: EventFeed, *, expired: Callable[[int], bool],
                 max_entries: int = MAX_ENTRIES, ttl_seconds: float = TTL_SECONDS,
                 fresh_seconds: float = FRESH_SECONDS,
                 idle_watch_seconds: float = IDLE_WATCH_SECONDS) -> None:
        self.feed = feed
        self.expired = expired
        """`CookieAuthority.expired`: the one `exp` rule."""
        self.max_entries = max_entries
        self.ttl_seconds = ttl_seconds
        self.fresh_seconds = fresh_seconds
        self.idle_watch_seconds = idle_watch_seconds
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        """In insertion order, so by `until`: expiry and eviction take from the front."""
        self._conferences: dict[str, _Conference] = {}
        self._idle: dict[str, float] = {}
        """Conferences with neither entries nor tickets -> since when (monotonic)."""
        feed.row_listeners.append(self.on_row)
        feed.before_poll.append(self.sweep)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def conferences(self) -> int:
        """Conferences the cache watches (entries, misses in flight or lingering)."""
        return len(self._conferences)

    # -- lookups --------------------------------------------------------------------
    def get(self, token: str, conference_id: str) -> CookieClaims | None:
        """The claims of a cached, still acceptable cookie for `conference_id`; None: take
        the full check."""
        key = token_key(token)
        entry = None if key is None else self._entries.get(key)
        if entry is None or key is None:
            return None
        now = time.monotonic()
        claims = entry.claims
        if now >= entry.until or self.expired(claims.expires_at):
            self._remove(key, entry)
            return None
        if claims.conference_id != conference_id:  # the full check answers 403
            return None
        if not entry.conference.track.fresh(now, self.fresh_seconds):
            return None
        return claims

    # -- misses ---------------------------------------------------------------------
    def begin(self, claims: CookieClaims) -> Ticket:
        """Take a ticket for a verified cookie, before its store query."""
        conference_id = claims.conference_id
        conf = self._conferences.get(conference_id)
        if conf is None:
            conf = self._conferences[conference_id] = _Conference(
                self.feed.watch(conference_id))
        elif conf.track.failed:  # its first read failed: nothing of it can be served
            self.drop_conference(conference_id)
            self.feed.unwatch(conf.track)
            conf.track = self.feed.watch(conference_id)
        self._idle.pop(conference_id, None)
        track = conf.track
        ticket = Ticket(claims, conf, track, armed=track.ready.is_set() and not track.failed)
        conf.pending.add(ticket)
        return ticket

    def put(self, ticket: Ticket, token: str, claims: CookieClaims | None = None) -> bool:
        """Cache the ticket's cookie (it passed the whole check); False if it may not be.
        `claims`: what hits are to get, when not the ticket's (the role in force, §9.2)."""
        conf = ticket.conference
        if claims is None:
            claims = ticket.claims
        if (ticket.stale or not ticket.armed or ticket.track is not conf.track
                or self._conferences.get(claims.conference_id) is not conf):
            return False
        key = token_key(token)
        if key is None or key in self._entries:
            return False
        now = time.monotonic()
        self._expire(now)
        while len(self._entries) >= self.max_entries:
            oldest = next(iter(self._entries))
            self._remove(oldest, self._entries[oldest])
        self._entries[key] = _Entry(claims, conf, now + self.ttl_seconds)
        conf.entries.setdefault(claims.participant_id, set()).add(key)
        conf.size += 1
        return True

    def end(self, ticket: Ticket) -> None:
        """Close a ticket (after `put`, or after the check failed)."""
        conf = ticket.conference
        conf.pending.discard(ticket)
        self._maybe_idle(ticket.claims.conference_id, conf)

    # -- invalidation ---------------------------------------------------------------
    def on_row(self, row: EventRow) -> None:
        """The feed's row listener: revocations and ends drop their cookies; so does a
        role change, so that the next request reads the role in force (§9.2)."""
        if row.type == Revoked.TYPE and row.participant_id is not None:
            self.drop_participant(row.conference_id, row.participant_id)
        elif row.type == ParticipantRoleChanged.TYPE:
            who = role_change(row.payload)
            if who is not None:
                self.drop_participant(row.conference_id, who.id)
        elif row.type == ConferenceEnded.TYPE:
            self.drop_conference(row.conference_id)

    def drop_participant(self, conference_id: str, participant_id: str) -> None:
        conf = self._conferences.get(conference_id)
        if conf is None:
            return
        for ticket in conf.pending:
            if ticket.claims.participant_id == participant_id:
                ticket.stale = True
        for key in list(conf.entries.get(participant_id, ())):
            self._remove(key, self._entries[key])

    def drop_conference(self, conference_id: str) -> None:
        conf = self._conferences.get(conference_id)
        if conf is None:
            return
        for ticket in conf.pending:
            ticket.stale = True
        for keys in list(conf.entries.values()):
            for key in list(keys):
                self._remove(key, self._entries[key])

    # -- housekeeping ---------------------------------------------------------------
    def sweep(self) -> None:
        """Drop expired entries and release the watches idle for `idle_watch_seconds`
        (the feed calls this before each poll)."""
        now = time.monotonic()
        self._expire(now)
        for conference_id, since in list(self._idle.items()):
            if now - since < self.idle_watch_seconds:
                continue
            del self._idle[conference_id]
            conf = self._conferences.get(conference_id)
            if conf is not None and conf.size <= 0 and not conf.pending:
                del self._conferences[conference_id]
                self.feed.unwatch(conf.track)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.until > now:
                return
            self._remove(key, entry)

    def _remove(self, key: bytes, entry: _Entry) -> None:
        del self._entries[key]
        conf = entry.conference
        pid = entry.claims.participant_id
        keys = conf.entries.get(pid)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del conf.entries[pid]
        conf.size -= 1
        self._maybe_idle(entry.claims.conference_id, conf)

    def _maybe_idle(self, conference_id: str, conf: _Conference) -> None:
        if (conf.size <= 0 and not conf.pending
                and self._conferences.get(conference_id) is conf):
            self._idle.setdefault(conference_id, time.monotonic())
