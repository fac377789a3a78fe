"""`webconf tenant set DIR TENANT NAME=VALUE...`: an operator's per-tenant settings
(docs/protocol.md §7.1, §8.3).

Settings live in the store's `tenant_settings` table (a tenant without a row has every
default), so every node sees a change without a restart. Running servers read them with
the request that needs them, in the same query (the download switches are selected with
the item: store.DownloadSwitches), so a change applies to the next request; nothing
caches them.

A setting is one line of `SETTINGS`: its name, its column and a parser of the value
given on the command line. An unknown name, a bad value or an unknown tenant exits 2
with one line, and nothing is changed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

EXIT_USAGE = 2
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true or false")


@dataclass(frozen=True)
class Setting:
    column: str
    """The `tenant_settings` column that holds it."""
    parse: Callable[[str], Any]
    """The command line's text to the column's value; raises ValueError with a reason."""
    help: str


SETTINGS: dict[str, Setting] = {
    "server_decrypt": Setting("server_decrypt", parse_bool,
                              "serve GET .../document, the decrypting download (default true)"),
    "shred_content_at_end": Setting(
        "shred_content_at_end", parse_bool,
        "shred a conference's content when it ends, not after the grace (default false)"),
}
"""Every tenant setting `webconf tenant set` knows: add one here (and its column)."""


class SettingError(ValueError):
    """A `NAME=VALUE` that names no setting or holds a bad value; the text is the line."""


def parse_assignments(pairs: list[str]) -> dict[str, Any]:
    """`["server_decrypt=false"]` -> `{"server_decrypt": False}` (column -> value)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        name, eq, text = pair.partition("=")
        name = name.strip()
        if not eq:
            raise SettingError(f"{pair!r} is not NAME=VALUE")
        setting = SETTINGS.get(name)
        if setting is None:
            known = ", ".join(sorted(SETTINGS))
            raise SettingError(f"unknown tenant setting {name!r} (known: {known})")
        try:
            values[setting.column] = setting.parse(text)
        except ValueError as exc:
            raise SettingError(f"bad value {text!r} for {name}: {exc}") from None
    return values


def add_set_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base_dir", metavar="DIR", help="the deployment directory")
    parser.add_argument("tenant", metavar="TENANT", help="the tenant's domain")
    names = "; ".join(f"{name}: {s.help}" for name, s in SETTINGS.items())
    parser.add_argument("assignments", nargs="+", metavar="NAME=VALUE",
                        help=f"settings to change ({names})")


def run_set(args: argparse.Namespace) -> int:
    from webconf.deploy.config import load_config

    cfg = load_config(args.base_dir)
    tenant = str(args.tenant).strip().lower()
    if tenant not in cfg.tenants.domains:
        print(f"webconf tenant set: {args.tenant!r} is not a tenant of this deployment "
              f"(tenants.domains)", file=sys.stderr)
        return EXIT_USAGE
    try:
        values = parse_assignments(list(args.assignments))
    except SettingError as exc:
        print(f"webconf tenant set: {exc}", file=sys.stderr)
        return EXIT_USAGE
    asyncio.run(_apply(cfg.store_url, str(cfg.base_dir), tenant, values))
    shown = " ".join(f"{name}={str(values[s.column]).lower()}" for name, s in SETTINGS.items()
                     if s.column in values)
    print(f"{tenant}: {shown}")
    return 0


async def _apply(store_url: str, where: str, tenant: str, values: dict[str, Any]) -> None:
    from .store import Store

    store = await Store.open(store_url, create=False, where=where)
    try:
        await store.set_tenant_settings(tenant, values, time.time())
    finally:
        await store.close()
