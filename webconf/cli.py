"""`webconf`: the one command for operators and meeting clients (docs/protocol.md §7).

Operator commands (`init`, `serve`, `db`, `user`) belong to the server wings and are imported
only when used, so the client commands stay usable from a client-only install and the
client wing never touches the server's internals.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

# command -> (module, add-arguments function, run function, one-line help)
COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "init": ("webconf.deploy.init", "add_init_arguments", "run_init",
             "write a new deployment (PKI, keys, webconf.toml, var/)"),
    "serve": ("webconf.deploy.serve", "add_serve_arguments", "run_serve",
              "run the deployment's servers; prints 'ready' when they accept connections"),
    "db": ("webconf.deploy.dbcmd", "add_db_arguments", "run_db",
           "migrate the database (webconf db upgrade DIR) or show its schema (status)"),
}
OPTIONAL_COMMANDS: dict[str, tuple[str, str, str, str]] = {
    "user": ("focus.directory", "add_user_arguments", "run_user",
             "manage the tenant directory (webconf user add DIR alice@contoso.example)"),
    "tenant": ("conferencing.admin", "add_tenant_arguments", "run_tenant",
               "tenant settings and keys: set, customer-key, rotate, purge"),
    "keys": ("conferencing.admin", "add_keys_arguments", "run_keys",
             "the service's keys: rotate-root"),
    "audit": ("conferencing.audit", "add_audit_arguments", "run_audit",
              "print the deployment's audit log (webconf audit DIR [--tenant T])"),
    "join": ("clients.commands", "add_join_arguments", "run_join",
             "join a conference and save every shared item"),
    "share": ("clients.commands", "add_share_arguments", "run_share",
              "join, upload files with a progress bar, leave"),
    "fetch": ("clients.commands", "add_fetch_arguments", "run_fetch",
              "join, download and decrypt items, leave"),
    "present": ("clients.present", "add_present_arguments", "run_present",
                "join, share a PDF and turn its pages at an interval, leave"),
    "end": ("clients.end", "add_end_arguments", "run_end",
            "join as the organizer and end the meeting for everyone"),
    "role": ("clients.organizer", "add_role_arguments", "run_role",
             "join as the organizer and make a participant presenter or attendee"),
    "eject": ("clients.organizer", "add_eject_arguments", "run_eject",
              "join as the organizer and eject a participant"),
    "lock": ("clients.organizer", "add_lock_arguments", "run_lock",
             "join as the organizer and lock the meeting (--off: unlock)"),
    "demo": ("clients.demo", "add_demo_arguments", "run_demo",
             "a whole verified meeting in a temp directory"),
    "loadtest": ("clients.loadtest", "add_loadtest_arguments", "run_loadtest",
                 "simulated meetings with a latency/throughput report"),
}


def load_command(spec: tuple[str, str, str, str]
                 ) -> tuple[Callable[..., Any], Callable[..., int]] | None:
    """A command's (add-arguments, run) functions; None when its module is not installed."""
    module_name, add_name, run_name, _ = spec
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise
    add, run = getattr(module, add_name, None), getattr(module, run_name, None)
    if add is None or run is None:
        return None
    return add, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webconf", description="Self-hostable web conferencing content server with a "
        "SIP conference focus.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, spec in {**COMMANDS, **OPTIONAL_COMMANDS}.items():
        loaded = load_command(spec)
        if loaded is None:
            continue
        add, run = loaded
        cmd = sub.add_parser(name, help=spec[3], description=spec[3])
        add(cmd)
        cmd.set_defaults(run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        print("webconf: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
