"""The meeting-client commands: `webconf join`, `webconf share`, `webconf fetch`.

Each joins a conference over SIP/TLS (Digest), works with the WCS through the cookie of the
200 OK, and always leaves with a BYE once joined, whatever happened in between. Output is one
line per event on stdout; errors are one line `webconf: <message>` on stderr and a distinct
exit code (`EXIT_CODES`), so scripts can tell a wrong password from a server that is down.

Secrets stay out of the output: the password comes from `WEBCONF_PASSWORD`, a prompt or
stdin and is never echoed; the cookie is never printed (error messages are scrubbed of both
as a last line of defence). Names chosen by other participants are shown with control and
format characters escaped, so an item name cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import socket
import ssl
import sys
import unicodedata
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, cast

from webconf import cli_input
from webconf.events import (
    ConferenceEnded,
    ConferenceUpdated,
    EventError,
    ItemConversion,
    ItemRemoved,
    ItemShared,
    Presentation,
    PresentationChanged,
    Revoked,
    UnknownEvent,
    Welcome,
    parse_event,
)
from webconf.protocol import conference_id_of, conference_uri

from .download import DownloadError, DownloadResult, ItemIntegrityError
from .meeting import DEFAULT_SIP_PORT, FocusAddress, MeetingClient, conference_domain
from .roster import roster_line
from .sip import SipError
from .wcs import WcsError, client_ssl_context

# -- exit codes ---------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_ERROR = 1
"""Anything not listed below."""
EXIT_USAGE = 2
"""Bad arguments (argparse's own code), a missing file, no password."""
EXIT_CREDENTIALS = 3
"""Wrong password or unknown user (SIP 401 after the Digest answer), or credentials that do
not match --user (SIP 403 "Credentials Do Not Match From")."""
EXIT_UNKNOWN_CONFERENCE = 4
"""SIP 404: no such conference (the organizer has not started it, or a wrong id)."""
EXIT_UNREACHABLE = 5
"""Connection refused, DNS failure, timeout, connection lost, SIP/HTTP 503 (Retry-After)."""
EXIT_TLS = 6
"""The server's certificate did not verify against --ca (or the system trust store)."""
EXIT_FORBIDDEN = 7
"""SIP 403 (another tenant), or HTTP 403 (e.g. an attendee may not share)."""
EXIT_INTEGRITY = 8
"""An item failed decryption or its size/SHA-256 check; nothing of it was kept."""
EXIT_INTERRUPTED = 130
"""SIGINT/SIGTERM during `share` or `fetch` (for `join` they are the normal way to stop)."""

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_ERROR: "other error",
    EXIT_USAGE: "usage error (bad arguments, missing file, no password)",
    EXIT_CREDENTIALS: "bad password or credentials (SIP 401, 403 Credentials Do Not Match)",
    EXIT_UNKNOWN_CONFERENCE: "unknown conference (SIP 404)",
    EXIT_UNREACHABLE: "server unreachable (refused, DNS, timeout, 503 + Retry-After)",
    EXIT_TLS: "TLS certificate verification failed (pass the deployment CA with --ca)",
    EXIT_FORBIDDEN: "forbidden (another tenant, or not allowed to share)",
    EXIT_INTEGRITY: "item integrity failure (decryption or SHA-256 check failed)",
    EXIT_INTERRUPTED: "interrupted (share/fetch)",
}

DEFAULT_TIMEOUT = 15.0
MAX_PARALLEL_DOWNLOADS = 4
SIP_KEEPALIVE_SECONDS = 30.0
MIN_SCRUB_LENGTH = 8
"""Secrets this long are masked in error lines (shorter ones would mask random text)."""
ENV_FOCUS, ENV_CA, ENV_PASSWORD = "WEBCONF_FOCUS", "WEBCONF_CA", "WEBCONF_PASSWORD"


def _epilog() -> str:
    rows = "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())
    return (
        "password: $WEBCONF_PASSWORD, else a prompt on a terminal, else the first line of "
        "stdin.\n"
        f"environment: ${ENV_FOCUS} (default --focus), ${ENV_CA} (default --ca).\n"
        "URI example (quote it in shells, it contains ';'):\n"
        f"  '{conference_uri('alice@contoso.example', 'K7Q2')}'\n\n"
        f"exit codes:\n{rows}\n"
    )


# -- errors -------------------------------------------------------------------------------------

class CommandError(Exception):
    """A failure with its exit code and the one line to show."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes/contexts (aiohttp keeps the ssl error inside)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 16:
        seen.append(current)
        inner = getattr(current, "certificate_error", None)  # aiohttp's wrapper
        if isinstance(inner, BaseException) and inner not in seen:
            seen.append(inner)
        current = current.__cause__ or current.__context__
    return seen


def _retry_hint(seconds: int | None) -> str:
    return f"; retry after {seconds} s" if seconds else ""


def classify(exc: BaseException, *, focus: str, conference: str, user: str) -> CommandError:
    """Map any failure to (exit code, message) for the table above."""
    if isinstance(exc, CommandError):
        return exc
    chain = _chain(exc)
    cert = next((e for e in chain if isinstance(e, ssl.SSLCertVerificationError)), None)
    if cert is not None:
        detail = getattr(cert, "verify_message", None) or str(cert)
        return CommandError(EXIT_TLS, f"TLS certificate verification failed ({detail}); "
                            "pass the deployment's CA with --ca (e.g. --ca DIR/certs/ca.pem) "
                            f"or set {ENV_CA}")
    if isinstance(exc, ItemIntegrityError):
        return CommandError(EXIT_INTEGRITY, f"integrity check failed: {exc}; nothing saved")
    if isinstance(exc, SipError):
        return _classify_sip(exc, focus=focus, conference=conference, user=user)
    if isinstance(exc, DownloadError):
        cause = exc.__cause__
        if isinstance(cause, WcsError) and cause.status in (0, 503):
            return CommandError(EXIT_UNREACHABLE, f"{exc}")
        if isinstance(cause, WcsError) and cause.status == 403:
            return CommandError(EXIT_FORBIDDEN, f"{exc}")
        return CommandError(EXIT_ERROR, str(exc))
    if isinstance(exc, WcsError):
        return _classify_wcs(exc, conference=conference)
    if isinstance(exc, socket.gaierror):
        return CommandError(EXIT_UNREACHABLE, f"cannot resolve the focus {focus}: {exc}")
    if isinstance(exc, ConnectionRefusedError):
        return CommandError(EXIT_UNREACHABLE, f"connection to the focus {focus} refused")
    if isinstance(exc, TimeoutError):
        return CommandError(EXIT_UNREACHABLE, f"no answer from the focus {focus} in time "
                            "(--timeout)")
    if isinstance(exc, ssl.SSLError):
        return CommandError(EXIT_UNREACHABLE, f"TLS handshake with the focus {focus} failed: "
                            f"{exc}")
    if isinstance(exc, (ConnectionError, EOFError)):
        return CommandError(EXIT_UNREACHABLE, f"lost the connection to the focus {focus}: "
                            f"{exc or type(exc).__name__}")
    if isinstance(exc, OSError) and exc.filename is None:
        return CommandError(EXIT_UNREACHABLE, f"cannot reach the focus {focus}: {exc}")
    if isinstance(exc, OSError):
        return CommandError(EXIT_ERROR, f"{exc.strerror or exc}: {exc.filename}")
    return CommandError(EXIT_ERROR, f"{type(exc).__name__}: {exc}")


def _classify_sip(exc: SipError, *, focus: str, conference: str, user: str) -> CommandError:
    """Decide on `exc.kind` (derived once from status and reason constant in clients.sip)."""
    status, reason, kind = exc.status, exc.reason, exc.kind
    if kind == "credentials" and status == 401:
        return CommandError(EXIT_CREDENTIALS, f"authentication failed for {user} "
                            f"(SIP 401 {reason}): wrong password or unknown user")
    if kind == "credentials":
        return CommandError(EXIT_CREDENTIALS, f"the credentials do not match {user} "
                            f"(SIP {status} {reason})")
    if kind == "forbidden":
        return CommandError(EXIT_FORBIDDEN, f"{user} may not join conference {conference} "
                            f"(SIP 403 {reason})")
    if kind == "not-found":
        return CommandError(EXIT_UNKNOWN_CONFERENCE, f"unknown conference {conference} "
                            f"(SIP 404 {reason})")
    if kind == "transport":
        return CommandError(EXIT_UNREACHABLE, f"lost the connection to the focus {focus}: "
                            f"{reason}")
    if kind == "unavailable":
        return CommandError(EXIT_UNREACHABLE, f"the focus {focus} is unavailable "
                            f"(SIP {status} {reason}){_retry_hint(exc.retry_after)}")
    return CommandError(EXIT_ERROR, f"the focus refused the join (SIP {status} {reason})"
                        f"{_retry_hint(exc.retry_after)}")


def _classify_wcs(exc: WcsError, *, conference: str) -> CommandError:
    if exc.status == 0:
        return CommandError(EXIT_UNREACHABLE, f"cannot reach the conferencing server: "
                            f"{exc.message}")
    if exc.status == 403:
        return CommandError(EXIT_FORBIDDEN, f"forbidden in conference {conference}: "
                            f"{exc.message} (HTTP 403)")
    if exc.status == 401:
        return CommandError(EXIT_ERROR, f"the conferencing server no longer accepts our "
                            f"cookie: {exc.message} (HTTP 401)")
    if exc.status >= 500:
        return CommandError(EXIT_UNREACHABLE, f"the conferencing server failed: "
                            f"{exc.message} (HTTP {exc.status})")
    return CommandError(EXIT_ERROR, f"{exc.message} (HTTP {exc.status} {exc.code})")


# -- arguments ----------------------------------------------------------------------------------

def _user(text: str) -> str:
    user, sep, domain = text.partition("@")
    if not sep or not user or not domain or any(c in text for c in " <>;:\"\r\n"):
        raise argparse.ArgumentTypeError(f"not a user@domain address: {text!r}")
    return text


def _focus(text: str) -> FocusAddress:
    try:
        address = FocusAddress.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}") from None
    if not address.host or not 0 < address.port < 65536:
        raise argparse.ArgumentTypeError(f"not HOST:PORT: {text!r}")
    return address


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _epilog()
    parser.add_argument("uri", metavar="URI", help="conference URI (example below)")
    parser.add_argument("--user", required=True, type=_user, metavar="USER@DOMAIN",
                        help="who joins (e.g. alice@contoso.example)")
    parser.add_argument("--focus", type=_focus, metavar="HOST:PORT",
                        help=f"the focus to connect to (default: ${ENV_FOCUS}, else the "
                             f"URI's domain:{DEFAULT_SIP_PORT})")
    parser.add_argument("--ca", metavar="FILE",
                        help=f"trust only this CA (PEM) for the focus and the conferencing "
                             f"server (default: ${ENV_CA}, else the system trust store)")
    parser.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help=f"connect/answer timeout (default {DEFAULT_TIMEOUT:g})")


def add_join_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--save", type=Path, metavar="DIR",
                        help="save, decrypt and verify every shared item into DIR")
    parser.add_argument("--duration", type=_seconds, metavar="SECONDS",
                        help="leave after this long (default: until the meeting ends, "
                             "SIGINT or SIGTERM)")


def add_share_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help="files to share")


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    _add_common(parser)
    parser.add_argument("--item", metavar="ID", help="fetch only this item")
    parser.add_argument("--save", type=Path, default=Path("."), metavar="DIR",
                        help="where to save the items (default: the current directory)")
    parser.add_argument("--server-decrypt", action="store_true",
                        help="let the conferencing server decrypt (GET .../document) instead "
                             "of fetching the key; size and SHA-256 are still checked")


# -- helpers ------------------------------------------------------------------------------------

def show(text: object) -> str:
    """Text from other participants, with control/format characters escaped for terminals."""
    out = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def human_size(size: int | float | None) -> str:
    if size is None:
        return "? B"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def conference_id(uri: str) -> str:
    """The conference id of a conference URI (the URI itself when it carries none)."""
    return conference_id_of(uri) or uri


def read_password(user: str, stdin: TextIO | None = None) -> str:
    """$WEBCONF_PASSWORD, else a prompt on a terminal, else the first line of stdin."""
    env = os.environ.get(ENV_PASSWORD)
    if env is not None:
        return env
    stream = stdin or sys.stdin
    if stream is None:
        raise CommandError(EXIT_USAGE, f"no password: set {ENV_PASSWORD}")
    try:
        return cli_input.read_password(stream, f"Password for {user}: ")
    except cli_input.PasswordInputError as exc:
        if exc.reason == cli_input.CANCELLED:
            raise CommandError(EXIT_USAGE, "no password given") from None
        raise CommandError(EXIT_USAGE, f"no password: set {ENV_PASSWORD}, or give it on the "
                           "first line of stdin") from None


class Output:
    """Event lines on stdout, flushed one by one (other programs follow them live)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.console: Any = None
        """A rich Console while a live progress bar owns the terminal."""

    def line(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)


def _error_line(message: str, secrets_: list[str]) -> None:
    for secret in secrets_:
        if len(secret) >= MIN_SCRUB_LENGTH:
            message = message.replace(secret, "[redacted]")
    print(f"webconf: {show(message)}", file=sys.stderr, flush=True)


@dataclass
class Context:
    """What a command body gets: the joined client, output, the stop signal."""

    args: argparse.Namespace
    client: MeetingClient
    out: Output
    stop: asyncio.Event
    conference: str
    password: str = field(repr=False, default="")
    failures: list[CommandError] = field(default_factory=list)

    def fail(self, exc: BaseException) -> CommandError:
        """Record (and show) a failure that does not end the command at once."""
        error = classify(exc, focus=self.focus_label, conference=self.conference,
                         user=self.args.user)
        self.failures.append(error)
        _error_line(error.message, self.secrets)
        return error

    @property
    def focus_label(self) -> str:
        return f"{self.client.focus.host}:{self.client.focus.port}"

    @property
    def secrets(self) -> list[str]:
        cookie = self.client.joined.cookie if self.client.joined else ""
        return [cookie, self.password]

    def exit_code(self) -> int:
        if not self.failures:
            return EXIT_OK
        codes = [f.code for f in self.failures]
        return EXIT_INTEGRITY if EXIT_INTEGRITY in codes else codes[0]


Body = Callable[[Context], Awaitable[int]]


# -- the session frame: join, run the body, always leave -------------------------------------

def _resolve(args: argparse.Namespace) -> tuple[FocusAddress, ssl.SSLContext]:
    uri: str = args.uri
    if not re.match(r"^sips?:[^@;]+@[^;]+", uri):
        raise CommandError(EXIT_USAGE, f"not a conference URI: {uri!r} (expected "
                           f"{conference_uri('organizer@domain', 'ID')})")
    focus: FocusAddress | None = args.focus
    if focus is None:
        env = os.environ.get(ENV_FOCUS)
        if env:
            try:
                focus = _focus(env)
            except argparse.ArgumentTypeError as exc:
                raise CommandError(EXIT_USAGE, f"{ENV_FOCUS}: {exc}") from None
        else:
            focus = FocusAddress(conference_domain(uri), DEFAULT_SIP_PORT)
    ca = args.ca or os.environ.get(ENV_CA) or None
    if ca is not None and not Path(ca).is_file():
        raise CommandError(EXIT_USAGE, f"no such CA file: {ca}")
    try:
        ctx = client_ssl_context(ca)
    except (ssl.SSLError, ValueError) as exc:
        raise CommandError(EXIT_USAGE, f"cannot load the CA file {ca}: {exc}") from None
    return focus, ctx


def _execute(args: argparse.Namespace, body: Body, *, check: Callable[[], None] | None = None,
             interrupt_is_error: bool = True) -> int:
    """Parse the common options, read the password, run the session; map failures."""
    conference = conference_id(args.uri)
    password = ""
    label = "the focus"
    try:
        focus, ctx = _resolve(args)
        label = f"{focus.host}:{focus.port}"
        if check is not None:
            check()
        password = read_password(args.user)
        return asyncio.run(_session(args, body, focus, ctx, password, conference,
                                    interrupt_is_error=interrupt_is_error))
    except KeyboardInterrupt:
        _error_line("interrupted", [])
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and a code
        error = classify(exc, focus=label, conference=conference, user=args.user)
        _error_line(error.message, [password])
        return error.code


async def _session(args: argparse.Namespace, body: Body, focus: FocusAddress,
                   ctx: ssl.SSLContext, password: str, conference: str, *,
                   interrupt_is_error: bool) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    client = MeetingClient(args.uri, args.user, password, focus=focus, ssl_context=ctx,
                           timeout=args.timeout)
    out = Output()
    context = Context(args, client, out, stop, conference, password)
    focus_label = f"{focus.host}:{focus.port}"
    try:
        try:
            joined = await _until(client.join(), stop)
            if joined is None:
                return _interrupted(interrupt_is_error)
            # The URI's id, which the user gave (the join body's is the WCS's opaque one).
            out.line(f"joined {show(conference)} as {show(joined.role)} "
                     f"(participant {show(joined.participant)})")
            code = await body(context)
            if code == EXIT_INTERRUPTED:
                return _interrupted(interrupt_is_error)
            return code
        except CommandError as exc:
            _error_line(exc.message, context.secrets)
            return exc.code
        except Exception as exc:  # noqa: BLE001
            error = classify(exc, focus=focus_label, conference=conference, user=args.user)
            _error_line(error.message, context.secrets)
            return error.code
        finally:
            await _leave(context)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _interrupted(is_error: bool) -> int:
    if is_error:
        _error_line("interrupted", [])
        return EXIT_INTERRUPTED
    return EXIT_OK


async def _until(work: Awaitable[Any], stop: asyncio.Event) -> Any:
    """Run `work` unless `stop` is set first (then cancel it and return None)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        stopper.cancel()
        raise
    stopper.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None
    return task.result()


async def _leave(context: Context) -> None:
    """BYE if joined (the cookie is revoked), then close channel, HTTPS pool, SIP."""
    client = context.client
    if client.channel is not None:
        with contextlib.suppress(Exception):
            await client.channel.close()
    if client.joined is not None:
        try:
            status = await asyncio.wait_for(client.leave(), client.timeout)
        except (TimeoutError, OSError, SipError) as exc:
            _error_line(f"leaving failed (no answer to BYE): {exc or type(exc).__name__}", [])
        else:
            if status:
                context.out.line("left")
            else:
                _error_line("leaving failed: the connection to the focus was lost", [])
    with contextlib.suppress(Exception):
        await asyncio.wait_for(client.close(), 5)


# -- join ---------------------------------------------------------------------------------------

def run_join(args: argparse.Namespace) -> int:
    save: Path | None = args.save

    def check() -> None:
        if save is not None:
            _prepare_dir(save)

    return _execute(args, _join_body, check=check, interrupt_is_error=False)


def _prepare_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(EXIT_USAGE, f"cannot use {path} as the save folder: "
                           f"{exc.strerror or exc}") from None
    if not path.is_dir():
        raise CommandError(EXIT_USAGE, f"not a folder: {path}")


def presentation_line(shown: Presentation | PresentationChanged | None,
                      names: dict[str, str]) -> str:
    """`join`'s line for a page turn (docs/protocol.md §9.1); `names`: item id -> name."""
    if shown is None or shown.item is None:
        return "presentation stopped"
    name = names.get(shown.item, shown.item)
    return (f"presentation {show(name)} page {shown.page} (item {show(shown.item)}, "
            f"presenter {show(shown.presenter)})")


def _saved_line(result: DownloadResult, declared: bool) -> str:
    check = "sha256 verified" if declared else f"authenticated, sha256 {result.sha256}"
    return f"saved {show(result.name)} -> {show(result.path)} ({check})"


async def _join_body(context: Context) -> int:
    client, out, args = context.client, context.out, context.args
    if await _until(client.open_channel(), context.stop) is None:
        return EXIT_INTERRUPTED  # stopped while connecting: a normal end for `join`
    limit = asyncio.Semaphore(MAX_PARALLEL_DOWNLOADS)
    downloads: dict[str, asyncio.Task[None]] = {}
    names: dict[str, str] = {}

    async def save(event: dict[str, Any], item_id: str) -> None:
        item = event["item"]
        try:
            async with limit:
                result = await client.fetch(event, args.save)
            out.line(_saved_line(result, bool(item.get("sha256"))))
        except asyncio.CancelledError:
            raise
        except DownloadError as exc:
            cause = exc.__cause__
            if isinstance(cause, WcsError) and cause.status == 404:  # removed meanwhile
                out.line(f"not saved {show(names.get(item_id, item_id))}: item was removed")
            else:
                context.fail(exc)
        except Exception as exc:  # noqa: BLE001 - reported, the meeting goes on
            context.fail(exc)
        finally:
            downloads.pop(item_id, None)

    def on_event(data: dict[str, Any]) -> bool:
        """Print one event; start a download; True when the channel is over."""
        try:
            event = parse_event(data)
        except EventError:
            return False  # not a well-formed event: nothing to show
        if isinstance(event, ItemShared):
            item, item_id = event.entry.item, event.entry.item_id
            names[item_id] = str(item.get("name") or item_id)
            out.line(f"item.shared {show(names[item_id])} {human_size(item.get('size'))} "
                     f"by {show(item.get('presenter', '?'))} (item {show(item_id)})")
            if args.save is not None and item_id not in downloads:
                downloads[item_id] = asyncio.create_task(save(data, item_id))
        elif isinstance(event, ItemRemoved):
            item_id = event.item_id
            task = downloads.pop(item_id, None)
            if task is not None:
                task.cancel()
            out.line(f"item.removed {show(names.pop(item_id, item_id))} (item {show(item_id)})")
        elif (line := roster_line(event, show)) is not None:
            out.line(line)
            return isinstance(event, Revoked)
        elif isinstance(event, ConferenceEnded):
            out.line("conference ended")
            return True
        elif isinstance(event, ConferenceUpdated):
            out.line(f"conference.updated downloads={'on' if event.downloads else 'off'} "
                     f"locked={'on' if event.locked else 'off'}")
        elif isinstance(event, ItemConversion):  # a deck that did not become a PDF
            out.line(f"item.conversion {show(names.get(event.item_id, event.item_id))} "
                     f"{show(event.status)}: {show(event.error)}")
        elif isinstance(event, UnknownEvent) and event.type == "channel.reconnected":
            out.line("channel reconnected")
        elif isinstance(event, PresentationChanged) or (
                isinstance(event, Welcome) and event.presentation is not None):
            shown = event if isinstance(event, PresentationChanged) else event.presentation
            out.line(presentation_line(shown, names))
        elif not isinstance(event, Welcome):
            out.line(f"event {show(str(data['type']))}")
        return False

    async def consume() -> None:
        stream = cast("AsyncGenerator[dict[str, Any], None]", client.events())
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if on_event(event):
                    return

    async def keepalive() -> None:
        while client.sip is not None:  # RFC 5626 CRLF keep-alives for NATs on the way
            await asyncio.sleep(SIP_KEEPALIVE_SECONDS)
            with contextlib.suppress(Exception):
                client.sip.send(b"\r\n\r\n")

    consumer = asyncio.create_task(consume())
    pinger = asyncio.create_task(keepalive())
    stopper = asyncio.create_task(context.stop.wait())
    waiters: set[asyncio.Future[Any]] = {consumer, stopper}
    timer: asyncio.Task[None] | None = None
    if args.duration is not None:
        timer = asyncio.create_task(asyncio.sleep(args.duration))
        waiters.add(timer)
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if consumer.done() and not consumer.cancelled():
            consumer.result()  # a failure of the channel itself
            reason = client.channel.end_reason if client.channel else None
            if reason == "unauthorized":
                raise CommandError(EXIT_ERROR, "the data channel was closed: the cookie is "
                                   "no longer accepted")
    finally:
        for item_id in downloads:
            out.line(f"not saved {show(names.get(item_id, item_id))}: left before its "
                     "download finished")
        for task in (consumer, pinger, stopper, timer, *downloads.values()):
            if task is not None and not task.done():
                task.cancel()
        pending = [t for t in (consumer, pinger, stopper, timer, *downloads.values()) if t]
        await asyncio.gather(*pending, return_exceptions=True)
    return context.exit_code()


# -- share --------------------------------------------------------------------------------------

def run_share(args: argparse.Namespace) -> int:
    files: list[Path] = args.files

    def check() -> None:
        for path in files:
            if not path.is_file():
                raise CommandError(EXIT_USAGE, f"not a readable file: {path}")
            if not os.access(path, os.R_OK):
                raise CommandError(EXIT_USAGE, f"not readable: {path}")

    return _execute(args, _share_body, check=check)


async def _share_body(context: Context) -> int:
    files: list[Path] = context.args.files
    live = sys.stdout.isatty()
    for path in files:
        item = await _until(_share_one(context, path, live), context.stop)
        if item is None:
            return EXIT_INTERRUPTED
        context.out.line(f"shared {show(path.name)} {human_size(item.get('size'))} -> "
                         f"item {show(item.get('id'))} sha256 {show(item.get('sha256', '?'))}")
    return EXIT_OK


async def _share_one(context: Context, path: Path, live: bool) -> dict[str, Any]:
    if not live:
        return await context.client.share(path)
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(file=sys.stdout)
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
               TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(show(path.name), total=path.stat().st_size)

        def update(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        context.out.console = progress.console
        try:
            return await context.client.share(path, progress=update)
        finally:
            context.out.console = None


# -- fetch --------------------------------------------------------------------------------------

def run_fetch(args: argparse.Namespace) -> int:
    save: Path = args.save
    return _execute(args, _fetch_body, check=lambda: _prepare_dir(save))


async def _fetch_body(context: Context) -> int:
    args, client, out = context.args, context.client, context.out
    items = await _until(client.list_items(), context.stop)
    if items is None:
        return EXIT_INTERRUPTED
    if args.item is not None:
        items = [i for i in items if str(i.get("id")) == args.item]
        if not items:
            raise CommandError(EXIT_ERROR, f"no item {show(args.item)} in conference "
                               f"{show(context.conference)}")
    if not items:
        out.line("no items")
        return EXIT_OK
    limit = asyncio.Semaphore(MAX_PARALLEL_DOWNLOADS)

    async def one(item: dict[str, Any]) -> None:
        async with limit:
            try:
                result = await client.fetch_item(item, args.save,
                                                 server_decrypt=args.server_decrypt)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the other items still come
                context.fail(exc)
                return
        out.line(_saved_line(result, bool(item.get("sha256"))))

    done = await _until(asyncio.gather(*(one(i) for i in items)), context.stop)
    if done is None:
        return EXIT_INTERRUPTED
    return context.exit_code()
