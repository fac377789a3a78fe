"""`webconf present DIR-or-URI FILE.pdf --user U [--pages 1-5] [--interval 2s]`: share a PDF
and turn its pages for everyone (docs/protocol.md §9.1), so that demos and load tests can
drive a presentation.

Joins like `webconf share` (clients/commands.py: same options, password, lines and exit
codes). The target is a conference URI, or a deployment directory (`webconf init DIR`):
then the focus and the CA come from DIR, and the conference is the user's own
(`--conference`, default "present"). Shares the file, shows `--pages` one after the other
every `--interval`, stops presenting, and leaves.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
from pathlib import Path

from webconf.protocol import conference_uri

from .commands import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Context,
    _add_common,
    _error_line,
    _execute,
    _until,
    show,
)
from .meeting import FocusAddress

__all__ = ["add_present_arguments", "parse_interval", "parse_pages", "run_present"]

MIN_INTERVAL = 0.2
"""The WCS allows 5 page turns per second per participant (docs/protocol.md §9.1)."""
DEFAULT_CONFERENCE = "present"
_INTERVAL_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m)?$")


def parse_interval(text: str) -> float:
    """`2s`, `500ms`, `1.5` (seconds) or `1m`; at least `MIN_INTERVAL`."""
    m = _INTERVAL_RE.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 2s, 500ms)")
    value = float(m.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[m.group(2)]
    if value < MIN_INTERVAL:
        raise argparse.ArgumentTypeError(f"at least {MIN_INTERVAL:g}s between page turns")
    return value


def parse_pages(text: str) -> tuple[int, int]:
    """`3` or `1-5`: a 1-based, inclusive range."""
    m = re.match(r"^([0-9]{1,6})(?:-([0-9]{1,6}))?$", text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"not a page range: {text!r} (e.g. 1-5)")
    first = int(m.group(1))
    last = int(m.group(2) or first)
    if not 1 <= first <= last:
        raise argparse.ArgumentTypeError(f"not a page range: {text!r} (pages start at 1)")
    return first, last


def add_present_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("file", type=Path, metavar="FILE.pdf", help="the PDF to present")
    parser.add_argument("--pages", type=parse_pages, metavar="A-B",
                        help="the pages to show, in order (default: all)")
    parser.add_argument("--interval", type=parse_interval, default=2.0, metavar="DURATION",
                        help="time on each page: 2s, 500ms... (default 2s)")
    parser.add_argument("--conference", default=DEFAULT_CONFERENCE, metavar="ID",
                        help="with a deployment DIR: the id of the user's conference "
                             f"(default {DEFAULT_CONFERENCE!r})")
    for action in parser._actions:  # the target may be a deployment directory too
        if action.dest == "uri":
            action.metavar = "DIR-or-URI"
            action.help = "conference URI, or a deployment directory (webconf init DIR)"


def _from_deployment(args: argparse.Namespace) -> None:
    """A deployment DIR as the target: its focus, its CA, the user's own conference."""
    from webconf.deploy.config import ConfigError, load_config

    try:
        cfg = load_config(Path(args.uri))
    except (ConfigError, OSError) as exc:
        raise CommandError(EXIT_USAGE, f"not a deployment directory: {args.uri}: {exc}") from None
    if args.focus is None:
        args.focus = FocusAddress(cfg.public_host, cfg.focus.sip_port)
    if args.ca is None:
        args.ca = str(cfg.certs_dir / "ca.pem")
    args.uri = conference_uri(args.user, args.conference)


def run_present(args: argparse.Namespace) -> int:
    path: Path = args.file
    if Path(args.uri).is_dir():
        try:
            _from_deployment(args)
        except CommandError as exc:
            _error_line(exc.message, [])
            return exc.code

    def check() -> None:
        if not path.is_file():
            raise CommandError(EXIT_USAGE, f"not a readable file: {path}")

    return _execute(args, _present_body, check=check)


async def _present_body(context: Context) -> int:
    args, client, out = context.args, context.client, context.out
    item = await _until(client.share(args.file), context.stop)
    if item is None:
        return EXIT_INTERRUPTED
    item_id = str(item["id"])
    total = int(item.get("pages") or 1)
    out.line(f"shared {show(args.file.name)} -> item {show(item_id)}, {total} page"
             f"{'s' if total != 1 else ''}")
    first, last = args.pages or (1, total)
    if last > total:
        raise CommandError(EXIT_USAGE, f"--pages {first}-{last}: {show(args.file.name)} has "
                           f"{total} page{'s' if total != 1 else ''}")
    try:
        for page in range(first, last + 1):
            state = await _until(client.set_page(item_id, page), context.stop)
            if state is None:
                return EXIT_INTERRUPTED
            out.line(f"page {page}/{total} (seq {state['seq']})")
            stopped = await _until(asyncio.sleep(args.interval), context.stop)
            if stopped is None and context.stop.is_set():
                return EXIT_INTERRUPTED
    finally:
        stopped_presenting = False
        with contextlib.suppress(Exception):  # leaving ends the presenter's turn anyway
            await asyncio.wait_for(client.set_page(None), client.timeout)
            stopped_presenting = True
        if stopped_presenting:
            out.line("presentation stopped")
    return EXIT_OK
