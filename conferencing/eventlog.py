"""Delivery from the event log to this process's channels (docs/protocol.md §4.4).

Events are data: the store appends them to the conference's log in the transaction of the
change (store/log.py). This module is the one path from that log to the `EventHub`, on
SQLite and PostgreSQL alike:

- `EventFeed` keeps, for each conference with a channel here or a `watch` (the cookie
  cache's, conferencing/cookie_cache.py), the seq it has read up to. A wake
  `(conference, seq)` newer than that makes it read the rows after it, in order, show each
  to the row listeners (the cookie cache drops revoked cookies there), and, while the
  conference has channels here, render each (an `item.shared` row gets its item's key
  here, unwrapped from `items`) and hand it to the hub. One reader per conference at a
  time, so delivery is in seq order.
- Each track knows since when it is in sync (`Track.synced_at`): every row committed before
  that moment has been shown to the listeners. A poll that finds nothing new, or a read that
  reached the end of the log, moves it. A cache that serves only while its conference's
  track synced less than a second ago serves nothing a second after a revocation committed,
  whatever happened to NOTIFY or the database meanwhile.
- Wakes come from this process's own commits (`Store.on_commit`), from PostgreSQL NOTIFY
  (`PgListener`, for other nodes' commits), and from a poll every `poll_seconds` that
  compares each tracked conference's `last_seq`: a lost NOTIFY, a listener reconnecting
  or a node that fell behind is caught up from the log within one poll.
- `PgListener` holds a connection of its own, outside the pool (asyncpg listeners on pooled
  connections vanish when the pool recycles them), checks it every `keepalive_seconds`,
  and reconnects with backoff; every (re)connect is followed by a catch-up of every
  tracked conference, so events committed while it was away are delivered, not lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url

from webconf.events import ParticipantJoined, ParticipantLeft
from webconf.retry import Backoff

from .events import EventHub, Subscription
from .store import EventRow, Store
from .store.log import NOTIFY_CHANNEL, parse_notify

log = logging.getLogger("webconf.wcs.events")

Render = Callable[[EventRow], Awaitable[str | None]]
"""Turns a log row into the channel message (JSON text with its seq); None: skip it."""

RowListener = Callable[[EventRow], None]
"""Sees every row the feed reads, in seq order per conference, before it counts as read.
It must not block; an exception fails the read, which the next wake or poll retries."""

APPLICATION_NAME = "webconf-events-listen"
"""How the NOTIFY connection shows in `pg_stat_activity`."""

BATCH = 256
"""Rows read per query while catching up."""
ROSTER_EVENT_TYPES = frozenset({ParticipantJoined.TYPE, ParticipantLeft.TYPE})
"""Held back briefly by the hub to go to channels together (events.ROSTER_HOLD_SECONDS)."""


@dataclass(eq=False)
class Track:
    """One conference's reading position: kept while it has channels here or watchers."""

    conference_id: str
    delivered: int = 0
    """The seq read up to (listeners told, channels fed)."""
    task: asyncio.Task[None] | None = None
    again: bool = False
    """A wake came while reading (or before `ready`): read again."""
    subscribers: int = 0
    watchers: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False
    """Its first read failed, so it tracks nothing: `watch` anew."""
    synced_at: float = -math.inf
    """A `time.monotonic()` before which every committed row has been read (-inf: none)."""

    def fresh(self, now: float, within: float) -> bool:
        """Whether the track was in sync less than `within` seconds before `now`."""
        return now - self.synced_at < within


class EventFeed:
    """Reads the log for the conferences that have channels or watchers here; tells the row
    listeners and feeds the hub."""

    def __init__(self, store: Store, hub: EventHub, render: Render, *,
                 poll_seconds: float = 1.0) -> None:
        self.store = store
        self.hub = hub
        self.render = render
        self.poll_seconds = poll_seconds
        self._tracks: dict[str, Track] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.listener: PgListener | None = None
        """The NOTIFY listener, on PostgreSQL (set by the app)."""
        self.row_listeners: list[RowListener] = []
        """Told every row read, channels or not (the cookie cache)."""
        self.before_poll: list[Callable[[], None]] = []
        """Called before each poll (the cookie cache's sweep)."""
        self._failing = False
        self.delivered_total = 0
        """Events handed to the hub (each once per process, whatever its audience)."""

    # -- channels ---------------------------------------------------------------------
    async def subscribe(self, conference_id: str, participant_id: str) -> Subscription:
        """A hub subscription that gets every event committed from now on.

        The first channel of a conference here starts its track at the conference's
        current last seq: whatever committed before is in the log (and so in the caller's
        welcome or replay, which it reads after this returns)."""
        track = self._tracks.get(conference_id)
        if track is None:
            track = self._tracks[conference_id] = Track(conference_id)
            await self._load(track)
        else:
            await track.ready.wait()
            if self._tracks.get(conference_id) is not track:
                return await self.subscribe(conference_id, participant_id)
        track.subscribers += 1
        sub = self.hub.subscribe(conference_id, participant_id)
        sub.on_unsubscribe = self._release
        return sub

    def _release(self, sub: Subscription) -> None:
        track = self._tracks.get(sub.conference_id)
        if track is None:
            return
        track.subscribers -= 1
        self._forget_if_unused(track)

    async def _load(self, track: Track) -> None:
        """Start `track` at the conference's last seq (the log before it is not ours)."""
        started = time.monotonic()
        try:
            seqs = await self.store.last_seqs([track.conference_id])
        except BaseException:
            track.failed = True
            if self._tracks.get(track.conference_id) is track:
                del self._tracks[track.conference_id]
            track.ready.set()
            raise
        track.delivered = seqs.get(track.conference_id, 0)
        track.synced_at = started
        track.ready.set()
        if track.again:  # a commit's wake came while we read `delivered`
            self._start(track)

    def _forget_if_unused(self, track: Track) -> None:
        if (track.subscribers <= 0 and track.watchers <= 0 and track.ready.is_set()
                and (track.task is None or track.task.done())
                and self._tracks.get(track.conference_id) is track):
            del self._tracks[track.conference_id]

    # -- watches ----------------------------------------------------------------------
    def watch(self, conference_id: str) -> Track:
        """Read the conference's log (for the row listeners) until `unwatch`, channels or
        not. The track starts at the last seq once its first read is done (`ready`);
        rows committed after that are all read. Pair every call with one `unwatch`."""
        track = self._tracks.get(conference_id)
        if track is None:
            track = self._tracks[conference_id] = Track(conference_id)
            task = asyncio.get_running_loop().create_task(
                self._load_watched(track), name="wcs-events-watch")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        track.watchers += 1
        return track

    def is_tracked(self, conference_id: str) -> bool:
        """Whether the conference's log is read here (channels or watchers)."""
        return conference_id in self._tracks

    def unwatch(self, track: Track) -> None:
        track.watchers -= 1
        self._forget_if_unused(track)

    async def _load_watched(self, track: Track) -> None:
        try:
            await self._load(track)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the watcher sees `failed` and watches again later
            log.warning(json.dumps({"event": "events.watch_failed",
                                    "error": type(exc).__name__}))
        self._forget_if_unused(track)  # every watcher may have gone meanwhile

    # -- wakes ------------------------------------------------------------------------
    def wake(self, conference_id: str, seq: int, rows: Sequence[EventRow] = ()) -> None:
        """The conference's log has reached `seq`: read what is new (if tracked). `rows`,
        when given, are the rows up to `seq` that this process's own commit appended: if
        they follow on from what was read, they are delivered without reading them back."""
        track = self._tracks.get(conference_id)
        if track is None or (seq <= track.delivered and track.ready.is_set()):
            return
        if not track.ready.is_set() or (track.task is not None and not track.task.done()):
            track.again = True
            return
        follows = bool(rows) and rows[0].seq == track.delivered + 1 and rows[-1].seq == seq
        self._start(track, rows if follows else ())

    def _start(self, track: Track, rows: Sequence[EventRow] = ()) -> None:
        track.task = asyncio.get_running_loop().create_task(
            self._catch_up(track, rows), name="wcs-events-catch-up")

    def wake_all(self, seqs: dict[str, int]) -> None:
        for conference_id, seq in seqs.items():
            self.wake(conference_id, seq)

    async def poll_once(self) -> None:
        """Compare every tracked conference's last seq with what was read; a track with
        nothing new is in sync as of the moment the query started."""
        if not self._tracks:
            return
        tracks = dict(self._tracks)
        started = time.monotonic()
        seqs = await self.store.last_seqs(list(tracks))
        for conference_id, track in tracks.items():
            if self._tracks.get(conference_id) is not track:
                continue
            seq = seqs.get(conference_id)
            if track.ready.is_set() and (seq is None or seq <= track.delivered):
                track.synced_at = max(track.synced_at, started)
            elif seq is not None:
                self.wake(conference_id, seq)

    async def _catch_up(self, track: Track, committed: Sequence[EventRow] = ()) -> None:
        """Deliver the rows after `track.delivered`: `committed` first (a commit's own
        rows, which follow on from it), then whatever the log holds."""
        conference_id = track.conference_id
        try:
            read = True
            if committed:
                await self._deliver(track, committed)
                read = track.again  # else in sync as of no read: `synced_at` waits for one
            while read:
                track.again = False
                started = time.monotonic()
                rows = await self.store.events_after(conference_id, track.delivered, BATCH)
                await self._deliver(track, rows)
                if len(rows) < BATCH and not track.again:
                    track.synced_at = max(track.synced_at, started)
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next wake or poll retries from `delivered`
            if not self._failing:  # one line per outage, not one per conference and try
                log.warning(json.dumps({"event": "events.catch_up_failed",
                                        "error": type(exc).__name__}))
            self._failing = True
        else:
            if self._failing:
                log.warning(json.dumps({"event": "events.catch_up_recovered"}))
            self._failing = False
        finally:
            if (track.subscribers <= 0 and track.watchers <= 0
                    and self._tracks.get(conference_id) is track):
                del self._tracks[conference_id]

    async def _deliver(self, track: Track, rows: Sequence[EventRow]) -> None:
        """Show `rows` (the next in seq order) to the listeners and the hub."""
        conference_id = track.conference_id
        for row in rows:
            for listener in self.row_listeners:
                listener(row)
            if self.hub.has(conference_id):  # no channel here: no key to unwrap
                message = await self.render(row)
                if message is not None:
                    self.hub.deliver(conference_id, row.seq, message,
                                     participant_id=row.participant_id, final=row.final,
                                     hold=row.type in ROSTER_EVENT_TYPES)
                    self.delivered_total += 1
            track.delivered = row.seq

    async def run_poller(self) -> None:
        """Poll forever (cancel to stop), every `poll_seconds` from the previous poll's
        start (so a track in sync stays within `poll_seconds` plus one query of now); a
        failing store is retried next round."""
        failing = False
        next_at = time.monotonic() + self.poll_seconds
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            now = time.monotonic()
            next_at += self.poll_seconds
            if next_at <= now:  # fell behind (a slow store): no burst of polls
                next_at = now + self.poll_seconds
            for hook in self.before_poll:
                hook()
            try:
                await self.poll_once()
            except Exception as exc:
                if not failing:
                    log.warning(json.dumps({"event": "events.poll_failed",
                                            "error": type(exc).__name__}))
                failing = True
            else:
                failing = False

    async def close(self) -> None:
        tasks = [t.task for t in self._tracks.values() if t.task is not None]
        tasks += list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class PgListener:
    """LISTEN on a dedicated asyncpg connection, with keepalive and reconnect."""

    def __init__(self, url: str, feed: EventFeed, *, keepalive_seconds: float = 5.0,
                 connect_timeout: float = 10.0) -> None:
        self.url = make_url(url)
        self.feed = feed
        self.keepalive_seconds = keepalive_seconds
        self.connect_timeout = connect_timeout
        self.connects = 0
        """Successful (re)connects: 1 after the first."""
        self.connected = asyncio.Event()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        parsed = parse_notify(payload)
        if parsed is not None:
            self.feed.wake(*parsed)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after any loss."""
        import asyncpg  # only PostgreSQL deployments need it

        backoff = Backoff(initial=0.2, maximum=5.0)
        lost_logged = False
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(
                    host=self.url.host, port=self.url.port, user=self.url.username,
                    password=self.url.password, database=self.url.database,
                    timeout=self.connect_timeout,
                    server_settings={"application_name": APPLICATION_NAME})
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                self.connects += 1
                backoff.reset()
                if lost_logged:
                    log.warning(json.dumps({"event": "events.listener_reconnected"}))
                lost_logged = False
                self.connected.set()
                # Whatever committed while we were not listening is in the log.
                await self.feed.poll_once()
                while True:
                    await asyncio.sleep(self.keepalive_seconds)
                    await conn.fetchval("SELECT 1", timeout=self.keepalive_seconds)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.connected.clear()
                if not lost_logged:
                    log.warning(json.dumps({"event": "events.listener_lost",
                                            "error": type(exc).__name__}))
                    lost_logged = True
                await asyncio.sleep(backoff.next_delay())
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2.0)

