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

from .commands import _add_common, conference_id, show
from .meeting import MeetingClient
from .organizer import run_as_organizer

__all__ = ["add_end_arguments", "run_end"]


def add_end_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)


def run_end(args: argparse.Namespace) -> int:
    async def work(client: MeetingClient) -> list[str]:
        """End, then wait (bounded) for the focus's BYE; the session leaves if none came."""
        await client.end_conference()
        dialog = client.dialog
        if dialog is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(dialog.ended.wait(), client.timeout)
        return [f"ended {show(conference_id(args.uri))}"]

    return run_as_organizer(args, work)
