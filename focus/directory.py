"""The tenant directory: who may authenticate to the focus, as sealed Digest HA1s only.

Operations: `Directory.add_user` / `remove_user` / `list_users` for the operator (the
`webconf user` command below), `lookup_ha1` and `has_tenant` for the focus.

Plan: two focus-owned tables on their own `MetaData`, in the same database as the WCS
(`cfg.store_url`) but never joined with the WCS's tables, so the focus needs nothing of
the conferencing store:

    directory_tenants(domain PK, created_at)
    sip_users(realm -> directory_tenants.domain, username, ha1_md5_sealed,
              ha1_sha256_sealed, created_at)

The realm is the tenant domain (lower-case A-label form) and the username the user part of
`user@domain`, exactly what RFC 3261 Digest hashes (docs/protocol.md §2). The password is
hashed the moment it is read and exists nowhere else: not in a row, a log line or an
exception. An HA1 is password-equivalent, so each is sealed under the directory key
(`keys/sip-directory.key`, focus/ha1_seal.py) before it is written and unsealed only for a
lookup: a copy of the database alone answers no challenge. Portable SQL only (SQLite
embedded, PostgreSQL for scale-out).

`lookup_ha1` runs for every authenticated INVITE, so it is served from a small in-process
cache: both HA1s of a user are kept for `cache_ttl` seconds (a miss for `miss_ttl`, so a
guesser hammering unknown names costs one query per name per `miss_ttl`), bounded at
`cache_size` entries, least recently used out first; it holds the sealed values, unsealed
per lookup (microseconds), so no HA1 lingers in clear in the cache. Weakness: a change made
by another process (the `webconf user` command, another focus node) is seen only when the
entry expires, so a removed user or an old password keeps working for up to `cache_ttl`
seconds. Changes made through this object invalidate its own cache at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import delete, insert, inspect, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from webconf import cli_input
from webconf.deploy import keys
from webconf.deploy.config import Config, ConfigError, load_config
from webconf.deploy.db import open_engine
from webconf.deploy.migrate import (
    SchemaError,
    SchemaStatus,
    check,
    mismatch_message,
    upgrade,
    upgrade_hint,
)
from webconf.deploy.pki import normalize_dns_name
from webconf.sip.digest import ha1

from .ha1_seal import Ha1Seal
from .migrations import SCHEMA
from .schema import HA1_COLUMNS, directory_tenants, metadata, sip_users

__all__ = ["HA1_COLUMNS", "Directory", "DirectoryError", "DirectorySchemaError",
           "directory_tenants", "metadata", "sip_users"]

log = logging.getLogger("webconf.focus")


# RFC 3261 §25.1 `user` without escapes: unreserved / user-unreserved characters.
_USER_RE = re.compile(r"[A-Za-z0-9\-_.!~*'()&=+$,;?/]{1,128}")

class DirectoryError(ValueError):
    """An address the directory cannot accept; the message never holds a password."""


class DirectorySchemaError(SchemaError):
    """The focus's tables are behind or ahead of the code (for instance of the schema that
    kept HA1s in clear, made before migrations); the message is one line."""


async def _schema_error(url: str, status: SchemaStatus,
                        where: str | None) -> DirectorySchemaError:
    """The error for a refused schema; a directory with HA1s in clear says so."""
    if status.state == "unversioned":
        engine = open_engine(url, pool_size=1, max_overflow=0)
        try:
            async with engine.connect() as conn:
                columns = await conn.run_sync(lambda sync: {
                    c["name"] for c in inspect(sync).get_columns("sip_users")})
        except SQLAlchemyError:
            columns = set()
        finally:
            await engine.dispose()
        if columns and not set(HA1_COLUMNS.values()) <= columns:
            return DirectorySchemaError(status, (
                f"the directory in {_safe_url(url)} is of an older schema that kept Digest "
                "HA1s in clear: drop its table sip_users (or move the database aside), "
                f"{upgrade_hint(where)} and add the users again"))
    return DirectorySchemaError(status, mismatch_message(status, where))


def normalize_domain(domain: str) -> str:
    """Lower-case A-label form of a DNS name (the same rule the certificates use);
    `DirectoryError` if it is not one."""
    try:
        return normalize_dns_name(domain)
    except ValueError:
        raise DirectoryError(f"not a valid domain name: {domain!r}") from None


def parse_address(address: str) -> tuple[str, str]:
    """`user@domain` (an optional `sip:`/`sips:` prefix is dropped) -> (realm, username)."""
    text = address.strip()
    lowered = text.lower()
    for scheme in ("sip:", "sips:"):
        if lowered.startswith(scheme):
            text = text[len(scheme):]
            break
    user, at, domain = text.rpartition("@")
    if not at or not user:
        raise DirectoryError(f"expected user@domain, got {address!r}")
    if not _USER_RE.fullmatch(user):
        raise DirectoryError(
            f"{user!r} is not a valid SIP user name (letters, digits and -_.!~*'()&=+$,;?/, "
            "at most 128)")
    return normalize_domain(domain), user


@dataclass(slots=True)
class _Cached:
    expires: float
    sealed: dict[str, bytes] | None
    """Sealed HA1 by algorithm; None: no such user."""


class Directory:
    """Async access to the tenant directory tables, with a TTL cache for lookups."""

    def __init__(self, engine: AsyncEngine, seal: Ha1Seal, *, cache_ttl: float = 5.0,
                 miss_ttl: float = 1.0, cache_size: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self._seal = seal
        self.cache_ttl = cache_ttl
        self.miss_ttl = miss_ttl
        self.cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        self.queries = 0
        """How many lookups reached the database (for tests and metrics)."""

    @classmethod
    async def open(cls, url: str, key: bytes, *, create: bool = True, cache_ttl: float = 5.0,
                   miss_ttl: float = 1.0, cache_size: int = 10_000,
                   clock: Callable[[], float] = time.monotonic,
                   where: str | None = None) -> Directory:
        """Connect to `url` (SQLAlchemy async URL) with the directory `key` (32 bytes).
        `create`: migrate the focus's tables to head first (webconf/deploy/migrate.py, the
        one way they are made); else only check that they are at head, as `serve` does.
        `DirectorySchemaError` (one line naming `webconf db upgrade`, `where` being the
        deployment directory) for a schema behind or ahead of the code."""
        if create:
            try:
                await upgrade(url, [SCHEMA])
            except SchemaError as exc:
                raise await _schema_error(url, exc.status, where) from None
        engine = open_engine(url, pool_size=5, max_overflow=10)
        try:
            await check(engine, SCHEMA, where)
        except SchemaError as exc:
            await engine.dispose()
            raise await _schema_error(url, exc.status, where) from None
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine, Ha1Seal(key), cache_ttl=cache_ttl, miss_ttl=miss_ttl,
                   cache_size=cache_size, clock=clock)

    @classmethod
    async def for_deployment(cls, cfg: Config, *, create: bool = True,
                             cache_ttl: float = 5.0) -> Directory:
        """The deployment's directory: its store URL and `keys/sip-directory.key` (created
        on first use if missing). `keys.KeyFileError` if the key cannot be had."""
        return await cls.open(cfg.store_url, keys.load_directory_key(cfg), create=create,
                              cache_ttl=cache_ttl, where=str(cfg.base_dir))

    async def close(self) -> None:
        await self.engine.dispose()

    # -- operator -----------------------------------------------------------------------
    async def add_user(self, address: str, password: str) -> bool:
        """Store `address`'s HA1s (replacing any: a password change); True if the tenant
        is new. `DirectoryError` for a bad address or an empty password."""
        realm, username = parse_address(address)
        if not password:
            raise DirectoryError("the password is empty")
        ha1_md5 = ha1(username, realm, password, "MD5")
        ha1_sha256 = ha1(username, realm, password, "SHA-256")
        sealed = {"ha1_md5_sealed": self._seal.seal(realm, username, "MD5", ha1_md5),
                  "ha1_sha256_sealed": self._seal.seal(realm, username, "SHA-256", ha1_sha256)}
        for attempt in range(3):  # a concurrent writer may create the same rows first
            try:
                new_tenant = await self._put_user(realm, username, sealed)
                break
            except IntegrityError:
                if attempt == 2:
                    raise
        self._cache.pop((realm, username), None)
        return new_tenant

    async def _put_user(self, realm: str, username: str, sealed: dict[str, bytes]) -> bool:
        now = time.time()
        async with self.engine.begin() as conn:
            new_tenant = await conn.scalar(select(directory_tenants.c.domain).where(
                directory_tenants.c.domain == realm)) is None
            if new_tenant:
                await conn.execute(insert(directory_tenants).values(domain=realm, created_at=now))
            changed = await conn.execute(
                update(sip_users)
                .where(sip_users.c.realm == realm, sip_users.c.username == username)
                .values(**sealed))
            if changed.rowcount == 0:
                await conn.execute(insert(sip_users).values(
                    realm=realm, username=username, created_at=now, **sealed))
        return new_tenant

    async def add_new_users(self, users: list[tuple[str, str]]) -> None:
        """Add (address, password) pairs of users that do not exist yet, in one transaction,
        to tenants that do (the scale bench adds 10,000 this way)."""
        now = time.time()
        rows = []
        for address, password in users:
            realm, username = parse_address(address)
            rows.append({"realm": realm, "username": username, "created_at": now, **{
                column: self._seal.seal(realm, username, alg, ha1(username, realm, password, alg))
                for alg, column in HA1_COLUMNS.items()}})
        if rows:
            async with self.engine.begin() as conn:
                await conn.execute(insert(sip_users), rows)

    async def remove_user(self, address: str) -> bool:
        """Delete the user; False if there was none. The tenant row stays."""
        realm, username = parse_address(address)
        async with self.engine.begin() as conn:
            result = await conn.execute(delete(sip_users).where(
                sip_users.c.realm == realm, sip_users.c.username == username))
        self._cache.pop((realm, username), None)
        return bool(result.rowcount)

    async def list_users(self, domain: str | None = None) -> list[str]:
        """Addresses (`user@domain`), sorted by domain then user; one tenant if given."""
        q = select(sip_users.c.realm, sip_users.c.username).order_by(
            sip_users.c.realm, sip_users.c.username)
        if domain is not None:
            q = q.where(sip_users.c.realm == normalize_domain(domain))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [f"{r.username}@{r.realm}" for r in rows]

    # -- focus ----------------------------------------------------------------------------
    async def has_tenant(self, domain: str) -> bool:
        try:
            realm = normalize_domain(domain)
        except DirectoryError:
            return False
        async with self.engine.connect() as conn:
            found = await conn.scalar(select(directory_tenants.c.domain).where(
                directory_tenants.c.domain == realm))
        return found is not None

    async def lookup_ha1(self, realm: str, username: str, algorithm: str) -> str | None:
        """The HA1 hex of `username` in `realm` for "MD5" or "SHA-256", unsealed; None for
        no such user, or a stored value that does not unseal as this user's (logged)."""
        alg = algorithm.upper()
        if alg not in HA1_COLUMNS:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        key = (realm.lower(), username)
        now = self._clock()
        entry = self._cache.get(key)
        if entry is None or entry.expires <= now:
            entry = await self._fetch(key, now)
        else:
            self._cache.move_to_end(key)
        if entry.sealed is None:
            return None
        value = self._seal.unseal(key[0], username, alg, entry.sealed[alg])
        if value is None:
            log.warning(json.dumps({"event": "directory.unseal_failed", "realm": key[0],
                                    "user": username, "algorithm": alg}))
        return value

    async def _fetch(self, key: tuple[str, str], now: float) -> _Cached:
        self.queries += 1
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                select(sip_users.c.ha1_md5_sealed, sip_users.c.ha1_sha256_sealed)
                .where(sip_users.c.realm == key[0], sip_users.c.username == key[1]))).first()
        if row is None:
            entry = _Cached(now + self.miss_ttl, None)
        else:
            entry = _Cached(now + self.cache_ttl, {"MD5": bytes(row.ha1_md5_sealed),
                                                   "SHA-256": bytes(row.ha1_sha256_sealed)})
        self._cache[key] = entry
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return entry


# -- `webconf user` ---------------------------------------------------------------------------

class _UsageError(Exception):
    """Exit status 1 with this one-line message, after the `done` lines (what did work)."""

    def __init__(self, message: str, done: list[str] | None = None) -> None:
        super().__init__(message)
        self.done = done or []


def add_user_arguments(parser: argparse.ArgumentParser) -> None:
    """`webconf user add|remove|list DIR ...` (dests: user_command, dir, addresses, tenant)."""
    sub = parser.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = sub.add_parser("add", help="add users or change their passwords (read from stdin)",
                         description="Add users, or change their passwords. The passwords "
                         "are read from stdin: typed twice on a terminal, else one line "
                         "per address, in the order of the addresses.")
    add.add_argument("dir", type=Path, help="deployment directory")
    add.add_argument("addresses", nargs="+", metavar="address", help="user@tenant-domain")
    remove = sub.add_parser("remove", help="remove users")
    remove.add_argument("dir", type=Path, help="deployment directory")
    remove.add_argument("addresses", nargs="+", metavar="address", help="user@tenant-domain")
    listing = sub.add_parser("list", help="list users, one address a line")
    listing.add_argument("dir", type=Path, help="deployment directory")
    listing.add_argument("--tenant", metavar="DOMAIN", help="only this tenant's users")


def read_password(address: str | None = None) -> str:
    """A new password from stdin: asked twice on a terminal, else the next line. With
    `address` (several users at once) the prompt and the errors name the user."""
    prompt_text = "Password: " if address is None else f"Password for {address}: "
    again_text = ("Password (again): " if address is None
                  else f"Password for {address} (again): ")
    whose = "" if address is None else f" for {address}"
    try:
        password = cli_input.read_password(sys.stdin.buffer, prompt_text,
                                           confirm_text=again_text)
    except cli_input.PasswordInputError as exc:
        if exc.reason == cli_input.MISMATCH:
            raise _UsageError(f"the passwords{whose} do not match") from None
        if exc.reason == cli_input.NOT_UTF8:
            raise _UsageError(f"the password{whose} is not valid UTF-8") from None
        password = ""  # no line left, or Ctrl-D at the prompt
    if not password:
        raise _UsageError(f"the password{whose} is empty")
    return password


async def _run(args: argparse.Namespace, cfg: Config) -> list[str]:
    """Perform the action; the lines to print. Raises `_UsageError`/`DirectoryError`.

    Several addresses use one process and one database connection pool: every address is
    checked and every password read before the first user is written."""
    command = args.user_command
    addresses = [] if command == "list" else [
        "{1}@{0}".format(*parse_address(a)) for a in args.addresses]
    passwords: list[str] = []
    if command == "add":  # after the addresses are checked
        several = len(addresses) > 1
        passwords = [read_password(a if several else None) for a in addresses]
    directory = await Directory.for_deployment(cfg, create=False)  # `init` migrated it
    try:
        if command == "add":
            lines = []
            for address, password in zip(addresses, passwords, strict=True):
                new_tenant = await directory.add_user(address, password)
                realm = address.rpartition("@")[2]
                lines.append(f"added {address}" + (f" (new tenant {realm})" if new_tenant
                                                   else ""))
            return lines
        if command == "remove":
            lines, missing = [], []
            for address in addresses:
                if await directory.remove_user(address):
                    lines.append(f"removed {address}")
                else:
                    missing.append(address)
            if missing:
                raise _UsageError(f"no such user {', '.join(missing)}", lines)
            return lines
        return await directory.list_users(args.tenant)
    finally:
        await directory.close()


def run_user(args: argparse.Namespace) -> int:
    """`webconf user`: 0 ok, 1 user error, 2 configuration or database error."""
    prog = f"webconf user {args.user_command}"
    try:
        cfg = load_config(args.dir)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    try:
        lines = asyncio.run(_run(args, cfg))
    except (keys.KeyFileError, DirectorySchemaError) as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except (_UsageError, DirectoryError) as exc:
        for line in exc.done if isinstance(exc, _UsageError) else []:
            print(line)
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    except (SQLAlchemyError, OSError) as exc:
        # Never the exception text: a driver may echo statement parameters (HA1s).
        print(f"{prog}: cannot use the directory database {_safe_url(cfg.store_url)} "
              f"({type(exc).__name__})", file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    if args.user_command == "add":
        realms = dict.fromkeys(parse_address(a)[0] for a in args.addresses)
        for realm in realms:
            if realm in cfg.tenants.domains:
                continue
            print(f"warning: the deployment's TLS certificates do not name {realm}; SIP "
                  f"clients of that tenant will refuse the focus. Re-run `webconf init "
                  f"{cfg.base_dir} --force` with every --tenant, including --tenant {realm}.",
                  file=sys.stderr)
    return 0


def _safe_url(url: str) -> str:
    """The store URL without any password in it."""
    scheme, sep, rest = url.partition("://")
    if sep and "@" in rest.split("/", 1)[0]:
        creds, _, host = rest.partition("@")
        return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"
    return url
