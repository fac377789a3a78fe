"""The organizer's commands (docs/protocol.md §9.2), in the pattern of `webconf end`:

    webconf role  URI USER-or-PID presenter|attendee --user ORGANIZER
    webconf eject URI USER-or-PID --user ORGANIZER
    webconf lock  URI [--off] --user ORGANIZER

Each joins as the organizer over SIP/TLS, does its one thing with the cookie of that join,
and leaves (BYE). A `user@domain` target means every live participation of that user (two
devices are two participants); anything else is a participant id. Prints one line per
participant changed (`role <user> <role> (participant <pid>)`, `ejected <user> (participant
<pid>)`) or `locked <conf>`/`unlocked <conf>`; errors are the join commands' lines and exit
codes (not the organizer: 7, forbidden; nobody of that name: 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from .commands import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CommandError,
    Output,
    _add_common,
    _error_line,
    _resolve,
    classify,
    conference_id,
    read_password,
    show,
)
from .meeting import MeetingClient
from .roster import Member

__all__ = ["add_eject_arguments", "add_lock_arguments", "add_role_arguments",
           "run_as_organizer", "run_eject", "run_lock", "run_role"]

Work = Callable[[MeetingClient], Awaitable[list[str]]]


def add_role_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("target", metavar="USER-or-PID",
                        help="user@domain (each of their participations) or a participant id")
    parser.add_argument("role", choices=("presenter", "attendee"), help="the new role")


def add_eject_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("target", metavar="USER-or-PID",
                        help="user@domain (each of their participations) or a participant id")


def add_lock_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--off", action="store_true", help="unlock instead")


async def _targets(client: MeetingClient, target: str) -> list[Member]:
    """The live participants `target` names: a user's (not our own join's), or one id."""
    roster = await client.load_roster()
    ours = client.joined.participant if client.joined else ""
    if "@" in target:
        found = [m for m in roster.values() if m.user == target and m.id != ours]
    else:
        found = [m for m in roster.values() if m.id == target]
    if not found:
        raise CommandError(EXIT_ERROR, f"no participant {show(target)} in the meeting")
    return found


def run_role(args: argparse.Namespace) -> int:
    async def work(client: MeetingClient) -> list[str]:
        lines = []
        for member in await _targets(client, args.target):
            entry = await client.set_role(member.id, args.role)
            lines.append(f"role {show(entry['user'])} {show(entry['role'])} "
                         f"(participant {show(member.id)})")
        return lines

    return run_as_organizer(args, work)


def run_eject(args: argparse.Namespace) -> int:
    async def work(client: MeetingClient) -> list[str]:
        lines = []
        for member in await _targets(client, args.target):
            await client.eject(member.id)
            lines.append(f"ejected {show(member.user)} (participant {show(member.id)})")
        return lines

    return run_as_organizer(args, work)


def run_lock(args: argparse.Namespace) -> int:
    async def work(client: MeetingClient) -> list[str]:
        settings = await client.lock(not args.off)
        state = "locked" if settings.get("locked") else "unlocked"
        return [f"{state} {show(settings.get('conference', ''))}"]

    return run_as_organizer(args, work)


def run_as_organizer(args: argparse.Namespace, work: Work) -> int:
    """Join as `args.user`, run `work`, print its lines, leave: one line and a code on
    failure (the join commands' lines and exit codes)."""
    conference = conference_id(args.uri)
    password = ""
    label = "the focus"
    try:
        focus, ctx = _resolve(args)
        label = f"{focus.host}:{focus.port}"
        password = read_password(args.user)
        client = MeetingClient(args.uri, args.user, password, focus=focus, ssl_context=ctx,
                               timeout=args.timeout)
        lines = asyncio.run(_session(client, work))
    except KeyboardInterrupt:
        _error_line("interrupted", [])
        return EXIT_INTERRUPTED
    except CommandError as exc:
        _error_line(exc.message, [password])
        return exc.code
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and a code
        error = classify(exc, focus=label, conference=conference, user=args.user)
        _error_line(error.message, [password])
        return error.code
    out = Output()
    for line in lines:
        out.line(line)
    return EXIT_OK


async def _session(client: MeetingClient, work: Work) -> list[str]:
    """Join, work, leave (BYE), whatever happened."""
    try:
        await client.join()
        try:
            return await work(client)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.leave(), client.timeout)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)
