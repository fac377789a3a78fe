"""Fan-out of conference events to data-channel subscribers.

Each open data channel holds a `Subscription` with a bounded queue. A subscriber that falls
behind by more than the queue length is cut off (it reconnects and its `welcome` carries
the full item list again) rather than letting memory grow. Events that end a
participant's presence (`revoked`, `conference.ended`) close the subscription after
delivery.

Memory: a node holds one subscription per open channel (10,000 and more), nearly all of
them idle. So a subscription keeps no queue while it has nothing pending (the deque exists
only between a delivery and the pump draining it) and at most one waiter future, instead of
an `asyncio.Queue` (three deques, ~2.4 KB each idle), and the hub counts channels per
participant so the per-participant channel cap is checked without scanning a conference.

This hub is per process and holds no history: every event reaches it from the database's
event log through the node's `EventFeed` (eventlog.py), numbered by its `seq`. A subscription
keeps the seq of the last event its channel sent (`cursor`) and skips anything not newer,
so an event that reaches it both by a replay (`?after=`, the welcome's item list) and live
is sent once.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from webconf.events import EventError, Participant, ParticipantRoleChanged

from .store.log import EventRow

CLOSE = object()
"""Sentinel queued after a final event: the channel closes once it has sent it."""
ROSTER_HOLD_SECONDS = 0.1
ROSTER_HOLD_MAX = 64
"""Joins and leaves are held up to this long (or this many) per conference before they go
to its channels together: a meeting of a thousand joining people costs each channel a
wake-up and a (batched) frame per 100 ms instead of one per join. Any other event sends
what is held first, so the order stays the log's."""
ROSTER_FRAMES_PER_SECOND = 2000
"""In a large meeting the hold grows with its audience, so that a burst of joins costs
the conference's channels about this many roster frames a second in all, whatever their
number (each frame is a TLS record, a send and a wake-up: the cost of a burst of joins to
a thousand channels was that, not the events): 100 ms up to 200 channels, then longer."""
ROSTER_HOLD_LONGEST = 1.0
"""The hold never exceeds this: a join shows in every roster within a second."""
ROSTER_HOLD_MOST = 128
"""A large meeting's hold ends early once this many events are held: half a channel's
queue (`EventHub.queue_length`), so a channel without batches that is still sending the
last release is not cut off as too slow by the next."""


def roster_hold(channels: int) -> tuple[float, int]:
    """(seconds, events) a conference with `channels` open channels holds joins and leaves."""
    seconds = min(max(ROSTER_HOLD_SECONDS, channels / ROSTER_FRAMES_PER_SECOND),
                  ROSTER_HOLD_LONGEST)
    most = ROSTER_HOLD_MAX if seconds <= ROSTER_HOLD_SECONDS else ROSTER_HOLD_MOST
    return seconds, most


@dataclass(eq=False, slots=True)
class Subscription:
    conference_id: str
    participant_id: str
    overflowed: bool = False
    closed: bool = False
    close_reason: str = ""
    cursor: int = 0
    """The seq of the newest event this channel has (welcome, replay or push)."""
    role: str = ""
    """The participant's role in force: set when the channel opens, then kept current by
    `participant.role_changed` rows (`EventHub.follow_role`, docs/protocol.md §9.2)."""
    on_unsubscribe: Callable[[Subscription], None] | None = field(default=None, repr=False)
    """Told once when the channel lets go (the feed stops tracking an empty conference)."""
    _hub: EventHub | None = field(default=None, repr=False)
    _pending: deque[tuple[int, str] | object] | None = field(default=None, repr=False)
    _waiter: asyncio.Future[None] | None = field(default=None, repr=False)

    def qsize(self) -> int:
        """Events queued and not yet taken by `next()` (the close sentinel included)."""
        return len(self._pending) if self._pending is not None else 0

    def _put(self, item: tuple[int, str] | object) -> None:
        if self._pending is None:
            self._pending = deque()
        self._pending.append(item)
        self._wake()

    def _put_many(self, items: list[tuple[int, str]]) -> None:
        """Queue several events with one wake-up (those already sent are left out)."""
        fresh = [item for item in items if item[0] > self.cursor]
        if not fresh:
            return
        if self._pending is None:
            self._pending = deque()
        self._pending.extend(fresh)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _clear(self) -> None:
        self._pending = None

    def end(self, reason: str) -> None:
        """Finish now, dropping whatever is pending (its cookie expired): `next` and
        `next_batch` return None from here on. No-op once closed (a final event queued
        goes out as the last one)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self._clear()
        self._put(CLOSE)

    async def next(self) -> str | None:
        """The next serialized event, or None once the subscription is finished."""
        while True:
            pending = self._pending
            if pending:
                item = pending.popleft()
                if not pending:
                    self._pending = None  # idle subscriptions hold no deque
                if item is CLOSE:
                    self.closed = True
                    return None
                assert isinstance(item, tuple)
                seq: int = item[0]
                message: str = item[1]
                if seq <= self.cursor:
                    continue  # already in the welcome or the replay
                self.cursor = seq
                return message
            if self.closed:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None

    async def next_batch(self, max_events: int, max_chars: int) -> list[str] | None:
        """Every serialized event pending now, oldest first (at least one; at most
        `max_events` and, past the first, `max_chars` in all: the rest stays pending), or
        None once the subscription is finished."""
        first = await self.next()
        if first is None:
            return None
        batch, size = [first], len(first)
        pending = self._pending
        while pending and len(batch) < max_events:
            item = pending[0]
            if item is CLOSE:
                break  # `next` ends the subscription after this batch is sent
            assert isinstance(item, tuple)
            seq: int = item[0]
            message: str = item[1]
            if seq > self.cursor:
                if size + len(message) > max_chars:
                    break
                batch.append(message)
                size += len(message)
                self.cursor = seq
            pending.popleft()
        if pending is not None and not pending:
            self._pending = None
        return batch

    def unsubscribe(self) -> None:
        if self._hub is not None:
            self._hub._remove(self)
            self._hub = None
            if self.on_unsubscribe is not None:
                self.on_unsubscribe(self)


class EventHub:
    """Per-process registry of data-channel subscriptions, keyed by conference."""

    def __init__(self, *, queue_length: int = 256) -> None:
        self.queue_length = queue_length
        self._by_conference: dict[str, set[Subscription]] = {}
        self._per_participant: Counter[tuple[str, str]] = Counter()
        self._held: dict[str, list[tuple[int, str]]] = {}
        """Per conference, the roster events held back (`ROSTER_HOLD_SECONDS`)."""

    def subscribe(self, conference_id: str, participant_id: str) -> Subscription:
        sub = Subscription(conference_id, participant_id, _hub=self)
        self._by_conference.setdefault(conference_id, set()).add(sub)
        self._per_participant[(conference_id, participant_id)] += 1
        return sub

    def count(self, conference_id: str, participant_id: str) -> int:
        return self._per_participant.get((conference_id, participant_id), 0)

    @property
    def active(self) -> int:
        return sum(len(s) for s in self._by_conference.values())

    def conference_ids(self) -> list[str]:
        """The conferences with a channel on this process."""
        return list(self._by_conference)

    def has(self, conference_id: str) -> bool:
        return conference_id in self._by_conference

    def deliver(self, conference_id: str, seq: int, message: str, *,
                participant_id: str | None = None, final: bool = False,
                hold: bool = False) -> None:
        """Queue event `seq` (serialized) for the conference's channels (or one
        participant's). With `hold` (a join or a leave), it may wait up to
        `roster_hold` to go with the next ones."""
        subs = self._by_conference.get(conference_id)
        if not subs:
            self._held.pop(conference_id, None)
            return
        if hold and participant_id is None and not final:
            seconds, most = roster_hold(len(subs))
            held = self._held.get(conference_id)
            if held is None:
                held = self._held[conference_id] = []
                asyncio.get_running_loop().call_later(seconds, self.release, conference_id)
            held.append((seq, message))
            if len(held) >= most:
                self.release(conference_id)
            return
        self.release(conference_id)  # what was held comes first: the log's order
        close_reason = json.loads(message).get("type", "") if final else ""
        for sub in list(subs):
            if participant_id is not None and sub.participant_id != participant_id:
                continue
            if sub.closed:
                continue
            if sub.qsize() >= self.queue_length:
                self._cut_off(sub, "subscriber too slow")
                continue
            if seq <= sub.cursor:
                continue
            sub._put((seq, message))
            if final:
                sub._put(CLOSE)
                sub.closed = True
                sub.close_reason = close_reason

    def release(self, conference_id: str) -> None:
        """Send the conference's held roster events now (each channel gets them at once)."""
        held = self._held.pop(conference_id, None)
        subs = self._by_conference.get(conference_id)
        if not held or not subs:
            return
        for sub in list(subs):
            if sub.closed:
                continue
            if sub.qsize() >= self.queue_length:
                self._cut_off(sub, "subscriber too slow")
                continue
            sub._put_many(held)

    def follow_role(self, row: EventRow) -> None:
        """A row listener of the feed: a `participant.role_changed` row sets the role of
        that participant's channels here, before they are sent the event."""
        if row.type != ParticipantRoleChanged.TYPE:
            return
        who = role_change(row.payload)
        if who is None:
            return
        for sub in self._by_conference.get(row.conference_id, ()):
            if sub.participant_id == who.id:
                sub.role = who.role

    def _cut_off(self, sub: Subscription, reason: str) -> None:
        sub.overflowed = True
        sub.closed = True
        sub.close_reason = reason
        sub._clear()
        sub._put(CLOSE)

    def _remove(self, sub: Subscription) -> None:
        subs = self._by_conference.get(sub.conference_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            if not subs:
                del self._by_conference[sub.conference_id]
            key = (sub.conference_id, sub.participant_id)
            self._per_participant[key] -= 1
            if self._per_participant[key] <= 0:
                del self._per_participant[key]

    def close_all(self, reason: str) -> None:
        for subs in list(self._by_conference.values()):
            for sub in list(subs):
                if not sub.closed:
                    sub.closed = True
                    sub.close_reason = reason
                    if sub.qsize() >= self.queue_length + 1:
                        self._cut_off(sub, reason)
                    else:
                        sub._put(CLOSE)


def role_change(payload: str) -> Participant | None:
    """The participant, with its new role, of a `participant.role_changed` row's payload
    (None if the payload is not one)."""
    try:
        return ParticipantRoleChanged.from_json(json.loads(payload)).participant
    except (ValueError, EventError, TypeError, AttributeError):
        return None
