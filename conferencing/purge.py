"""`webconf tenant purge DIR TENANT --yes`: crypto-shred a tenant (docs/protocol.md §8.5).

Order, chosen so that the content is unreadable from the first step on and a rerun after a
kill finishes the job:

1. One transaction empties every wrapped DEK of the tenant and deletes every tenant key
   row: from its commit on no key to any of the tenant's items exists (the crypto-shred).
   The item rows stay, naming the blobs still to delete.
2. Every open conference of the tenant ends: its participants' cookies are revoked and a
   final `conference.ended` event closes their channels on every node.
3. Each blob is deleted from the share, then its item row, a batch at a time.
4. Steps 1-3 repeat until nothing is left (an upload racing the purge is caught).

Other tenants are untouched. The tenant itself stays in the store (its conferences name
it) with its current key version moved past every version it had: if it is still served
(`tenants.domains`), its next join starts it afresh under a new key.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import dataclass

from webconf.deploy.config import Config, ConfigError, load_config
from webconf.events import ConferenceEnded

from .audit import AuditLog
from .share import FileShare
from .store import NewEvent, Store, keyrows
from .store.store import StoreSchemaError

DEFAULT_BATCH_SIZE = 500
MAX_PASSES = 5


@dataclass
class PurgeCounts:
    deks: int = 0
    """Wrapped item keys destroyed."""
    tenant_keys: int = 0
    """Tenant key versions destroyed."""
    conferences: int = 0
    """Conferences ended."""
    participants: int = 0
    """Participants revoked."""
    blobs: int = 0
    """Items whose blob and row were deleted."""


def add_purge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="deployment directory")
    parser.add_argument("tenant", help="tenant domain")
    parser.add_argument("--yes", action="store_true",
                        help="confirm: every item of the tenant is destroyed for good")
    # Test hooks and tuning (a kill lands mid-purge deterministically).
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=argparse.SUPPRESS)
    parser.add_argument("--pause-after-batch", type=float, default=0.0,
                        help=argparse.SUPPRESS)


def run_purge(args: argparse.Namespace) -> int:
    if not args.yes:
        print(f"webconf: purge destroys every key, item and blob of {args.tenant} for good "
              "and ends its conferences; add --yes to do it", file=sys.stderr)
        return 2
    if args.batch_size < 1 or args.pause_after_batch < 0:
        print("webconf: --batch-size must be 1 or more, --pause-after-batch 0 or more",
              file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.dir)
        asyncio.run(_main(cfg, args.tenant, args.batch_size, args.pause_after_batch))
    except (ConfigError, StoreSchemaError) as exc:
        print(f"webconf: {exc}", file=sys.stderr)
        return 1
    return 0


async def _main(cfg: Config, tenant: str, batch: int, pause: float) -> None:
    store = await Store.open(cfg.store_url, create=False, where=str(cfg.base_dir))
    audit = AuditLog.for_deployment(cfg.log_dir, threaded=False)
    try:
        await purge_tenant(store, FileShare(cfg.share_dir), audit, tenant,
                           batch=batch, pause=pause)
    finally:
        audit.close()
        await store.close()


def _progress(line: str) -> None:
    print(line, flush=True)


def _ended_event() -> NewEvent:
    payload = ConferenceEnded().to_json()
    return NewEvent(type=str(payload["type"]), final=True,
                    payload=json.dumps(payload, separators=(",", ":")))


async def purge_tenant(store: Store, share: FileShare, audit: AuditLog, tenant: str, *,
                       batch: int = DEFAULT_BATCH_SIZE, pause: float = 0.0) -> PurgeCounts:
    """Crypto-shred `tenant` (the module's steps 1-4); idempotent."""
    counts = PurgeCounts()
    audit.record("tenant.purge", tenant=tenant, phase="start")
    for _ in range(MAX_PASSES):
        deks, keys = await keyrows.shred_tenant_keys(store, tenant)
        counts.deks += deks
        counts.tenant_keys += keys
        _progress(f"purge {tenant}: {deks} item keys and {keys} tenant keys destroyed")
        conference_ids = await keyrows.open_conferences(store, tenant)
        for conference_id in conference_ids:
            ended = await store.end_conference(conference_id, time.time(), [_ended_event()])
            if ended is None:  # ended meanwhile (by its organizer, or idle)
                continue
            audit.record("conference.end", tenant=tenant, conference=conference_id,
                         reason="purge", revoked=len(ended))
            counts.conferences += 1
            counts.participants += len(ended)
        if conference_ids:
            _progress(f"purge {tenant}: {len(conference_ids)} conferences ended")
        removed = 0
        while rows := await keyrows.tenant_blobs(store, tenant, batch):
            for _item_id, blob_id in rows:
                await share.remove(blob_id)
            removed += await keyrows.delete_item_rows(store, tenant, [r[0] for r in rows])
            _progress(f"purge {tenant}: {counts.blobs + removed} blobs deleted")
            if pause:
                await asyncio.sleep(pause)
        counts.blobs += removed
        if not (deks or keys or conference_ids or removed):
            break
    audit.record("tenant.purge", tenant=tenant, phase="finish", items=counts.blobs,
                 item_keys=counts.deks, tenant_keys=counts.tenant_keys,
                 conferences=counts.conferences, participants=counts.participants)
    _progress(f"purge {tenant}: done")
    return counts
