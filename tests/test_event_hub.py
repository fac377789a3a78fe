"""The hub's roster hold (conferencing/events.py, docs/protocol.md §4.3): joins and leaves
wait briefly to go to a conference's channels together, longer in a larger meeting, never
longer than a second, and never past another event of the conference."""

from __future__ import annotations

import asyncio
import json

from conferencing.events import (
    ROSTER_HOLD_LONGEST,
    ROSTER_HOLD_MAX,
    ROSTER_HOLD_MOST,
    ROSTER_HOLD_SECONDS,
    EventHub,
    Subscription,
    roster_hold,
)

CONF = "conf-hub"


def _joined(seq: int) -> str:
    return json.dumps({"type": "participant.joined", "seq": seq})


def _channels(hub: EventHub, n: int) -> list[Subscription]:
    return [hub.subscribe(CONF, f"p{i}") for i in range(n)]


def test_the_hold_grows_with_the_audience_and_is_bounded() -> None:
    assert roster_hold(1) == (ROSTER_HOLD_SECONDS, ROSTER_HOLD_MAX)
    assert roster_hold(200) == (ROSTER_HOLD_SECONDS, ROSTER_HOLD_MAX)
    assert roster_hold(1000) == (0.5, ROSTER_HOLD_MOST)
    assert roster_hold(100_000) == (ROSTER_HOLD_LONGEST, ROSTER_HOLD_MOST)


async def test_a_small_meeting_gets_its_joins_within_the_short_hold() -> None:
    hub = EventHub()
    subs = _channels(hub, 3)
    hub.deliver(CONF, 1, _joined(1), hold=True)
    hub.deliver(CONF, 2, _joined(2), hold=True)
    assert all(s.qsize() == 0 for s in subs)
    await asyncio.sleep(ROSTER_HOLD_SECONDS + 0.05)
    assert all(s.qsize() == 2 for s in subs)


async def test_a_large_meeting_holds_longer_and_any_other_event_releases_first() -> None:
    hub = EventHub()
    subs = _channels(hub, 1000)  # held 0.5 s
    hub.deliver(CONF, 1, _joined(1), hold=True)
    await asyncio.sleep(ROSTER_HOLD_SECONDS + 0.1)
    assert subs[0].qsize() == 0, "a thousand channels wait longer than a small meeting"
    hub.deliver(CONF, 2, json.dumps({"type": "item.shared", "seq": 2}))
    batch = await subs[0].next_batch(10, 1 << 20)
    assert batch is not None
    assert [json.loads(m)["seq"] for m in batch] == [1, 2], "the log's order"


async def test_a_large_meeting_releases_at_the_cap_and_within_the_longest_hold() -> None:
    hub = EventHub()
    subs = _channels(hub, 5000)  # held the longest
    for seq in range(1, ROSTER_HOLD_MOST):
        hub.deliver(CONF, seq, _joined(seq), hold=True)
    assert subs[-1].qsize() == 0
    hub.deliver(CONF, ROSTER_HOLD_MOST, _joined(ROSTER_HOLD_MOST), hold=True)
    assert subs[-1].qsize() == ROSTER_HOLD_MOST, "released once the cap is reached"
    hub.deliver(CONF, ROSTER_HOLD_MOST + 1, _joined(ROSTER_HOLD_MOST + 1), hold=True)
    await asyncio.sleep(ROSTER_HOLD_LONGEST + 0.1)
    assert subs[-1].qsize() == ROSTER_HOLD_MOST + 1
    assert not subs[-1].overflowed, "two releases fit in a channel's queue"
