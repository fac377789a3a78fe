"""Rows that key rotation and tenant purge change (docs/protocol.md §8.5).

The operator commands of conferencing/rotation.py and conferencing/purge.py run beside
serving nodes, so every function here is one short transaction that leaves the store
consistent whatever is killed when: a wrapped key and the version it names change together
in one UPDATE, a key version is deleted only in the transaction that found nothing using
it, and a tenant's keys are all destroyed in one transaction. Rows in, rows out: the
wrapping and unwrapping happen in the callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from .schema import conferences, customer_keys, items, tenant_keys, tenants
from .store import Store, TenantKeyRow, tenant_key_row

__all__ = [
    "DekRow",
    "TenantKeys",
    "add_tenant_key",
    "delete_item_rows",
    "open_conferences",
    "purged_version",
    "rewrap_deks",
    "rewrap_tenant_key",
    "retire_unused_versions",
    "root_key_versions_in_use",
    "shred_tenant_keys",
    "stale_deks",
    "tenant_blobs",
    "key_rows",
    "tenant_keys_under_root",
]


@dataclass(frozen=True)
class DekRow:
    """An item's wrapped DEK and what its AAD binds it to (keywrap.py)."""

    id: str
    conference_id: str
    tenant_key_version: int
    wrapped_dek: bytes


@dataclass(frozen=True)
class TenantKeys:
    """A tenant's current key version and every key row it still has."""

    current: int
    rows: list[TenantKeyRow]


def _key_row(r: object) -> TenantKeyRow:
    return tenant_key_row(r)


async def key_rows(store: Store, tenant: str) -> TenantKeys | None:
    """The tenant's key rows, oldest first; None for a tenant never created."""
    async with store.engine.connect() as conn:
        current = await conn.scalar(
            select(tenants.c.current_key_version).where(tenants.c.domain == tenant))
        if current is None:
            return None
        rows = (await conn.execute(select(tenant_keys).where(
            tenant_keys.c.tenant == tenant).order_by(tenant_keys.c.version))).all()
    return TenantKeys(int(current), [_key_row(r) for r in rows])


async def add_tenant_key(store: Store, tenant: str, version: int, wrapped_key: bytes,
                         root_key_version: int, now: float) -> bool:
    """Insert key `version` and make it the tenant's current one, in one transaction: new
    uploads on every node use it from the commit on. False if that version exists (a
    concurrent writer made it first)."""
    try:
        async with store._write() as conn:
            await conn.execute(insert(tenant_keys).values(
                tenant=tenant, version=version, wrapped_key=wrapped_key,
                root_key_version=root_key_version, created_at=now))
            await conn.execute(update(tenants).where(tenants.c.domain == tenant)
                               .values(current_key_version=version))
    except IntegrityError:
        return False
    return True


async def stale_deks(store: Store, tenant: str, current: int, limit: int) -> list[DekRow]:
    """Up to `limit` of the tenant's items whose DEK is wrapped under another version than
    `current` (purged items, whose DEK is empty, are not keys to rewrap)."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(
            items.c.id, items.c.conference_id, items.c.tenant_key_version,
            items.c.wrapped_dek).where(
            items.c.tenant == tenant, items.c.tenant_key_version != current,
            func.length(items.c.wrapped_dek) > 0).order_by(items.c.id).limit(limit))).all()
    return [DekRow(r.id, r.conference_id, int(r.tenant_key_version), bytes(r.wrapped_dek))
            for r in rows]


async def rewrap_deks(store: Store, rewrapped: Sequence[tuple[DekRow, bytes, int]]) -> int:
    """Replace each (row, new wrapped DEK, its version) in one transaction; each UPDATE sets
    the DEK and its version together and only if the row still holds the DEK read (an item
    deleted or rewrapped meanwhile is left alone). Returns the rows changed."""
    changed = 0
    async with store._write() as conn:
        for row, wrapped, version in rewrapped:
            result = await conn.execute(update(items).where(
                items.c.id == row.id, items.c.tenant_key_version == row.tenant_key_version)
                .values(wrapped_dek=wrapped, tenant_key_version=version))
            changed += int(result.rowcount or 0)
    return changed


async def retire_unused_versions(store: Store, tenant: str) -> list[int]:
    """Delete the tenant's key versions other than the current one that no item uses;
    return those deleted.

    Each version's row is locked first (`FOR UPDATE`; SQLite: the one writer), then the
    items are counted in a later statement, so on PostgreSQL the count sees every item
    committed before the lock was granted; an upload committing after it finds the version
    gone (`Store.commit_item`) and rewraps under the current one."""
    retired: list[int] = []
    async with store._write() as conn:
        current = await conn.scalar(select(tenants.c.current_key_version).where(
            tenants.c.domain == tenant).with_for_update())
        if current is None:
            return retired
        versions = (await conn.execute(select(tenant_keys.c.version).where(
            tenant_keys.c.tenant == tenant, tenant_keys.c.version != current)
            .order_by(tenant_keys.c.version).with_for_update())).scalars().all()
        for version in versions:
            used = await conn.scalar(select(func.count()).select_from(items).where(
                items.c.tenant == tenant, items.c.tenant_key_version == version))
            if not used:
                await conn.execute(delete(tenant_keys).where(
                    tenant_keys.c.tenant == tenant, tenant_keys.c.version == version))
                retired.append(int(version))
    return retired


# -- the root key ------------------------------------------------------------------------

async def tenant_keys_under_root(store: Store, other_than: int,
                                 limit: int) -> list[TenantKeyRow]:
    """Up to `limit` tenant key rows wrapped under another root version than `other_than`."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(tenant_keys).where(
            tenant_keys.c.root_key_version != other_than).order_by(
            tenant_keys.c.tenant, tenant_keys.c.version).limit(limit))).all()
    return [_key_row(r) for r in rows]


async def rewrap_tenant_key(store: Store, row: TenantKeyRow, wrapped_key: bytes,
                            root_key_version: int) -> bool:
    """Replace one tenant key's wrap and its root version in one UPDATE, only if the row
    is still the one read; False if it changed or went meanwhile."""
    async with store._write() as conn:
        result = await conn.execute(update(tenant_keys).where(
            tenant_keys.c.tenant == row.tenant, tenant_keys.c.version == row.version,
            tenant_keys.c.root_key_version == row.root_key_version).values(
            wrapped_key=wrapped_key, root_key_version=root_key_version))
    return bool(result.rowcount)


async def root_key_versions_in_use(store: Store) -> set[int]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(tenant_keys.c.root_key_version).where(
            tenant_keys.c.root_key_version.is_not(None)).distinct())).all()  # §8.4: NULL
    return {int(r[0]) for r in rows}


# -- purge ---------------------------------------------------------------------------------

async def shred_tenant_keys(store: Store, tenant: str) -> tuple[int, int]:
    """Crypto-shred the tenant in one transaction: empty every wrapped DEK (the rows stay,
    naming the blobs still to delete) and delete every tenant key row. The current version
    moves past every version the tenant ever had, so a key made after the purge is new and
    no old wrap can ever match it. Returns (DEKs, tenant keys) destroyed."""
    async with store._write() as conn:
        current = await conn.scalar(select(tenants.c.current_key_version).where(
            tenants.c.domain == tenant).with_for_update())
        if current is None:
            return 0, 0
        deks = await conn.execute(update(items).where(
            items.c.tenant == tenant, func.length(items.c.wrapped_dek) > 0)
            .values(wrapped_dek=b""))
        newest = await conn.scalar(select(func.max(tenant_keys.c.version)).where(
            tenant_keys.c.tenant == tenant))
        keys = await conn.execute(delete(tenant_keys).where(tenant_keys.c.tenant == tenant))
        # Its Customer Key settings too: a tenant made again after a purge starts with
        # service-managed keys until `webconf tenant customer-key` protects it (§8.4).
        await conn.execute(delete(customer_keys).where(customer_keys.c.tenant == tenant))
        if newest is not None:
            await conn.execute(update(tenants).where(tenants.c.domain == tenant).values(
                current_key_version=max(int(current), int(newest)) + 1))
    return int(deks.rowcount or 0), int(keys.rowcount or 0)


async def open_conferences(store: Store, tenant: str) -> list[str]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(conferences.c.id).where(
            conferences.c.tenant == tenant, conferences.c.ended_at.is_(None)))).all()
    return [r.id for r in rows]


async def tenant_blobs(store: Store, tenant: str, limit: int) -> list[tuple[str, str]]:
    """Up to `limit` (item id, blob id) of the tenant's remaining items."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(items.c.id, items.c.blob_id).where(
            items.c.tenant == tenant).order_by(items.c.id).limit(limit))).all()
    return [(r.id, r.blob_id) for r in rows]


async def delete_item_rows(store: Store, tenant: str, item_ids: Sequence[str]) -> int:
    async with store._write() as conn:
        result = await conn.execute(delete(items).where(
            items.c.tenant == tenant, items.c.id.in_(list(item_ids))))
    return int(result.rowcount or 0)


async def purged_version(store: Store, tenant: str) -> int | None:
    """The current version of a tenant that exists without a row for it (a purge destroyed
    its keys: §8.5); None for a tenant never created or one whose current key exists."""
    async with store.engine.connect() as conn:
        current = await conn.scalar(
            select(tenants.c.current_key_version).where(tenants.c.domain == tenant))
        if current is None:
            return None
        present = await conn.scalar(select(func.count()).select_from(tenant_keys).where(
            tenant_keys.c.tenant == tenant, tenant_keys.c.version == current))
    return None if present else int(current)
