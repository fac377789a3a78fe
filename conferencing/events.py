"""Fan-out of conference events to data-channel subscribers.

Each open data channel holds a `Subscription` with a bounded queue. A subscriber that falls
behind by more than the queue length is cut off (it reconnects and its `welcome` carries
the full item list again) rather than letting memory grow. Events that end a
participant's presence (`revoked`, `conference.ended`) close the subscription after
delivery.

This hub is per process. Scale-out replaces `publish` with a database NOTIFY whose
listener calls `deliver` on each node; the subscriber side stays the same.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

CLOSE = object()
"""Sentinel queued after a final event: the channel closes once it has sent it."""


@dataclass(eq=False)
class Subscription:
    conference_id: str
    participant_id: str
    queue: asyncio.Queue[str | object]
    overflowed: bool = False
    closed: bool = False
    close_reason: str = ""
    _hub: EventHub | None = field(default=None, repr=False)

    async def next(self) -> str | None:
        """The next serialized event, or None once the subscription is finished."""
        if self.closed and self.queue.empty():
            return None
        item = await self.queue.get()
        if item is CLOSE:
            self.closed = True
            return None
        assert isinstance(item, str)
        return item

    def unsubscribe(self) -> None:
        if self._hub is not None:
            self._hub._remove(self)
            self._hub = None


class EventHub:
    """Per-process registry of data-channel subscriptions, keyed by conference."""

    def __init__(self, *, queue_length: int = 256) -> None:
        self.queue_length = queue_length
        self._by_conference: dict[str, set[Subscription]] = defaultdict(set)

    def subscribe(self, conference_id: str, participant_id: str) -> Subscription:
        sub = Subscription(conference_id, participant_id,
                           asyncio.Queue(maxsize=self.queue_length + 1), _hub=self)
        self._by_conference[conference_id].add(sub)
        return sub

    def count(self, conference_id: str, participant_id: str) -> int:
        return sum(1 for s in self._by_conference.get(conference_id, ())
                   if s.participant_id == participant_id)

    @property
    def active(self) -> int:
        return sum(len(s) for s in self._by_conference.values())

    def publish(self, conference_id: str, event: dict[str, Any], *,
                participant_id: str | None = None, final: bool = False) -> None:
        """Queue `event` for the conference's channels (or one participant's)."""
        self.deliver(conference_id, json.dumps(event, separators=(",", ":")),
                     participant_id=participant_id, final=final)

    def deliver(self, conference_id: str, message: str, *, participant_id: str | None = None,
                final: bool = False) -> None:
        for sub in list(self._by_conference.get(conference_id, ())):
            if participant_id is not None and sub.participant_id != participant_id:
                continue
            if sub.closed:
                continue
            if sub.queue.qsize() >= self.queue_length:
                self._cut_off(sub, "subscriber too slow")
                continue
            sub.queue.put_nowait(message)
            if final:
                sub.queue.put_nowait(CLOSE)
                sub.closed = True
                sub.close_reason = json.loads(message).get("type", "")

    def _cut_off(self, sub: Subscription, reason: str) -> None:
        sub.overflowed = True
        sub.closed = True
        sub.close_reason = reason
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(CLOSE)

    def _remove(self, sub: Subscription) -> None:
        subs = self._by_conference.get(sub.conference_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_conference[sub.conference_id]

    def close_all(self, reason: str) -> None:
        for subs in list(self._by_conference.values()):
            for sub in list(subs):
                if not sub.closed:
                    sub.closed = True
                    sub.close_reason = reason
                    try:
                        sub.queue.put_nowait(CLOSE)
                    except asyncio.QueueFull:
                        self._cut_off(sub, reason)
