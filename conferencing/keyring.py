"""Tenant keys (TIKs), unwrapped on demand and cached for a bounded time (docs/protocol.md §8.2).

The one place that turns a tenant's wrapped key row into key bytes: the service asks for the
current version (to wrap a new item's DEK) or a given version (to unwrap one), and the
keyring creates the tenant on first sight. Unwrapped keys are kept for
`keys.tenant_key_cache_seconds`, so that a key made unavailable at its source (a retired root
key, a customer key disabled in its HSM) stops being usable within that time on every node,
without a restart.

A tenant key that cannot be unwrapped raises `TenantKeyUnavailable` (503
`tenant_key_unavailable`): that tenant's content is unreadable, every other tenant is untouched
and the server stays up.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from webconf.deploy.keys import KeyFileError

from .audit import AuditLog
from .crypto import keywrap
from .store import Store, TenantKeyRow
from .store.keyrows import add_tenant_key, purged_version

__all__ = ["TenantKeyUnavailable", "TenantKeyring"]


class TenantKeyUnavailable(Exception):
    """The tenant's key cannot be unwrapped now; its content is unreadable."""

    def __init__(self, tenant: str, reason: str) -> None:
        super().__init__(f"tenant key of {tenant} unavailable: {reason}")
        self.tenant = tenant
        self.reason = reason


class TenantKeyring:
    """Unwrapped tenant keys by (tenant, version), each cached for `cache_seconds`."""

    def __init__(self, store: Store, root_keys: dict[int, bytes], root_key_version: int, *,
                 cache_seconds: float, audit: AuditLog,
                 load_root_keys: Callable[[], dict[int, bytes]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.root_keys = dict(root_keys)
        self.root_key_version = root_key_version
        self.cache_seconds = cache_seconds
        self.audit = audit
        self._load_root_keys = load_root_keys
        """Re-reads the key files: a root key added by `webconf keys rotate-root` after start."""
        self._clock = clock
        self._cache: dict[tuple[str, int], tuple[bytes, float]] = {}
        self.unwrap_seconds: Callable[[float], None] = lambda seconds: None
        """Observer of each unwrap's duration (the service's decrypt histogram)."""

    async def current(self, tenant: str) -> tuple[bytes, int]:
        """The tenant's current key and its version, creating the tenant on first sight
        (and a fresh key for a tenant purged since: docs/protocol.md §8.5)."""
        row = await self.store.tenant_key(tenant)
        if row is None:
            await self._create(tenant)
            row = await self.store.tenant_key(tenant)
            if row is None:
                raise TenantKeyUnavailable(tenant, "no key row after creating the tenant")
        return await self._key(row), row.version

    async def get(self, tenant: str, version: int) -> bytes:
        """The tenant's key of `version` (the one an item's DEK is wrapped under)."""
        cached = self._cached(tenant, version)
        if cached is not None:
            return cached
        row = await self.store.tenant_key(tenant, version)
        if row is None:
            raise TenantKeyUnavailable(tenant, f"no key version {version}")
        return await self._key(row)

    def forget(self, tenant: str | None = None) -> None:
        """Drop cached keys (one tenant's, or all): the next use unwraps again."""
        if tenant is None:
            self._cache.clear()
            return
        for cached in [k for k in self._cache if k[0] == tenant]:
            del self._cache[cached]

    def _cached(self, tenant: str, version: int) -> bytes | None:
        entry = self._cache.get((tenant, version))
        if entry is None:
            return None
        key, expires = entry
        if self._clock() >= expires:
            del self._cache[(tenant, version)]
            return None
        return key

    async def _create(self, tenant: str) -> None:
        """A new tenant's key version 1, or, for a tenant whose keys a purge destroyed, a
        key of the version the purge left current (past every version it ever had)."""
        root_version = self._newest_root_version()
        root = self.root_keys[root_version]
        purged_at = await purged_version(self.store, tenant)
        version = 1 if purged_at is None else purged_at
        wrapped = keywrap.wrap_tenant_key(root, keywrap.new_key(), tenant=tenant,
                                          tenant_key_version=version,
                                          root_key_version=root_version)
        now = time.time()
        if purged_at is None:
            made = await self.store.create_tenant(tenant, wrapped, root_version, now)
        else:
            made = await add_tenant_key(self.store, tenant, version, wrapped, root_version, now)
        if made:
            self.audit.record("key.create", tenant=tenant, version=version,
                              wrapped_by=f"root-v{root_version}")

    def _newest_root_version(self) -> int:
        """New tenant keys go under the newest root key present: `webconf keys
        rotate-root` adds one while servers run (docs/protocol.md §8.5)."""
        if self._load_root_keys is not None:
            with contextlib.suppress(KeyFileError):
                self.root_keys = self._load_root_keys()
        return max(self.root_keys, default=self.root_key_version)

    async def _key(self, row: TenantKeyRow) -> bytes:
        cached = self._cached(row.tenant, row.version)
        if cached is not None:
            return cached
        root = self._root_key(row.root_key_version)
        if root is None:
            self.audit.record("key.unwrap_failed", tenant=row.tenant, version=row.version,
                              reason=f"root key v{row.root_key_version} not found")
            raise TenantKeyUnavailable(row.tenant, "its root key version is not loaded")
        started = time.perf_counter()
        try:
            key = keywrap.unwrap_tenant_key(root, row.wrapped_key, tenant=row.tenant,
                                            tenant_key_version=row.version,
                                            root_key_version=row.root_key_version)
        except keywrap.KeyWrapError:
            self.audit.record("key.unwrap_failed", tenant=row.tenant, version=row.version,
                              reason="authentication failed")
            raise TenantKeyUnavailable(row.tenant, "its wrapped key does not verify") from None
        self.unwrap_seconds(time.perf_counter() - started)
        self._cache[(row.tenant, row.version)] = (key, self._clock() + self.cache_seconds)
        return key

    def _root_key(self, version: int) -> bytes | None:
        root = self.root_keys.get(version)
        if root is None and self._load_root_keys is not None:
            with contextlib.suppress(KeyFileError):  # rotate-root added one since we started
                self.root_keys = self._load_root_keys()
            root = self.root_keys.get(version)
        return root
