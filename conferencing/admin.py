"""`webconf tenant ...` and `webconf keys ...`: the operator's key and tenant commands
(docs/protocol.md §7.1, §8).

Each subcommand lives in the module of its capability; this file only routes to them, so
that a subcommand whose module is absent from an install is simply not offered.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from webconf.cli import load_command

# group -> subcommand -> (module, add-arguments function, run function, one-line help)
GROUPS: dict[str, dict[str, tuple[str, str, str, str]]] = {
    "tenant": {
        "set": ("conferencing.tenant_settings", "add_set_arguments", "run_set",
                "change a tenant's settings (webconf tenant set DIR TENANT KEY=VALUE...)"),
        "customer-key": ("conferencing.customer_key", "add_customer_key_arguments",
                         "run_customer_key",
                         "protect a tenant's key with its own keys in an HSM (PKCS#11)"),
        "rotate": ("conferencing.rotation", "add_rotate_arguments", "run_rotate",
                   "new tenant key version; rewrap every item key under it"),
        "purge": ("conferencing.purge", "add_purge_arguments", "run_purge",
                  "crypto-shred every key and blob of a tenant"),
    },
    "keys": {
        "rotate-root": ("conferencing.rotation", "add_rotate_root_arguments",
                        "run_rotate_root", "new root key version; rewrap every tenant key"),
    },
}


def _add_group(parser: argparse.ArgumentParser, group: str) -> None:
    sub = parser.add_subparsers(dest=f"{group}_command", metavar="SUBCOMMAND", required=True)
    for name, spec in GROUPS[group].items():
        loaded = load_command(spec)
        if loaded is None:
            continue
        add, run = loaded
        cmd = sub.add_parser(name, help=spec[3], description=spec[3])
        add(cmd)
        cmd.set_defaults(group_run=run)


def _run(args: argparse.Namespace) -> int:
    run: Callable[[argparse.Namespace], int] = args.group_run
    return run(args)


def add_tenant_arguments(parser: argparse.ArgumentParser) -> None:
    _add_group(parser, "tenant")


def run_tenant(args: argparse.Namespace) -> int:
    return _run(args)


def add_keys_arguments(parser: argparse.ArgumentParser) -> None:
    _add_group(parser, "keys")


def run_keys(args: argparse.Namespace) -> int:
    return _run(args)
