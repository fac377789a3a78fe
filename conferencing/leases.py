"""Focus leases, the WCS's side (DESIGN §8, docs/protocol.md §7): a dead focus leaves no
live cookie behind.

Each focus process renews its lease through the internal API every
`focus.heartbeat_seconds` and names it in every admission. Every WCS process runs
`expire_focus_leases`, which every `check_interval` seconds asks the service to claim the
leases not renewed for `focus.node_timeout_seconds` and to revoke their participants. The
claim is one statement, so when several WCS nodes look at once each stale lease is revoked
by one of them; the revocations go through the event log, so the participants' channels
close on whichever node holds them.

A WCS process that just started first waits one whole timeout: the focus processes that
were renewing at a WCS which was down (a restart, this very process) get that long to
reach it again before their leases are judged. A database outage is the same for every
focus at once (their renewals go through it): for one whole timeout after it ends, only
leases that were stale before it began are judged, so a long outage does not revoke every
participant of every node when the database comes back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from .service import ConferenceService

log = logging.getLogger("webconf.wcs")

MIN_INTERVAL_SECONDS = 0.5
MAX_INTERVAL_SECONDS = 2.0


def check_interval(timeout_seconds: float) -> float:
    """How often to look for stale leases: a fifth of the timeout, within [0.5 s, 2 s], so
    a dead focus's participants go within the timeout plus at most 2 s."""
    return max(MIN_INTERVAL_SECONDS, min(timeout_seconds / 5, MAX_INTERVAL_SECONDS))


async def expire_focus_leases(service: ConferenceService, timeout_seconds: float, *,
                              startup_grace: bool = True,
                              clock: Callable[[], float] = time.time) -> None:
    """Revoke the participants of stale focus leases until cancelled. A failed round (the
    store down, say) is logged once per outage and retried at the next one."""
    interval = check_interval(timeout_seconds)
    if startup_grace:
        await asyncio.sleep(timeout_seconds)
    outage_started: float | None = None
    recovered_at: float | None = None
    while True:
        now = clock()
        stale_before = now - timeout_seconds
        if outage_started is not None:
            if recovered_at is not None and now - recovered_at >= timeout_seconds:
                outage_started = recovered_at = None
            else:
                stale_before = min(stale_before, outage_started - timeout_seconds)
        try:
            expired = await service.expire_focus_leases(now, timeout_seconds,
                                                        stale_before=stale_before)
        except Exception as exc:  # a store hiccup must not end the expiry for good
            if outage_started is None or recovered_at is not None:
                log.warning(json.dumps({"event": "focus.lease_expiry_failed",
                                        "error": type(exc).__name__}))
                outage_started, recovered_at = now, None
        else:
            if outage_started is not None and recovered_at is None:
                log.info(json.dumps({"event": "focus.lease_expiry_restored"}))
                recovered_at = now
            for name, revoked in sorted(expired.items()):
                service.metrics.focus_leases_expired.inc()
                log.warning(json.dumps({"event": "focus.lease_expired", "node": name,
                                        "revoked": revoked}))
        await asyncio.sleep(interval)
