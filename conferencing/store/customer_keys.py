"""The store's Customer Key rows (docs/protocol.md §8.4): a tenant's HSM settings
(customer_keys) and its tenant key versions wrapped by them (tenant_keys.customer_wraps).

Protecting a tenant swaps every version's root-wrapped copy for its customer wraps in one
transaction, compare-and-set against the rows the caller read, so no moment exists where a
version has neither and no root-wrapped copy survives the commit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from .schema import customer_keys, tenant_keys, tenants
from .store import Store, TenantKeyRow, tenant_key_row

__all__ = [
    "CustomerKeyConfig",
    "customer_key_config",
    "protect_tenant",
    "put_protected_version",
    "set_revoked",
    "tenant_key_rows",
]


@dataclass(frozen=True)
class CustomerKeyConfig:
    tenant: str
    module: str
    """Absolute path of the PKCS#11 library, the same on every node."""
    token: str
    """The token's label."""
    pin_file: str
    """Absolute path of the file (0600) holding the user PIN, the same on every node."""
    labels: tuple[str, ...]
    """The customer's AES-256 keys in the token; any one of them unwraps."""
    revoked_at: float | None = None
    """When a node found every customer key gone or disabled (cleared when one works)."""


class _Moved(Exception):
    """The rows changed since the caller read them: roll back."""


def _config(row: object) -> CustomerKeyConfig:
    m = row._mapping  # type: ignore[attr-defined]
    labels = json.loads(m["labels"])
    return CustomerKeyConfig(m["tenant"], m["module"], m["token"], m["pin_file"],
                             tuple(str(label) for label in labels), m["revoked_at"])


async def customer_key_config(store: Store, tenant: str) -> CustomerKeyConfig | None:
    """The tenant's Customer Key settings; None for a tenant with service-managed keys."""
    async with store.engine.connect() as conn:
        row = (await conn.execute(
            select(customer_keys).where(customer_keys.c.tenant == tenant))).first()
    return None if row is None else _config(row)


async def tenant_key_rows(store: Store, tenant: str) -> list[TenantKeyRow]:
    """Every stored key version of the tenant, oldest first."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(tenant_keys).where(tenant_keys.c.tenant == tenant)
                                   .order_by(tenant_keys.c.version))).all()
    return [tenant_key_row(row) for row in rows]


def _config_values(config: CustomerKeyConfig, now: float) -> dict[str, object]:
    return {"tenant": config.tenant, "module": config.module, "token": config.token,
            "pin_file": config.pin_file, "labels": json.dumps(list(config.labels)),
            "created_at": now, "revoked_at": None}


async def protect_tenant(store: Store, config: CustomerKeyConfig, *,
                         expected: Sequence[TenantKeyRow], wraps: Mapping[int, str],
                         now: float) -> bool:
    """Store `config` and each version's `wraps` in place of its current wrapping, in one
    transaction. `expected`: the tenant's rows as read before wrapping (empty: the tenant
    does not exist yet, and is created with version 1). False, with nothing changed, when
    the rows moved meanwhile (a rotation, another protect, the tenant created): read again
    and retry."""
    tenant = config.tenant
    try:
        async with store._write() as conn:
            if not expected:
                await conn.execute(insert(tenants).values(
                    domain=tenant, current_key_version=1, created_at=now))
                await conn.execute(insert(tenant_keys).values(
                    tenant=tenant, version=1, wrapped_key=None, root_key_version=None,
                    customer_wraps=wraps[1], created_at=now))
                await conn.execute(insert(customer_keys).values(_config_values(config, now)))
                return True
            # Lock the tenant first (a rotation writes this row too), then compare.
            locked = await conn.execute(
                update(tenants).where(tenants.c.domain == tenant)
                .values(current_key_version=tenants.c.current_key_version))
            if locked.rowcount != 1:
                raise _Moved
            rows = [tenant_key_row(r) for r in (await conn.execute(
                select(tenant_keys).where(tenant_keys.c.tenant == tenant)
                .order_by(tenant_keys.c.version))).all()]
            if rows != list(expected) or set(wraps) != {r.version for r in rows}:
                raise _Moved
            for row in rows:
                await conn.execute(
                    update(tenant_keys)
                    .where(tenant_keys.c.tenant == tenant, tenant_keys.c.version == row.version)
                    .values(wrapped_key=None, root_key_version=None,
                            customer_wraps=wraps[row.version]))
            await conn.execute(delete(customer_keys).where(customer_keys.c.tenant == tenant))
            await conn.execute(insert(customer_keys).values(_config_values(config, now)))
    except (IntegrityError, _Moved):
        return False
    return True


async def put_protected_version(store: Store, tenant: str, version: int, wraps: str,
                                now: float) -> bool:
    """Insert a new tenant key version protected by the Customer Key (no root wrap) and make
    it the tenant's current one, in one transaction, as a rotation does for a root-wrapped
    one. False if that version exists (a concurrent rotation made it first)."""
    try:
        async with store._write() as conn:
            await conn.execute(insert(tenant_keys).values(
                tenant=tenant, version=version, wrapped_key=None, root_key_version=None,
                customer_wraps=wraps, created_at=now))
            await conn.execute(update(tenants).where(tenants.c.domain == tenant)
                               .values(current_key_version=version))
    except IntegrityError:
        return False
    return True


async def set_revoked(store: Store, tenant: str, revoked_at: float | None) -> None:
    """Mark (a time) or clear (None) the tenant's revocation; a no-op when already so."""
    is_set = customer_keys.c.revoked_at.is_(None) if revoked_at is not None else (
        customer_keys.c.revoked_at.is_not(None))
    async with store._write() as conn:
        await conn.execute(update(customer_keys)
                           .where(customer_keys.c.tenant == tenant, is_set)
                           .values(revoked_at=revoked_at))
