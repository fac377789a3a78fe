"""`webconf tenant customer-key`: protect a tenant's key with its own keys in an HSM
(docs/protocol.md §8.4).

    webconf tenant customer-key DIR TENANT --module LIB.so --token LABEL --pin-file F
                                --key LABEL1 [--key LABEL2]

Every stored version of the tenant's key (TIK) is encrypted inside the HSM under each named
AES-256 key (CKM_AES_GCM; the customer's keys never leave the HSM) and sealed under the
service's availability key; then, in one transaction, those wraps replace the root-wrapped
copy, so from the commit on the service's root key no longer opens the tenant's content.
Each HSM wrap is decrypted back before it is stored: a key that cannot unwrap what it
wrapped never replaces a working copy. Run again (other keys, another token), it rewraps
from the current customer keys. It runs offline against the deployment while the servers
serve: they keep the key they hold for `keys.tenant_key_cache_seconds`, then read the new
rows. The HSM settings go to the database (customer_keys), which every node reads; the PIN
stays in its file (0600, the same path on every node) and is never printed or logged.

`protect_tenant_key_version` is the same wrapping for one new version, for rotation.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import os
import sys
import time
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from webconf.deploy import keys
from webconf.deploy.config import Config, ConfigError, load_config

from .audit import AuditLog
from .crypto import customer_wrap, keywrap
from .hsm import Hsm, HsmError, HsmTarget
from .store import Store, TenantKeyRow
from .store.customer_keys import (
    CustomerKeyConfig,
    customer_key_config,
    protect_tenant,
    put_protected_version,
    tenant_key_rows,
)
from .store.store import StoreSchemaError

__all__ = [
    "CustomerKeyError",
    "add_customer_key_arguments",
    "protect_tenant_key_version",
    "run_customer_key",
]

MAX_KEYS = 4
MAX_LABEL = 255
ATTEMPTS = 5
"""Protecting re-reads and retries when a rotation changed the tenant's rows meanwhile."""


class CustomerKeyError(Exception):
    """The HSM or the stored keys did not allow protecting the tenant (exit 1)."""


class _Refused(Exception):
    """The command line or the deployment's settings are not acceptable (exit 2)."""


def add_customer_key_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", metavar="DIR", help="the deployment directory")
    parser.add_argument("tenant", metavar="TENANT", help="the tenant's domain")
    parser.add_argument("--module", required=True, metavar="LIB",
                        help="the PKCS#11 library (listed in keys.hsm_modules)")
    parser.add_argument("--token", required=True, metavar="LABEL", help="the token's label")
    parser.add_argument("--pin-file", required=True, metavar="F",
                        help="a file (mode 0600) holding the token's user PIN")
    parser.add_argument("--key", required=True, action="append", dest="keys",
                        metavar="LABEL",
                        help="an AES-256 key in the token; repeat for a second key")


def run_customer_key(args: argparse.Namespace) -> int:
    """0 protected; 1 the HSM or the stored keys refused; 2 bad input or deployment."""
    prog = "webconf tenant customer-key"
    try:
        cfg = load_config(args.dir)
        config = _settings(cfg, args)
        line = asyncio.run(_protect(cfg, config))
    except (ConfigError, _Refused, keys.KeyFileError, StoreSchemaError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except CustomerKeyError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, OSError) as exc:
        # Never the exception text: a driver may echo statement parameters.
        print(f"{prog}: cannot use the database ({type(exc).__name__})", file=sys.stderr)
        return 2
    print(line)
    return 0


def _settings(cfg: Config, args: argparse.Namespace) -> CustomerKeyConfig:
    tenant = str(args.tenant)
    if tenant not in cfg.tenants.domains:
        raise _Refused(f"{tenant} is not a tenant of this deployment (tenants.domains)")
    module = Path(os.path.abspath(args.module))  # as named: keys.hsm_modules lists it so
    if not module.is_file():
        raise _Refused(f"no PKCS#11 module at {module}")
    if str(module) not in cfg.keys.hsm_modules:
        raise _Refused(f"{module} is not in keys.hsm_modules: add it to "
                       f"{cfg.base_dir / 'webconf.toml'} on every node first")
    pin_file = Path(os.path.abspath(args.pin_file))
    keys.read_pin_file(pin_file)  # KeyFileError (exit 2) unless a private one-line file
    labels = tuple(str(label) for label in args.keys)
    if not 1 <= len(labels) <= MAX_KEYS or len(set(labels)) != len(labels):
        raise _Refused(f"give 1 to {MAX_KEYS} different --key labels")
    for label in labels:
        if not label or len(label) > MAX_LABEL or "\x00" in label:
            raise _Refused(f"a key label must be 1 to {MAX_LABEL} characters")
    if not args.token or len(args.token) > 32:
        raise _Refused("a PKCS#11 token label is 1 to 32 characters")
    return CustomerKeyConfig(tenant, str(module), str(args.token), str(pin_file), labels)


def _target(config: CustomerKeyConfig) -> HsmTarget:
    return HsmTarget(config.module, config.token, config.pin_file)


async def _check_keys(hsm: Hsm, config: CustomerKeyConfig) -> None:
    """Each key exists and is one the customer cannot have let out of the HSM."""
    for label in config.labels:
        try:
            info = await hsm.key_info(_target(config), label)
        except HsmError as exc:
            raise CustomerKeyError(f"customer key {label!r}: {exc.reason}") from None
        problems = [text for bad, text in (
            (not info.aes_256, "is not an AES-256 key"),
            (not info.sensitive or info.extractable, "is extractable or not sensitive"),
            (not (info.encrypt and info.decrypt), "cannot both encrypt and decrypt"),
            (not info.gcm, "is in a token without CKM_AES_GCM")) if bad]
        if problems:
            raise CustomerKeyError(f"customer key {label!r} " + " and ".join(problems))


async def _wrap(hsm: Hsm, config: CustomerKeyConfig, availability: bytes, version: int,
                tik: bytes) -> str:
    """The customer wraps document of one TIK version, each HSM wrap proven to open."""
    tenant = config.tenant
    wraps = []
    for label in config.labels:
        aad = customer_wrap.hsm_aad(tenant, version, label)
        try:
            iv, wrapped = await hsm.encrypt(_target(config), label, tik, aad)
            back = await hsm.decrypt(_target(config), label, iv, wrapped, aad)
        except HsmError as exc:
            raise CustomerKeyError(f"customer key {label!r}: {exc.reason}") from None
        if not hmac.compare_digest(back, tik):
            raise CustomerKeyError(f"customer key {label!r} did not decrypt what it encrypted")
        wraps.append(customer_wrap.HsmWrap(label, iv, wrapped))
    sealed = customer_wrap.seal_availability(
        availability, tik, tenant=tenant, tenant_key_version=version,
        availability_version=keys.AVAILABILITY_KEY_VERSION)
    return customer_wrap.encode(customer_wrap.CustomerWraps(tuple(wraps), sealed))


async def _tik(hsm: Hsm, row: TenantKeyRow, root_keys: dict[int, bytes],
               current: CustomerKeyConfig | None) -> bytes:
    """The plaintext TIK of a stored version: from its root wrap, or from its current
    customer keys (never the availability key: re-protecting needs the customer)."""
    where = f"tenant key version {row.version}"
    if row.wrapped_key is not None and row.root_key_version is not None:
        root = root_keys.get(row.root_key_version)
        if root is None:
            raise CustomerKeyError(f"{where}: root key v{row.root_key_version} is missing")
        try:
            return keywrap.unwrap_tenant_key(root, row.wrapped_key, tenant=row.tenant,
                                             tenant_key_version=row.version,
                                             root_key_version=row.root_key_version)
        except keywrap.KeyWrapError:
            raise CustomerKeyError(f"{where} does not verify under its root key") from None
    if row.customer_wraps is None or current is None:
        raise CustomerKeyError(f"{where} holds no wrapped key")
    try:
        wraps = customer_wrap.decode(row.customer_wraps)
    except customer_wrap.WrapFormatError:
        raise CustomerKeyError(f"{where}: its customer wraps are malformed") from None
    reasons = []
    for wrap in wraps.hsm:
        aad = customer_wrap.hsm_aad(row.tenant, row.version, wrap.label)
        try:
            return await hsm.decrypt(_target(current), wrap.label, wrap.iv, wrap.wrapped, aad)
        except HsmError as exc:
            reasons.append(f"{wrap.label!r}: {exc.reason}")
    raise CustomerKeyError(f"{where} opens with none of the tenant's current customer keys "
                           f"({'; '.join(reasons)})")


async def _protect(cfg: Config, config: CustomerKeyConfig) -> str:
    hsm = Hsm(cfg.keys.hsm_timeout_seconds)
    await _check_keys(hsm, config)
    availability = keys.load_availability_key(cfg, create=True)
    root_keys = keys.load_root_keys(cfg)
    store = await Store.open(cfg.store_url, create=False, where=str(cfg.base_dir))
    audit = AuditLog.for_deployment(cfg.log_dir, threaded=False)
    try:
        for _ in range(ATTEMPTS):
            rows = await tenant_key_rows(store, config.tenant)
            current = await customer_key_config(store, config.tenant)
            tiks = {1: keywrap.new_key()} if not rows else {
                row.version: await _tik(hsm, row, root_keys, current) for row in rows}
            wraps = {version: await _wrap(hsm, config, availability, version, tik)
                     for version, tik in tiks.items()}
            if await protect_tenant(store, config, expected=rows, wraps=wraps,
                                    now=time.time()):
                break
        else:
            raise CustomerKeyError("the tenant's keys kept changing meanwhile; run it again")
        if not rows:
            audit.record("key.create", tenant=config.tenant, version=1,
                         wrapped_by="customer-key")
        for version in sorted(wraps):
            audit.record("key.wrap", tenant=config.tenant, version=version,
                         wrapped_by="customer-key", customer_keys=len(config.labels),
                         availability_version=keys.AVAILABILITY_KEY_VERSION)
    finally:
        audit.close()
        await store.close()
    return (f"{config.tenant}: {len(wraps)} tenant key version(s) wrapped by "
            f"{len(config.labels)} customer key(s) in token {config.token!r} and by the "
            f"availability key; no copy under the root key remains")


async def protect_tenant_key_version(cfg: Config, store: Store, tenant: str, version: int,
                                     tik: bytes) -> bool:
    """For a Customer Key tenant: wrap the NEW key version `version` under each customer
    key and the availability key, insert its tenant_keys row (no root wrap) and make it
    current in one transaction, audit `key.wrap`, and return True. False for a tenant with
    service-managed keys: the caller wraps under the root key as before. CustomerKeyError
    when the HSM refuses (never fall back to a root wrap) or the version exists already
    (a concurrent rotation made it)."""
    config = await customer_key_config(store, tenant)
    if config is None:
        return False
    if config.module not in cfg.keys.hsm_modules:
        raise CustomerKeyError(f"{config.module} is not in keys.hsm_modules")
    hsm = Hsm(cfg.keys.hsm_timeout_seconds)
    availability = keys.load_availability_key(cfg, create=True)
    document = await _wrap(hsm, config, availability, version, tik)
    if not await put_protected_version(store, tenant, version, document, time.time()):
        raise CustomerKeyError(f"key version {version} of {tenant} exists already: another "
                               "rotation made it")
    audit = AuditLog.for_deployment(cfg.log_dir, threaded=False)
    try:
        audit.record("key.wrap", tenant=tenant, version=version, wrapped_by="customer-key",
                     customer_keys=len(config.labels),
                     availability_version=keys.AVAILABILITY_KEY_VERSION)
    finally:
        audit.close()
    return True
