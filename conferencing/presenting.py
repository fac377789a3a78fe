"""Presentation state (docs/protocol.md §9.1): who shows which item, on which page.

One path for both ways in, `PUT /v1/conferences/{conf}/presentation` and the channel's
`presentation.set`: parse strictly, take a token from the participant's bucket, read the
item's page count, then let the store decide in one transaction (store/presentation.py:
the participant's role is read from its row then, so a role changed mid-meeting counts at
once) and append `presentation.changed`, which every channel gets through the event log.

Page rules: pages are 1-based. A PDF whose pages were counted at upload accepts 1..pages;
any other item (an image, a PDF pypdf could not read) has one page.
"""

from __future__ import annotations

import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass

from webconf.events import Presentation, PresentationChanged, PresentationSet

from .service import ConferenceService, Principal, ServiceError, item_pages, valid_id
from .store import presentation as rows

RATE_PER_SECOND = 5.0
"""Presentation changes a participant may make per second, sustained (token bucket)."""
RATE_BURST = 10
"""...and at once, after a pause."""
MAX_BUCKETS = 10_000
PAGE_CACHE_ITEMS = 4096
"""Items whose page count stays unsealed in memory (a count never changes)."""
SET_FIELDS = ("item", "page")


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; `take` spends one if there is one."""

    __slots__ = ("burst", "last", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.last = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def parse_set(body: object, *, channel: bool = False) -> PresentationSet:
    """A `presentation.set` message (`channel`) or a PUT body: a JSON object with exactly
    `item` (an id, or null to stop) and `page` (an integer >= 1; absent or null to stop),
    plus `type` on the channel. Anything else is a `bad_request`."""
    if not isinstance(body, dict):
        raise ServiceError("bad_request", "body must be a JSON object")
    allowed = {"type", *SET_FIELDS} if channel else set(SET_FIELDS)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ServiceError("bad_request", f"unknown field {unknown[0]!r}")
    if "item" not in body:
        raise ServiceError("bad_request", "'item' is required (an item id, or null)")
    item, page = body["item"], body.get("page")
    if item is None:
        if page is not None:
            raise ServiceError("bad_request", "'page' must be absent or null with no item")
        return PresentationSet(None)
    if not isinstance(item, str):
        raise ServiceError("bad_request", "'item' must be an item id or null")
    if isinstance(page, float) and page.is_integer():
        page = int(page)  # JSON has numbers: 3.0 is the integer 3 (as JSON Schema says)
    if not isinstance(page, int) or isinstance(page, bool):
        raise ServiceError("bad_request", "'page' must be an integer")
    return PresentationSet(item, page)


@dataclass
class Presenting:
    """The presentation path of one WCS process (module docstring)."""

    service: ConferenceService

    def __post_init__(self) -> None:
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._pages: OrderedDict[tuple[str, str], int] = OrderedDict()

    def _rate_limit(self, who: Principal) -> None:
        now = time.monotonic()
        key = (who.conference_id, who.participant_id)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(RATE_PER_SECOND, RATE_BURST, now)
            if len(self._buckets) > MAX_BUCKETS:  # the oldest is refilled by now
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        if not bucket.take(now):
            raise ServiceError("too_many_requests",
                               f"at most {RATE_PER_SECOND:g} presentation changes per second")

    async def _page_limit(self, who: Principal, item_id: str) -> int | None:
        """The item's page count (1 for an uncounted item); None: no such item here."""
        key = (who.conference_id, item_id)
        cached = self._pages.get(key)
        if cached is not None:
            return cached
        if not valid_id(item_id):
            return None
        row = await self.service.store.item(who.conference_id, item_id)
        if row is None or row.tenant != who.tenant:
            return None
        pages = 1
        if row.sealed_pages is not None:
            try:
                key_ = await self.service.item_key(row)
            except ServiceError:
                return None
            pages = item_pages(row, key_.dek, key_.context) or 1
        self._pages[key] = pages
        if len(self._pages) > PAGE_CACHE_ITEMS:
            self._pages.popitem(last=False)
        return pages

    async def set(self, who: Principal, request: PresentationSet) -> PresentationChanged:
        """Apply `request` as `who`; the event it appended (its seq included)."""
        self._rate_limit(who)
        limit = None if request.item is None else await self._page_limit(who, request.item)
        changed = PresentationChanged(request.item, request.page, who.participant_id)
        outcome, seq = await rows.set_state(
            self.service.store, who.conference_id, who.participant_id, request.item,
            request.page, limit, time.time(),
            lambda: {k: v for k, v in changed.to_json().items() if k != "seq"})
        if outcome == "ok":
            return PresentationChanged(changed.item, changed.page, changed.presenter, seq)
        if outcome == "forbidden":
            raise ServiceError("forbidden", "only presenters and the organizer may present")
        if outcome == "not_found":
            raise ServiceError("not_found", "unknown item")
        if outcome == "page_out_of_range":
            raise ServiceError("page_out_of_range", f"page must be between 1 and {limit}")
        if outcome == "ended":
            raise ServiceError("unauthorized", "conference has ended")
        if outcome == "gone":
            raise ServiceError("unauthorized", "participant has left")
        raise ServiceError("not_found", "unknown conference")

    async def current(self, conference_id: str) -> Presentation | None:
        """What the conference shows now (the welcome's `presentation`)."""
        row = await rows.current(self.service.store, conference_id)
        if row is None:
            return None
        return Presentation(row.item_id, row.page, row.presenter_pid, row.seq)


_BY_SERVICE: weakref.WeakKeyDictionary[ConferenceService, Presenting] = (
    weakref.WeakKeyDictionary())


def presenting(service: ConferenceService) -> Presenting:
    """The service's presentation path (made on first use, one per service)."""
    found = _BY_SERVICE.get(service)
    if found is None:
        found = _BY_SERVICE[service] = Presenting(service)
    return found
