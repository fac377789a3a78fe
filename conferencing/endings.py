"""Telling the focus processes that a conference ended, or its roster changed (§7.3).

The focus holds the SIP dialogs and must send BYE on each when a conference ends, wherever
the end happened (any WCS node, an idle sweep, the organizer's DELETE). Each WCS node learns
of ends from the event log, like its channels do: a focus link "follows" the conferences it
has dialogs in (every admit it sent over the link, and the list it sends in a `watch`
operation whenever the link comes up), and this node watches their logs (`EventFeed.watch`).
The `conference.ended` row, committed by whichever node ended the conference, then reaches
every following link as `{"ended": <conference id>}` in a frame of its own.

A follow starts once the log is watched, then reads the conference row once: an end that
committed before the watch began is reported too (nothing falls between the two). A
conference is followed until it ends or the last link following it closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from webconf.events import (
    ConferenceEnded,
    ConferenceUpdated,
    ParticipantJoined,
    ParticipantLeft,
    ParticipantRoleChanged,
)

from .eventlog import EventFeed, Track
from .store import EventRow, Store

log = logging.getLogger("webconf.wcs.endings")

ROSTER_TYPES = frozenset({ParticipantJoined.TYPE, ParticipantLeft.TYPE,
                          ParticipantRoleChanged.TYPE, ConferenceUpdated.TYPE})
"""Rows after which a conference's roster (or its lock) may differ."""
MAX_FOLLOWED = 100_000
"""Conferences followed at most per node (one watch each); past it, follows are refused."""


class Follower(Protocol):
    """A focus link: told each followed conference's end once."""

    def conference_ended(self, conference_id: str) -> None: ...

    def roster_changed(self, conference_id: str, seq: int) -> None: ...

    def participant_left(self, conference_id: str, participant_id: str) -> None: ...


class EndNotices:
    """Which links follow which conferences; tells them of `conference.ended`."""

    def __init__(self, feed: EventFeed, store: Store) -> None:
        self._feed = feed
        self._store = store
        self._followers: dict[str, set[Follower]] = {}
        self._tracks: dict[str, Track] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        feed.row_listeners.append(self._on_row)

    def follow(self, follower: Follower, conference_id: str, *, roster: bool = False) -> None:
        """Tell `follower` when `conference_id` ends (at once if it has ended already).

        `roster`: the follower has just read the roster, before this call: tell it the seq
        read up to once the log is watched, so that no change falls between the two."""
        followers = self._followers.get(conference_id)
        if followers is not None:
            followers.add(follower)
            track = self._tracks.get(conference_id)
            if roster and track is not None and track.ready.is_set():
                follower.roster_changed(conference_id, track.delivered)
            elif roster and track is not None:
                self._spawn(self._tell_seq(follower, conference_id, track))
            return
        if len(self._followers) >= MAX_FOLLOWED:
            log.warning(json.dumps({"event": "endings.follow_refused",
                                    "reason": "too many conferences"}))
            return
        self._followers[conference_id] = {follower}
        self._tracks[conference_id] = track = self._feed.watch(conference_id)
        self._spawn(self._check(conference_id, track))
        if roster:
            self._spawn(self._tell_seq(follower, conference_id, track))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="wcs-endings-check")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _tell_seq(self, follower: Follower, conference_id: str, track: Track) -> None:
        await track.ready.wait()
        if follower in self._followers.get(conference_id, ()):
            follower.roster_changed(conference_id, track.delivered)

    def unfollow_all(self, follower: Follower) -> None:
        """A link closed: it follows nothing any more."""
        for conference_id in [c for c, f in self._followers.items() if follower in f]:
            followers = self._followers[conference_id]
            followers.discard(follower)
            if not followers:
                self._drop(conference_id)

    def _drop(self, conference_id: str) -> set[Follower]:
        followers = self._followers.pop(conference_id, set())
        track = self._tracks.pop(conference_id, None)
        if track is not None:
            self._feed.unwatch(track)
        return followers

    async def _check(self, conference_id: str, track: Track) -> None:
        """Once the watch reads the log: an end that committed before it is told now."""
        try:
            await track.ready.wait()
            conf = await self._store.conference(conference_id)
        except Exception as exc:  # noqa: BLE001 - the focus's next `watch` asks again
            log.warning(json.dumps({"event": "endings.check_failed",
                                    "error": type(exc).__name__}))
            return
        if conf is None or conf.ended_at is not None:
            self._tell(conference_id)

    def _on_row(self, row: EventRow) -> None:
        followers = self._followers.get(row.conference_id)
        if followers is None:
            return
        if row.type == ConferenceEnded.TYPE:
            self._tell(row.conference_id)
        elif row.type in ROSTER_TYPES:
            left = _left_participant(row) if row.type == ParticipantLeft.TYPE else None
            for follower in list(followers):
                if left is not None:
                    follower.participant_left(row.conference_id, left)
                follower.roster_changed(row.conference_id, row.seq)

    def _tell(self, conference_id: str) -> None:
        for follower in self._drop(conference_id):
            follower.conference_ended(conference_id)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for conference_id in list(self._followers):
            self._drop(conference_id)


def _left_participant(row: EventRow) -> str | None:
    """The participant id a `participant.left` row names (None if it names none)."""
    try:
        who = json.loads(row.payload)["participant"]["id"]
    except (ValueError, KeyError, TypeError):
        return None
    return who if isinstance(who, str) else None
