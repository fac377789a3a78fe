"""Content lifecycle (docs/protocol.md §8.6): how a conference ends and what becomes of its
content.

- An end (the organizer's `DELETE /v1/conferences/{conf}`, the internal DELETE, or idleness)
  is one store transaction: the conference is marked ended, every active participant is
  revoked, and `conference.ended` is logged; the event log carries it to every node's
  channels and to the focus links that follow the conference (api/link.py), whose focus
  sends BYE on each dialog. It is audited as `conference.end`.
- Content stays for `wcs.content_grace_seconds` after the end (unless the tenant's
  `shred_content_at_end` is set: then at once). Within the grace the organizer's INVITE
  reopens the conference with its items; after it, the periodic task here shreds them:
  the item rows (wrapped DEKs) first, then the blobs, as `delete_item` does. A reopen that
  finds the grace already over shreds before it reopens, so the URI starts empty.
- Idle: a conference nobody joined for `wcs.idle_end_seconds`, and where no cookie is live,
  ends by itself. Each candidate is ended by one conditional statement under the
  conference's lock, so of several nodes sweeping at once exactly one ends it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Literal

from webconf.deploy.config import WcsSection
from webconf.events import ConferenceEnded

from .audit import AuditLog
from .cookie_cache import CookieCache
from .share import FileShare
from .store import NewEvent, Store

log = logging.getLogger("webconf.wcs.lifecycle")

EndReason = Literal["organizer", "idle", "purge", "internal"]
_ENDED = NewEvent(type=ConferenceEnded.TYPE, final=True, payload=json.dumps(
    ConferenceEnded().to_json(), separators=(",", ":")))
"""The log row of `conference.ended` (store/log.py): it ends every channel of the conference."""
BATCH = 100
"""Conferences handled per query of a sweep round (the next round takes the rest)."""


@dataclass
class Lifecycle:
    """Ends and shreds for one WCS process (the service's parts it needs)."""

    settings: WcsSection
    store: Store
    share: FileShare
    audit: AuditLog
    cookie_cache: CookieCache

    async def end(self, conference_id: str, reason: EndReason, *,
                  idle_before: float | None = None) -> bool:
        """End the conference (see the module docstring); False if this call ended
        nothing (unknown, ended already, or, with `idle_before`, no longer idle)."""
        conf = await self.store.conference(conference_id)
        if conf is None:
            return False
        try:
            ended = await self.store.end_conference(conference_id, time.time(), [_ENDED],
                                                    idle_before=idle_before)
        finally:  # this node refuses the cookies from the commit on, not from the log read
            self.cookie_cache.drop_conference(conference_id)
        if ended is None:
            return False
        self.audit.record("conference.end", tenant=conf.tenant, conference=conference_id,
                          reason=reason, revoked=len(ended))
        if await self.store.tenant_shreds_content_at_end(conf.tenant):
            await self.shred(conference_id, tenant=conf.tenant)
        return True

    async def shred(self, conference_id: str, *, tenant: str,
                    ended_before: float | None = None) -> int:
        """Crypto-shred the conference's items: rows (wrapped DEKs) first, then blobs. With
        `ended_before`, only if it is still ended since before then. Returns how many."""
        rows = await self.store.delete_items(conference_id, ended_before=ended_before)
        for row in rows:
            await self.share.remove(row.blob_id)
        if rows:
            self.audit.record("content.shred", tenant=tenant, conference=conference_id,
                              items=len(rows))
        return len(rows)

    async def sweep(self, now: float) -> dict[str, int]:
        """One round: end idle conferences, shred content past its grace."""
        out = {"ended": 0, "shredded": 0}
        idle_before = now - self.settings.idle_end_seconds
        for conference_id in await self.store.idle_conferences(idle_before, now, BATCH):
            if await self.end(conference_id, "idle", idle_before=idle_before):
                out["ended"] += 1
        grace_before = now - self.settings.content_grace_seconds
        for conference_id in await self.store.ended_with_content(grace_before, BATCH):
            conf = await self.store.conference(conference_id)
            if conf is not None:
                out["shredded"] += await self.shred(conference_id, tenant=conf.tenant,
                                                    ended_before=grace_before)
        return out


async def run(lifecycle: Lifecycle, interval_seconds: float) -> None:
    """Sweep every `interval_seconds`; a failed round is logged once per outage."""
    failing = False
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            done = await lifecycle.sweep(time.time())
        except Exception as exc:  # a store or share hiccup must not end the task for good
            if not failing:
                log.warning(json.dumps({"event": "lifecycle.sweep_failed",
                                        "error": type(exc).__name__}))
            failing = True
            continue
        failing = False
        if done["ended"] or done["shredded"]:
            log.info(json.dumps({"event": "lifecycle.sweep", **done}))
