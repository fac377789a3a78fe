"""`webconf tenant rotate` and `webconf keys rotate-root`: new key versions, rewrapped keys,
old versions retired, while the servers serve (docs/protocol.md §8.5).

Operations and their order, chosen so that a kill -9 anywhere leaves every item readable
and a rerun finishes the job:

- tenant rotate: (1) a new tenant key (TIK) version is inserted and made current in one
  transaction: from then on every node wraps new uploads under it (the keyring reads the
  current version from the store). (2) Every DEK still under an older version is rewrapped,
  a bounded batch per transaction, each row's wrapped DEK and version in one UPDATE.
  (3) Versions no item uses are deleted, each in the transaction that counted its users.
  The key rows are the record of a rotation in progress: a tenant with a version other
  than its current one has one unfinished, and a rerun completes it instead of starting
  another. No blob is touched.
- rotate-root: (1) a new root key file (never replacing one) becomes current: the newest
  version present wraps new tenant keys on every node, and `keys.root_key_version` in
  webconf.toml is set to it so a restart finds it. (2) Every tenant key row is rewrapped
  under it, one UPDATE per row. (3) Root key files no row uses move to `keys/retired/`.
  A root key other than the newest still present (or still used) means a rotation is
  unfinished, and a rerun completes it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import tomllib

import tomli_w

from webconf.deploy.config import CONFIG_NAME, Config, ConfigError, load_config
from webconf.deploy.keys import (
    KeyFileError,
    add_root_key,
    load_retired_root_keys,
    load_root_keys,
    retire_root_key,
)

from .audit import AuditLog
from .crypto import keywrap
from .customer_key import CustomerKeyError, protect_tenant_key_version
from .keyring import CustomerKeyAccess, TenantKeyring, TenantKeyUnavailable
from .store import Store, keyrows
from .store.store import StoreSchemaError

DEFAULT_BATCH_SIZE = 500
"""Item keys rewrapped per transaction: short transactions, so serving never waits long."""
MAX_PASSES = 5
"""Rewrap-then-retire rounds before giving up on a version some racing upload keeps using."""


class RotationError(Exception):
    """The rotation cannot proceed; the message says why and what to do."""


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", help="deployment directory")
    # Test hooks and tuning, not for everyday use: small batches and a pause after each
    # make a kill land mid-rotation deterministically.
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=argparse.SUPPRESS)
    parser.add_argument("--pause-after-batch", type=float, default=0.0,
                        help=argparse.SUPPRESS)


def add_rotate_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("tenant", help="tenant domain")


def add_rotate_root_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)


def run_rotate(args: argparse.Namespace) -> int:
    return _run(args, tenant=args.tenant)


def run_rotate_root(args: argparse.Namespace) -> int:
    return _run(args, tenant=None)


def _run(args: argparse.Namespace, *, tenant: str | None) -> int:
    if args.batch_size < 1 or args.pause_after_batch < 0:
        print("webconf: --batch-size must be 1 or more, --pause-after-batch 0 or more",
              file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.dir)
        return asyncio.run(_main(cfg, tenant, args.batch_size, args.pause_after_batch))
    except (ConfigError, KeyFileError, StoreSchemaError, RotationError) as exc:
        print(f"webconf: {exc}", file=sys.stderr)
        return 1


async def _main(cfg: Config, tenant: str | None, batch: int, pause: float) -> int:
    store = await Store.open(cfg.store_url, create=False, where=str(cfg.base_dir))
    audit = AuditLog.for_deployment(cfg.log_dir, threaded=False)
    try:
        if tenant is None:
            await rotate_root(cfg, store, audit, batch=batch, pause=pause)
        else:
            await rotate_tenant(cfg, store, audit, tenant, batch=batch, pause=pause)
    finally:
        audit.close()
        await store.close()
    return 0


def _progress(line: str) -> None:
    print(line, flush=True)


# -- tenant keys ---------------------------------------------------------------------------

async def _protect_by_customer_key(cfg: Config, store: Store, tenant: str, version: int,
                                   tik: bytes) -> bool:
    """True: the tenant's own HSM keys protect this version, its row stored and made current
    by them (docs/protocol.md §8.4); False: wrap under the service root key."""
    try:
        return await protect_tenant_key_version(cfg, store, tenant, version, tik)
    except CustomerKeyError as exc:
        raise RotationError(str(exc)) from None


async def new_tenant_key_version(cfg: Config, store: Store, audit: AuditLog, tenant: str,
                                 version: int, roots: dict[int, bytes]) -> bool:
    """The one place a rotation makes a tenant key version: a fresh TIK, protected (by the
    tenant's Customer Key, else the newest root key), stored and made current at once.
    False if that version already exists (another rotation got there first)."""
    tik = keywrap.new_key()
    if await _protect_by_customer_key(cfg, store, tenant, version, tik):
        audit.record("key.create", tenant=tenant, version=version, wrapped_by="customer-key")
        return True
    root_version = max(roots)
    wrapped = keywrap.wrap_tenant_key(roots[root_version], tik, tenant=tenant,
                                      tenant_key_version=version,
                                      root_key_version=root_version)
    made = await keyrows.add_tenant_key(store, tenant, version, wrapped, root_version,
                                        time.time())
    if made:
        audit.record("key.create", tenant=tenant, version=version,
                     wrapped_by=f"root-v{root_version}")
    return made


async def rotate_tenant(cfg: Config, store: Store, audit: AuditLog, tenant: str, *,
                        batch: int = DEFAULT_BATCH_SIZE, pause: float = 0.0) -> int:
    """Rotate (or finish rotating) `tenant`'s key; returns the item keys rewrapped."""
    keys = await keyrows.key_rows(store, tenant)
    if keys is None:
        raise RotationError(f"tenant {tenant} has no key yet (it is made at its first join)")
    if not any(r.version == keys.current for r in keys.rows):
        raise RotationError(f"tenant {tenant} has no current key (purged?): nothing to rotate")
    roots = load_root_keys(cfg)
    old = sorted(r.version for r in keys.rows if r.version != keys.current)
    if old:
        target = keys.current
        _progress(f"rotate {tenant}: finishing the rotation to key version {target}")
    else:
        old = [keys.current]
        target = max(r.version for r in keys.rows) + 1
        if not await new_tenant_key_version(cfg, store, audit, tenant, target, roots):
            raise RotationError(f"key version {target} of {tenant} appeared meanwhile: "
                                "another rotation is running")
        _progress(f"rotate {tenant}: key version {target} is current")
    keyring = TenantKeyring(store, roots, cfg.keys.root_key_version, cache_seconds=3600.0,
                            customer=CustomerKeyAccess.from_config(cfg),
                            audit=audit, load_root_keys=lambda: load_root_keys(cfg))
    rewrapped = 0
    for _ in range(MAX_PASSES):
        rewrapped += await _rewrap_deks(keyring, store, tenant, target, batch, pause)
        for version in await keyrows.retire_unused_versions(store, tenant):
            audit.record("key.retire", tenant=tenant, version=version)
            _progress(f"rotate {tenant}: key version {version} retired")
        left = await keyrows.key_rows(store, tenant)
        if left is None or all(r.version == left.current for r in left.rows):
            break
    else:
        raise RotationError(f"an older key version of {tenant} is still in use after "
                            f"{MAX_PASSES} passes; run the command again")
    audit.record("key.rotate", tenant=tenant, from_version=old[0], to_version=target,
                 items=rewrapped)
    _progress(f"rotate {tenant}: done, {rewrapped} item keys rewrapped under version "
              f"{target}")
    return rewrapped


async def _rewrap_deks(keyring: TenantKeyring, store: Store, tenant: str, target: int,
                       batch: int, pause: float) -> int:
    try:
        target_key = await keyring.get(tenant, target)
    except TenantKeyUnavailable as exc:
        raise RotationError(str(exc)) from None
    done = 0
    while rows := await keyrows.stale_deks(store, tenant, target, batch):
        rewrapped = []
        for row in rows:
            try:
                old_key = await keyring.get(tenant, row.tenant_key_version)
                dek = keywrap.unwrap_dek(old_key, row.wrapped_dek, tenant=tenant,
                                         conference_id=row.conference_id, item_id=row.id,
                                         tenant_key_version=row.tenant_key_version)
            except (TenantKeyUnavailable, keywrap.KeyWrapError):
                raise RotationError(f"item {row.id} of {tenant}: its key does not unwrap "
                                    f"(version {row.tenant_key_version})") from None
            rewrapped.append((row, keywrap.wrap_dek(
                target_key, dek, tenant=tenant, conference_id=row.conference_id,
                item_id=row.id, tenant_key_version=target), target))
        done += await keyrows.rewrap_deks(store, rewrapped)
        _progress(f"rotate {tenant}: {done} item keys rewrapped")
        if pause:
            await asyncio.sleep(pause)
    return done


# -- the root key --------------------------------------------------------------------------

def _set_root_key_version(cfg: Config, version: int) -> None:
    """Write `keys.root_key_version` into webconf.toml (only that setting changes; the file
    is replaced atomically), so that a restart requires the new key, not the retired one."""
    path = cfg.base_dir / CONFIG_NAME
    raw = tomllib.loads(path.read_text())
    raw.setdefault("keys", {})["root_key_version"] = version
    tmp = path.with_name(f".{CONFIG_NAME}.tmp")
    with open(tmp, "w") as out:
        out.write(tomli_w.dumps(raw))
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(cfg.base_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    cfg.keys.root_key_version = version


async def rotate_root(cfg: Config, store: Store, audit: AuditLog, *,
                      batch: int = DEFAULT_BATCH_SIZE, pause: float = 0.0) -> int:
    """Rotate (or finish rotating) the root key; returns the tenant keys rewrapped."""
    roots = load_root_keys(cfg, require_configured=False)
    if not roots:
        raise RotationError(f"no root key in {cfg.keys_dir}")
    newest = max(roots)
    in_use = await keyrows.root_key_versions_in_use(store)
    if (in_use - {newest}) or len(roots) > 1 or cfg.keys.root_key_version != newest:
        target = newest
        _progress(f"rotate-root: finishing the rotation to root key version {target}")
    else:
        target = newest + 1
        add_root_key(cfg, target)
        roots = load_root_keys(cfg, require_configured=False)
        _progress(f"rotate-root: root key version {target} is current")
    start = min(in_use | set(roots))
    if cfg.keys.root_key_version != target:
        _set_root_key_version(cfg, target)
    rewrapped = 0
    for _ in range(MAX_PASSES):
        rewrapped += await _rewrap_tenant_keys(cfg, store, roots, target, batch, pause)
        in_use = await keyrows.root_key_versions_in_use(store)
        for version in sorted(v for v in roots if v != target and v not in in_use):
            if retire_root_key(cfg, version):
                audit.record("key.retire", root_version=version)
                _progress(f"rotate-root: root key version {version} retired to "
                          f"{cfg.keys_dir / 'retired'}")
        if await keyrows.root_key_versions_in_use(store) <= {target}:
            break
        roots = load_root_keys(cfg, require_configured=False)
    else:
        raise RotationError(f"tenant keys under an older root key remain after {MAX_PASSES} "
                            "passes; run the command again")
    audit.record("key.rotate_root", from_version=start, to_version=target,
                 tenant_keys=rewrapped)
    _progress(f"rotate-root: done, {rewrapped} tenant keys rewrapped under root version "
              f"{target}")
    return rewrapped


async def _rewrap_tenant_keys(cfg: Config, store: Store, roots: dict[int, bytes],
                              target: int, batch: int, pause: float) -> int:
    done = 0
    retired: dict[int, bytes] | None = None
    while rows := await keyrows.tenant_keys_under_root(store, target, batch):
        for row in rows:
            if row.wrapped_key is None or row.root_key_version is None:
                continue  # a Customer Key version: no root key wraps it (§8.4)
            root = roots.get(row.root_key_version)
            if root is None:  # a tenant made under a key retired meanwhile (§8.5)
                retired = load_retired_root_keys(cfg) if retired is None else retired
                root = retired.get(row.root_key_version)
            if root is None:
                raise RotationError(f"tenant key {row.tenant} v{row.version} is wrapped under "
                                    f"root key v{row.root_key_version}, which is not in "
                                    f"{cfg.keys_dir}")
            try:
                tik = keywrap.unwrap_tenant_key(root, row.wrapped_key, tenant=row.tenant,
                                                tenant_key_version=row.version,
                                                root_key_version=row.root_key_version)
            except keywrap.KeyWrapError:
                raise RotationError(f"tenant key {row.tenant} v{row.version} does not "
                                    "unwrap") from None
            wrapped = keywrap.wrap_tenant_key(roots[target], tik, tenant=row.tenant,
                                              tenant_key_version=row.version,
                                              root_key_version=target)
            done += await keyrows.rewrap_tenant_key(store, row, wrapped, target)
        _progress(f"rotate-root: {done} tenant keys rewrapped")
        if pause:
            await asyncio.sleep(pause)
    return done
