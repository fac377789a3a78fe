"""`webconf loadtest`: its arguments, the plan and target they choose, and the run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from webconf.deploy.local import kill_leftover_servers
from webconf.deploy.loop import fast_loop_factory

from ..meeting import FocusAddress
from .errors import LoadtestError
from .plan import BLOCK, CONNECTION_MODES, DEFAULT_TENANT, Plan, Target, fmt_size, parse_size
from .report import Live, render_table
from .runner import LoadTest
from .targets import existing_deployment, own_deployment, remote_target


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {value}")
    return value


def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `webconf loadtest`."""
    target = parser.add_argument_group(
        "target", "default: a fresh deployment in a temp dir, removed afterwards")
    target.add_argument("--dir", type=Path, metavar="DIR",
                        help="an existing deployment whose servers already run (`webconf serve "
                             "DIR`); load-test users are added for the run and removed after")
    target.add_argument("--focus", metavar="HOST:PORT",
                        help="where to send the joins: alone, a remote focus whose users exist "
                             "(needs --ca, --password-env and --user-pattern; no RSS then); "
                             "with --dir, the load balancer in front of DIR's nodes (HTTP "
                             "goes wherever the join answers send it)")
    target.add_argument("--ca", type=Path, metavar="FILE", help="CA certificate (with --focus)")
    target.add_argument("--password-env", metavar="VAR",
                        help="environment variable holding the users' password (with --focus)")
    target.add_argument("--user-pattern", metavar="PATTERN",
                        help="user addresses, e.g. 'user{i}@contoso.example' (with --focus); "
                             "without --organizer-pattern i=0..M-1 are the organizers and "
                             "i=M..M+N-1 the participants")
    target.add_argument("--organizer-pattern", metavar="PATTERN",
                        help="organizer addresses, e.g. 'org{i}@contoso.example' (with --focus)")
    target.add_argument("--tenant", metavar="DOMAIN",
                        help=f"tenant of the users (default {DEFAULT_TENANT} for a fresh "
                             "deployment, the first tenant of DIR with --dir)")
    load = parser.add_argument_group("load")
    load.add_argument("--participants", type=_positive, default=20, metavar="N",
                      help="participants, spread over the conferences (default 20)")
    load.add_argument("--conferences", type=_positive, default=2, metavar="M",
                      help="conferences, each with its own organizer (default 2)")
    load.add_argument("--items", type=_non_negative, default=2, metavar="K",
                      help="items each organizer shares (default 2)")
    load.add_argument("--item-size", type=_size_arg, default=BLOCK, metavar="SIZE",
                      help="bytes per item: 1MiB, 256KiB, 500k, 4096 (default 1MiB)")
    load.add_argument("--join-concurrency", type=_positive, default=10, metavar="C",
                      help="INVITEs in flight at once (default 10)")
    load.add_argument("--connection", choices=CONNECTION_MODES, default="per-join",
                      help="per-join: a TLS connection per participant; reused: the "
                           "participants of one join worker share one connection "
                           "(default per-join)")
    load.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                      help="per request; a download phase without progress for this long "
                           "gives up (default 60)")
    load.add_argument("--present", action="store_true",
                      help="each organizer also shares a PDF and turns its pages; reports "
                           "the page-turn latency to every attendee")
    load.add_argument("--present-pages", type=_positive, default=10, metavar="P",
                      help="page turns per conference with --present (default 10)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the table (no live progress)")


def _plan(args: argparse.Namespace) -> Plan:
    if args.conferences > args.participants:
        raise LoadtestError("--conferences must not exceed --participants")
    if args.timeout <= 0:
        raise LoadtestError("--timeout must be positive")
    return Plan(participants=args.participants, conferences=args.conferences,
                items=args.items, item_size=args.item_size, concurrency=args.join_concurrency,
                connection=args.connection, timeout=args.timeout,
                present_pages=args.present_pages if args.present else 0)


def _target(args: argparse.Namespace, plan: Plan, say: Callable[[str], None]
            ) -> contextlib.AbstractAsyncContextManager[Target]:
    remote_only = {"--ca": args.ca, "--password-env": args.password_env,
                   "--user-pattern": args.user_pattern,
                   "--organizer-pattern": args.organizer_pattern}
    if args.focus is None or args.dir is not None:
        given = [flag for flag, value in remote_only.items() if value is not None]
        if given:
            raise LoadtestError(f"{', '.join(given)} only go with --focus alone")
        if args.dir is not None:
            return existing_deployment(plan, args.dir, args.tenant, say,
                                       focus=_focus_address(args.focus))
        return own_deployment(plan, args.tenant or DEFAULT_TENANT, say)
    missing = [flag for flag in ("--ca", "--password-env", "--user-pattern")
               if remote_only[flag] is None]
    if missing:
        raise LoadtestError(f"--focus needs {', '.join(missing)}")
    if args.tenant is not None:
        raise LoadtestError("--tenant does not go with --focus (the patterns name the domain)")
    password = os.environ.get(args.password_env)
    if not password:
        raise LoadtestError(f"environment variable {args.password_env} is not set")
    _focus_address(args.focus)
    if not args.ca.is_file():
        raise LoadtestError(f"--ca {args.ca}: no such file")
    return remote_target(plan, args.focus, args.ca, password, args.user_pattern,
                         args.organizer_pattern)


def _focus_address(text: str | None) -> FocusAddress | None:
    if text is None:
        return None
    try:
        return FocusAddress.parse(text)
    except ValueError:
        raise LoadtestError(f"--focus {text!r} is not HOST:PORT") from None


async def _main(args: argparse.Namespace, plan: Plan, live: Live) -> dict[str, Any]:
    task = asyncio.current_task()
    if task is not None:  # SIGTERM unwinds like Ctrl-C: the servers we started are stopped
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with _target(args, plan, live.say) as target:
        live.say(f"{plan.participants} participants in {plan.conferences} conferences, "
                 f"{plan.items} x {fmt_size(plan.item_size)} per conference, "
                 f"{plan.connection} connections")
        return await LoadTest(plan, target, live).run()


def run_loadtest(args: argparse.Namespace) -> int:
    """`webconf loadtest`: 0 without errors, 1 if any error was counted, 2 if it could not
    run at all."""
    try:
        plan = _plan(args)
    except LoadtestError as exc:
        print(f"webconf loadtest: {exc}", file=sys.stderr)
        return 2
    live_enabled = not args.json and sys.stderr.isatty()
    try:
        # The simulated participants share the machine with the servers they measure: on
        # uvloop their TLS and WebSockets cost less CPU (as bench/sip_gen.py's do).
        with Live(live_enabled) as live, asyncio.Runner(
                loop_factory=fast_loop_factory()) as runner:
            report = runner.run(_main(args, plan, live))
    except LoadtestError as exc:
        print(f"webconf loadtest: {exc}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        print("webconf loadtest: terminated", file=sys.stderr)
        return 143
    finally:
        kill_leftover_servers()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from rich.console import Console
        from rich.markup import escape

        console = Console()
        console.print(render_table(report))
        for kind, example in report.get("error_examples", {}).items():
            console.print(f"[red]{escape(kind)}[/]: {escape(example)}", highlight=False)
    return 0 if report["error_count"] == 0 else 1
