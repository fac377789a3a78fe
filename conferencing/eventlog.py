"""Delivery from the event log to this process's channels (docs/protocol.md §4.4).

Events are data: the store appends them to the conference's log in the transaction of the
change (store/log.py). This module is the one path from that log to the `EventHub`, on
SQLite and PostgreSQL alike:

- `EventFeed` keeps, for each conference with a channel here, the seq it has delivered up
  to. A wake `(conference, seq)` newer than that makes it read the rows after it, in order,
  render each (an `item.shared` row gets its item's key here, unwrapped from `items`) and
  hand them to the hub. One reader per conference at a time, so delivery is in seq order.
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.engine import make_url

from webconf.retry import Backoff

from .events import EventHub, Subscription
from .store import EventRow, Store
from .store.log import NOTIFY_CHANNEL, parse_notify

log = logging.getLogger("webconf.wcs.events")

Render = Callable[[EventRow], Awaitable[str | None]]
"""Turns a log row into the channel message (JSON text with its seq); None: skip it."""

APPLICATION_NAME = "webconf-events-listen"
"""How the NOTIFY connection shows in `pg_stat_activity`."""

BATCH = 256
"""Rows read per query while catching up."""


@dataclass(eq=False)
class _Track:
    delivered: int
    task: asyncio.Task[None] | None = None
    again: bool = False
    """A wake came while reading (or before `ready`): read again."""
    subscribers: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class EventFeed:
    """Reads the log for the conferences that have channels here and feeds the hub."""

    def __init__(self, store: Store, hub: EventHub, render: Render, *,
                 poll_seconds: float = 1.0) -> None:
        self.store = store
        self.hub = hub
        self.render = render
        self.poll_seconds = poll_seconds
        self._tracks: dict[str, _Track] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.listener: PgListener | None = None
        """The NOTIFY listener, on PostgreSQL (set by the app)."""
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
            track = self._tracks[conference_id] = _Track(delivered=0)
            try:
                seqs = await self.store.last_seqs([conference_id])
                track.delivered = seqs.get(conference_id, 0)
            except BaseException:
                del self._tracks[conference_id]
                track.ready.set()
                raise
            track.ready.set()
            if track.again:  # a commit's wake came while we read `delivered`
                self._start(conference_id, track)
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
        if track.subscribers <= 0 and (track.task is None or track.task.done()):
            del self._tracks[sub.conference_id]

    # -- wakes ------------------------------------------------------------------------
    def wake(self, conference_id: str, seq: int) -> None:
        """The conference's log has reached `seq`: deliver what is new (if tracked)."""
        track = self._tracks.get(conference_id)
        if track is None or (seq <= track.delivered and track.ready.is_set()):
            return
        if not track.ready.is_set() or (track.task is not None and not track.task.done()):
            track.again = True
            return
        self._start(conference_id, track)

    def _start(self, conference_id: str, track: _Track) -> None:
        track.task = asyncio.get_running_loop().create_task(
            self._catch_up(conference_id, track), name="wcs-events-catch-up")

    def wake_all(self, seqs: dict[str, int]) -> None:
        for conference_id, seq in seqs.items():
            self.wake(conference_id, seq)

    async def poll_once(self) -> None:
        """Compare every tracked conference's last seq with what was delivered."""
        if self._tracks:
            self.wake_all(await self.store.last_seqs(list(self._tracks)))

    async def _catch_up(self, conference_id: str, track: _Track) -> None:
        try:
            while True:
                track.again = False
                rows = await self.store.events_after(conference_id, track.delivered, BATCH)
                for row in rows:
                    message = await self.render(row)
                    if message is not None:
                        self.hub.deliver(conference_id, row.seq, message,
                                         participant_id=row.participant_id, final=row.final)
                        self.delivered_total += 1
                    track.delivered = row.seq
                if len(rows) < BATCH and not track.again:
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
            if track.subscribers <= 0 and self._tracks.get(conference_id) is track:
                del self._tracks[conference_id]

    async def run_poller(self) -> None:
        """Poll forever (cancel to stop); a failing store is retried next round."""
        failing = False
        while True:
            await asyncio.sleep(self.poll_seconds)
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

