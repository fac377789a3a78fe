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

A tenant protected by a Customer Key (docs/protocol.md §8.4) has its key versions wrapped by
AES keys in its HSM instead of a root key: the keyring asks the HSM (hsm.py) with each
customer key in turn. Only when every one failed because the HSM could not be asked does it
open the availability key's wrap, and audits that; a key that is gone or disabled is the
customer revoking, which is never worked around. A failed unwrap is remembered for the cache
time too, so a revoked tenant's requests do not each hammer the customer's HSM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from webconf.deploy import keys
from webconf.deploy.config import Config
from webconf.deploy.keys import KeyFileError

from .audit import AuditLog
from .crypto import customer_wrap, keywrap
from .hsm import Hsm, HsmKeyRevoked, HsmTarget, HsmUnreachable
from .store import Store, TenantKeyRow
from .store.customer_keys import CustomerKeyConfig, customer_key_config, set_revoked
from .store.keyrows import add_tenant_key, purged_version

__all__ = ["CustomerKeyAccess", "TenantKeyUnavailable", "TenantKeyring"]

log = logging.getLogger("webconf.keyring")


class TenantKeyUnavailable(Exception):
    """The tenant's key cannot be unwrapped now; its content is unreadable."""

    def __init__(self, tenant: str, reason: str) -> None:
        super().__init__(f"tenant key of {tenant} unavailable: {reason}")
        self.tenant = tenant
        self.reason = reason


@dataclass
class CustomerKeyAccess:
    """What a node needs to unwrap Customer Key tenants' keys."""

    hsm: Hsm
    modules: frozenset[str]
    """`keys.hsm_modules`: the only PKCS#11 libraries this node loads."""
    load_availability_key: Callable[[int], bytes]
    _availability: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Config) -> CustomerKeyAccess:
        return cls(Hsm(cfg.keys.hsm_timeout_seconds), frozenset(cfg.keys.hsm_modules),
                   lambda version: keys.load_availability_key(cfg, version))

    def availability_key(self, version: int) -> bytes:
        """The availability key `version`, read on first use (KeyFileError if absent)."""
        key = self._availability.get(version)
        if key is None:
            key = self._availability[version] = self.load_availability_key(version)
        return key


class TenantKeyring:
    """Unwrapped tenant keys by (tenant, version), each cached for `cache_seconds`."""

    def __init__(self, store: Store, root_keys: dict[int, bytes], root_key_version: int, *,
                 cache_seconds: float, audit: AuditLog,
                 load_root_keys: Callable[[], dict[int, bytes]] | None = None,
                 customer: CustomerKeyAccess | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.root_keys = dict(root_keys)
        self.root_key_version = root_key_version
        self.cache_seconds = cache_seconds
        self.audit = audit
        self._load_root_keys = load_root_keys
        """Re-reads the key files: a root key added by `webconf keys rotate-root` after start."""
        self._clock = clock
        self.customer = customer
        """HSM access for Customer Key tenants (None: this keyring unwraps none)."""
        self._cache: dict[tuple[str, int], tuple[bytes, float]] = {}
        self._failed: dict[tuple[str, int], tuple[str, float]] = {}
        """Customer Key unwraps that failed, with their reason, until retried."""
        self._unwrapping: dict[tuple[str, int], asyncio.Lock] = {}
        """One HSM unwrap at a time per Customer Key version (a few per such tenant); the
        others wait for its result."""
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
            self._failed.clear()
            return
        for cached in [k for k in self._cache if k[0] == tenant]:
            del self._cache[cached]
        for failed in [k for k in self._failed if k[0] == tenant]:
            del self._failed[failed]

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
        if row.customer_wraps is not None:
            return await self._customer_key(row, row.customer_wraps)
        if row.wrapped_key is None or row.root_key_version is None:
            self.audit.record("key.unwrap_failed", tenant=row.tenant, version=row.version,
                              reason="no wrapped copy stored")
            raise TenantKeyUnavailable(row.tenant, "its key row holds no wrapped key")
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

    # -- Customer Key (docs/protocol.md §8.4) --------------------------------------------
    async def _customer_key(self, row: TenantKeyRow, document: str) -> bytes:
        slot = (row.tenant, row.version)
        lock = self._unwrapping.setdefault(slot, asyncio.Lock())
        async with lock:
            cached = self._cached(row.tenant, row.version)
            if cached is not None:
                return cached
            failed = self._failed.get(slot)
            if failed is not None and self._clock() < failed[1]:
                raise TenantKeyUnavailable(row.tenant, failed[0])
            started = time.perf_counter()
            try:
                key = await self._customer_unwrap(row, document)
            except TenantKeyUnavailable as exc:
                self._failed[slot] = (exc.reason, self._clock() + self.cache_seconds)
                raise
            self._failed.pop(slot, None)
            self.unwrap_seconds(time.perf_counter() - started)
            self._cache[slot] = (key, self._clock() + self.cache_seconds)
            return key

    def _fail(self, row: TenantKeyRow, reason: str) -> TenantKeyUnavailable:
        self.audit.record("key.unwrap_failed", tenant=row.tenant, version=row.version,
                          reason=reason)
        log.warning("tenant key of %s v%d unavailable: %s", row.tenant, row.version, reason)
        return TenantKeyUnavailable(row.tenant, reason)

    async def _customer_unwrap(self, row: TenantKeyRow, document: str) -> bytes:
        """Each customer key in turn; the availability key only if the HSM was unreachable
        for all of them and the tenant has not revoked (docs/protocol.md §8.4)."""
        tenant, version = row.tenant, row.version
        try:
            wraps = customer_wrap.decode(document)
        except customer_wrap.WrapFormatError:
            raise self._fail(row, "its customer wraps are malformed") from None
        config = await customer_key_config(self.store, tenant)
        if config is None or self.customer is None:
            raise self._fail(row, "no Customer Key settings for the tenant")
        revoked: list[str] = []
        unreachable = ""
        if config.module not in self.customer.modules:
            unreachable = "its PKCS#11 module is not in keys.hsm_modules on this node"
        else:
            target = HsmTarget(config.module, config.token, config.pin_file)
            for index, wrap in enumerate(wraps.hsm, 1):
                aad = customer_wrap.hsm_aad(tenant, version, wrap.label)
                try:
                    key = await self.customer.hsm.decrypt(target, wrap.label, wrap.iv,
                                                          wrap.wrapped, aad)
                except HsmKeyRevoked as exc:
                    revoked.append(f"customer key {index}: {exc.reason}")
                    continue
                except HsmUnreachable as exc:
                    unreachable = f"HSM unreachable: {exc.reason}"
                    break  # every key of the tenant is behind the same token
                if revoked:
                    log.warning("tenant %s: %s; customer key %d unwrapped", tenant,
                                "; ".join(revoked), index)
                if config.revoked_at is not None:
                    await set_revoked(self.store, tenant, None)  # the customer restored it
                return key
        if revoked and not unreachable:
            if config.revoked_at is None:
                await set_revoked(self.store, tenant, time.time())
            raise self._fail(row, "revoked: " + "; ".join(revoked))
        if revoked:
            raise self._fail(row, "; ".join([*revoked, unreachable]))
        return await self._availability(row, config, wraps, unreachable)

    async def _availability(self, row: TenantKeyRow, config: CustomerKeyConfig,
                            wraps: customer_wrap.CustomerWraps, reason: str) -> bytes:
        if config.revoked_at is not None:
            raise self._fail(row, f"{reason}; the customer key was revoked, so the "
                                  "availability key is not used")
        assert self.customer is not None
        try:
            availability = self.customer.availability_key(wraps.availability.version)
            key = customer_wrap.open_availability(availability, wraps.availability,
                                                  tenant=row.tenant,
                                                  tenant_key_version=row.version)
        except (keys.KeyFileError, keywrap.KeyWrapError) as exc:
            raise self._fail(row, f"{reason}; the availability key failed "
                                  f"({type(exc).__name__})") from None
        self.audit.record("key.availability_used", tenant=row.tenant, version=row.version,
                          reason=reason)
        log.warning("tenant key of %s v%d opened with the availability key: %s",
                    row.tenant, row.version, reason)
        return key
