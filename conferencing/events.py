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

This hub is per process. Scale-out replaces `publish` with a database NOTIFY whose
listener calls `deliver` on each node; the subscriber side stays the same.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from dataclasses import dataclass, field

from webconf.events import ChannelEvent

CLOSE = object()
"""Sentinel queued after a final event: the channel closes once it has sent it."""


@dataclass(eq=False, slots=True)
class Subscription:
    conference_id: str
    participant_id: str
    overflowed: bool = False
    closed: bool = False
    close_reason: str = ""
    _hub: EventHub | None = field(default=None, repr=False)
    _pending: deque[str | object] | None = field(default=None, repr=False)
    _waiter: asyncio.Future[None] | None = field(default=None, repr=False)

    def qsize(self) -> int:
        """Events queued and not yet taken by `next()` (the close sentinel included)."""
        return len(self._pending) if self._pending is not None else 0

    def _put(self, item: str | object) -> None:
        if self._pending is None:
            self._pending = deque()
        self._pending.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _clear(self) -> None:
        self._pending = None

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
                assert isinstance(item, str)
                return item
            if self.closed:
                return None
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None

    def unsubscribe(self) -> None:
        if self._hub is not None:
            self._hub._remove(self)
            self._hub = None


class EventHub:
    """Per-process registry of data-channel subscriptions, keyed by conference."""

    def __init__(self, *, queue_length: int = 256) -> None:
        self.queue_length = queue_length
        self._by_conference: dict[str, set[Subscription]] = {}
        self._per_participant: Counter[tuple[str, str]] = Counter()

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

    def publish(self, conference_id: str, event: ChannelEvent, *,
                participant_id: str | None = None, final: bool = False) -> None:
        """Queue `event` for the conference's channels (or one participant's)."""
        self.deliver(conference_id, json.dumps(event.to_json(), separators=(",", ":")),
                     participant_id=participant_id, final=final)

    def deliver(self, conference_id: str, message: str, *, participant_id: str | None = None,
                final: bool = False) -> None:
        subs = self._by_conference.get(conference_id)
        if not subs:
            return
        close_reason = json.loads(message).get("type", "") if final else ""
        for sub in list(subs):
            if participant_id is not None and sub.participant_id != participant_id:
                continue
            if sub.closed:
                continue
            if sub.qsize() >= self.queue_length:
                self._cut_off(sub, "subscriber too slow")
                continue
            sub._put(message)
            if final:
                sub._put(CLOSE)
                sub.closed = True
                sub.close_reason = close_reason

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
