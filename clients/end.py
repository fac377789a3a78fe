"""`webconf end URI --user ORGANIZER`: end a meeting for everyone (docs/protocol.md §8.6).

Joins as the organizer over SIP/TLS exactly like `webconf fetch` (clients/commands.py),
then sends `DELETE /v1/conferences/{conf}` with the cookie of that join: every participant
is revoked, the channels get `conference.ended`, and the focus sends BYE on every dialog,
this one included (answered 200 by the client). Prints one line, `ended <id>`; errors are
the join commands' lines and exit codes (an attendee gets 7, forbidden).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from .commands import (
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

__all__ = ["add_end_arguments", "run_end"]


def add_end_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)


def run_end(args: argparse.Namespace) -> int:
    conference = conference_id(args.uri)
    password = ""
    label = "the focus"
    try:
        focus, ctx = _resolve(args)
        label = f"{focus.host}:{focus.port}"
        password = read_password(args.user)
        client = MeetingClient(args.uri, args.user, password, focus=focus, ssl_context=ctx,
                               timeout=args.timeout)
        asyncio.run(_end(client))
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
    Output().line(f"ended {show(conference)}")
    return EXIT_OK


async def _end(client: MeetingClient) -> None:
    """Join, end, wait (bounded) for the focus's BYE; leave ourselves if none came."""
    try:
        await client.join()
        try:
            await client.end_conference()
            dialog = client.dialog
            if dialog is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(dialog.ended.wait(), client.timeout)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.leave(), client.timeout)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)
