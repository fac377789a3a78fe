"""`webconf demo`: a whole meeting on a fresh machine, verified byte for byte.

In a temp directory it runs the operator commands as real subprocesses (`webconf init`,
`webconf user add` for an organizer and N attendees, `webconf serve`), then plays the
meeting with `MeetingClient`s: the organizer joins over SIP/TLS and shares a generated
slide deck (one file of at least 20 MiB), the attendees join, receive the pushes on their
data channels, download, decrypt and save every item, and each saved file is compared with
the original. Then the organizer presents the deck's PDF (docs/protocol.md §9.1): it turns
every page, and each turn is checked to reach every attendee. Everyone leaves with BYE. A
short report follows; the exit status is 0 only if every check passed. Processes are always
stopped and the directory removed.

With `--keep` the meeting stays open afterwards, until Ctrl-C (SIGINT) or SIGTERM: the
organizer stays in and keeps presenting the deck, turning a page every few seconds, and the
demo prints the page's URL, a Chromium command line that trusts the demo's certificates,
and a login made for a newcomer (an attendee who is not in the script), so that a person
can join from a browser (docs/protocol.md §10) and watch the slides turn. The directory is
then kept too.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from webconf.deploy.local import (
    ServeNotReady,
    ServeProcess,
    UserCommandError,
    add_users,
    free_port,
)
from webconf.protocol import conference_uri

from .demodeck import slides_pdf
from .meeting import FocusAddress, MeetingClient

TENANT = "contoso.example"
CONFERENCE_ID = "DEMO1"
READY_TIMEOUT = 90.0
DECK_PAGES = 6
TURN_TIMEOUT = 10.0
GUEST = "guest@" + TENANT  # the newcomer's login with --keep: an attendee not in the script


class DemoFailure(Exception):
    """A step of the demo failed; the message says which and why."""


@dataclass
class Attendee:
    address: str
    client: MeetingClient
    save_dir: Path
    received: dict[str, Path] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "webconf", *args], input=stdin,
                          capture_output=True, text=True, timeout=120, check=False)


def _make_deck(folder: Path, big_mib: int) -> list[Path]:
    """A generated slide deck: a big 'video', a PDF-ish deck, notes, and an image."""
    folder.mkdir(parents=True)
    files = []
    big = folder / "all-hands-recording.mp4"
    with big.open("wb") as f:
        for _ in range(big_mib):
            f.write(secrets.token_bytes(1024 * 1024))
    files.append(big)
    deck = folder / "Q4 roadmap — slides.pdf"
    deck.write_bytes(_pdf(DECK_PAGES, secrets.token_bytes(3 * 1024 * 1024 + 17)))
    files.append(deck)
    notes = folder / "speaker-notes.md"
    notes.write_text("# Speaker notes\n\n" + "\n".join(
        f"- slide {i}: remember to breathe" for i in range(1, 41)) + "\n")
    files.append(notes)
    image = folder / "architecture.png"
    image.write_bytes(b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(700_000))
    files.append(image)
    return files


def _pdf(pages: int, attachment: bytes) -> bytes:
    """A real PDF of `pages` drawn slides, carrying `attachment` as an embedded file."""
    return slides_pdf(pages, attachment)


async def _present(organizer: MeetingClient, attendees: list[Attendee], item: dict[str, Any],
                   out: Any, keep: bool = False) -> bool:
    """Turn every page of `item`; True when each turn reached every attendee's client."""
    pages = int(item.get("pages") or 0)
    if pages != DECK_PAGES:
        out.print(f"[red]the deck's page count is {pages or 'missing'}, not {DECK_PAGES}[/]")
        return False
    slowest = 0.0
    for page in range(1, pages + 1):
        started = time.perf_counter()
        await organizer.set_page(item["id"], page)
        deadline = started + TURN_TIMEOUT
        while any(a.client.view != (item["id"], page) for a in attendees):
            if time.perf_counter() > deadline:
                behind = [a.address for a in attendees if a.client.view != (item["id"], page)]
                out.print(f"[red]page {page} did not reach {', '.join(behind)}[/]")
                return False
            await asyncio.sleep(0.005)
        slowest = max(slowest, time.perf_counter() - started)
        out.print(f"   page {page}/{pages}: every attendee on page {page}")
        await asyncio.sleep(0.25)  # within the presenter's rate (§9.1: 5 turns a second)
    if not keep:
        await organizer.set_page(None)
    out.print(f"[bold]6.[/] presentation: {pages} pages turned, every attendee on the same "
              f"page after each turn (slowest {slowest * 1000:.0f} ms)")
    return True


def _spki_pin(cert_pem: Path) -> str:
    """The base64 SHA-256 of a certificate's public key: Chromium's
    --ignore-certificate-errors-spki-list trusts exactly these keys, nothing else."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    key = x509.load_pem_x509_certificate(cert_pem.read_bytes()).public_key()
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


async def _keep_open(work: Path, dep: Path, uri: str, organizer: MeetingClient,
                     deck: dict[str, Any], out: Any, turn_seconds: float) -> None:
    """Keep the meeting open for a newcomer's browser until SIGINT or SIGTERM: print how to
    join, and keep presenting the deck, a page every `turn_seconds`."""
    from webconf.deploy.config import load_config

    cfg = load_config(dep)
    url = f"{cfg.public_url}/"
    pins = ",".join(_spki_pin(cfg.certs_dir / name) for name in ("wcs.pem", "focus.pem"))
    profile = work / "chromium-profile"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    out.print("[bold]8.[/] the meeting stays open for a browser; Ctrl-C ends it")
    lines = [  # plain lines (no wrapping, no markup): a script may read them
        f"   url: {url}",
        f"   user: {GUEST}",
        f"   password: {(work / 'guest-password').read_text().strip()}",
        f"   conference: {uri}",
        f"   ca: {cfg.certs_dir / 'ca.pem'}",
        f"   chromium: chromium --user-data-dir={profile} "
        f"--ignore-certificate-errors-spki-list={pins} '{url}'",
        f"   (or have your browser trust {cfg.certs_dir / 'ca.pem'}: it signs the page's port "
        f"{cfg.wcs.https_port} and the focus's WebSocket port {cfg.focus.wss_port})",
        f"   alice presents {deck['name']}, turning a page every {turn_seconds:g} s",
    ]
    if not (Path(__file__).resolve().parent.parent / "web" / "dist" / "index.html").is_file():
        lines.append("   the web client is not built: run `make web` first")
    print("\n".join(lines), flush=True)
    pages = int(deck.get("pages") or 1)
    page = 1
    try:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), turn_seconds)
                break
            except TimeoutError:
                pass
            page = page % pages + 1
            try:
                await organizer.set_page(deck["id"], page)
            except Exception as exc:  # noqa: BLE001 - said, and the meeting stays open
                out.print(f"[red]page {page}: {exc}[/]")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    out.print("   Ctrl-C: the organizer leaves and the meeting is closed")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1024 * 1024):
            h.update(block)
    return h.hexdigest()


def _mib(n: int) -> str:
    return f"{n / 1048576:.1f} MiB" if n >= 1048576 else f"{n / 1024:.1f} KiB"


async def _receive(attendee: Attendee, expected: int, done: asyncio.Event) -> None:
    """Download every pushed item until `expected` have been saved."""
    async for event in attendee.client.events():
        if event.get("type") != "item.shared":
            continue
        started = time.perf_counter()
        try:
            result = await attendee.client.fetch(event, attendee.save_dir)
        except Exception as exc:  # noqa: BLE001 - recorded and reported, never hidden
            attendee.errors.append(f"{event['item'].get('name')}: {exc}")
            continue
        assert result.path is not None
        attendee.received[result.name] = result.path
        attendee.seconds[result.name] = time.perf_counter() - started
        if len(attendee.received) >= expected:
            done.set()  # and go on: the client keeps its presentation state from the events


def _prepare(work: Path, attendees_count: int, out: Any,
             keep: bool = False) -> tuple[Path, dict[str, str], int]:
    """Init the deployment and the tenant directory with the real operator commands."""
    dep = work / "deployment"
    sip_port, https_port, internal_port = free_port(), free_port(), free_port()
    step = _cli("init", str(dep), "--tenant", TENANT, "--sip-port", str(sip_port),
                "--https-port", str(https_port), "--internal-port", str(internal_port),
                "--wss-port", str(free_port()))
    if step.returncode:
        raise DemoFailure(f"webconf init failed: {step.stderr.strip()}")
    out.print(f"[bold]1.[/] deployment initialised in {dep}")
    people = {"alice@" + TENANT: secrets.token_urlsafe(12)}
    for name in ("bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan")[
            :attendees_count]:
        people[f"{name}@{TENANT}"] = secrets.token_urlsafe(12)
    logins = dict(people)
    if keep:  # the newcomer's login: not in the script, joins from a browser
        logins[GUEST] = secrets.token_urlsafe(12)
    try:  # one `webconf user add` for everyone, a password a line
        add_users(dep, logins.items())
    except UserCommandError as exc:
        raise DemoFailure(f"webconf user add failed: {exc.stderr.strip()}") from None
    out.print(f"[bold]2.[/] organizer alice and {attendees_count} attendees added to {TENANT}")
    if keep:
        (work / "guest-password").write_text(logins[GUEST] + "\n")
    return dep, people, sip_port


def _run(work: Path, attendees_count: int, big_mib: int, out: Any, keep: float = 0.0) -> bool:
    dep, people, sip_port = _prepare(work, attendees_count, out, bool(keep))
    serve = ServeProcess(dep)  # dies with us, even if we are killed
    try:
        try:
            serve.start(READY_TIMEOUT)
        except ServeNotReady as exc:
            raise DemoFailure(f"webconf serve exited before it was ready: "
                              f"{exc.stderr[-500:]}") from None
        out.print(f"[bold]3.[/] webconf serve is up: focus sips:127.0.0.1:{sip_port}")
        return asyncio.run(_meeting(work, dep, people, sip_port, big_mib, out, keep))
    finally:
        serve.stop()


async def _meeting(work: Path, dep: Path, people: dict[str, str], sip_port: int,
                   big_mib: int, out: Any, keep: float = 0.0) -> bool:
    from rich.table import Table

    uri = conference_uri(f"alice@{TENANT}", CONFERENCE_ID)
    focus = FocusAddress("127.0.0.1", sip_port)
    ca = dep / "certs" / "ca.pem"
    files = _make_deck(work / "slides", big_mib)
    (organizer_address, organizer_password), *rest = people.items()
    organizer = MeetingClient(uri, organizer_address, organizer_password, focus=focus,
                              ca_pem=ca)
    attendees = [Attendee(a, MeetingClient(uri, a, p, focus=focus, ca_pem=ca),
                          work / "received" / a.split("@")[0]) for a, p in rest]
    clients = [organizer] + [a.client for a in attendees]
    ok = True
    try:
        started = time.perf_counter()
        await organizer.join()
        join_times = {organizer_address: time.perf_counter() - started}
        tls_version = organizer.sip.tls_version if organizer.sip else "?"

        async def join(att: Attendee) -> None:
            t0 = time.perf_counter()
            await att.client.join()
            join_times[att.address] = time.perf_counter() - t0
            att.save_dir.mkdir(parents=True)
            await att.client.open_channel()

        await asyncio.gather(*(join(a) for a in attendees))
        out.print(f"[bold]4.[/] {len(clients)} participants joined over SIP ({tls_version}) "
                  f"and opened their data channels")
        done_events = []
        for att in attendees:
            done = asyncio.Event()
            done_events.append(done)
            att.task = asyncio.create_task(_receive(att, len(files), done))
        shared = []
        for path in files:
            t0 = time.perf_counter()
            item = await organizer.share(path)
            shared.append((path, item, time.perf_counter() - t0))
            out.print(f"   shared {path.name} ({_mib(path.stat().st_size)}) "
                      f"in {time.perf_counter() - t0:.2f} s")
        try:
            await asyncio.wait_for(asyncio.gather(*(d.wait() for d in done_events)), 120)
        except TimeoutError:
            ok = False
            out.print("[red]timed out waiting for attendees to receive every item[/]")
        out.print("[bold]5.[/] every attendee downloaded, decrypted and saved the items; "
                  "checking every byte")
        originals = {p.name: _sha256(p) for p in files}
        verified = 0
        for att in attendees:
            for name, digest in originals.items():
                saved = att.received.get(name)
                if saved is None or _sha256(saved) != digest:
                    ok = False
                    att.errors.append(f"{name}: missing or different")
                else:
                    verified += 1
        deck = next(item for path, item, _ in shared if path.suffix == ".pdf")
        if not await _present(organizer, attendees, deck, out, bool(keep)):
            ok = False
        leaving = [a.client for a in attendees] if keep else clients
        statuses = await asyncio.gather(*(c.leave() for c in leaving))
        if any(s != 200 for s in statuses):
            ok = False
            out.print(f"[red]BYE statuses: {statuses}[/]")
        out.print(f"[bold]7.[/] {'the attendees' if keep else 'everyone'} left "
                  f"(BYE -> {set(statuses)})")

        people_table = Table(title="Participants")
        for col in ("who", "role", "joined in", "items verified", "problems"):
            people_table.add_column(col)
        people_table.add_row(organizer_address, organizer.role,
                             f"{join_times[organizer_address] * 1000:.0f} ms", "-", "")
        for att in attendees:
            good = sum(1 for n, d in originals.items()
                       if n in att.received and n not in " ".join(att.errors))
            people_table.add_row(att.address, att.client.role,
                                 f"{join_times[att.address] * 1000:.0f} ms",
                                 f"{good}/{len(files)}", "; ".join(att.errors) or "")
        items_table = Table(title="Shared items")
        for col in ("item", "size", "upload", "slowest attendee download", "check"):
            items_table.add_column(col)
        for path, _item, seconds in shared:
            size = path.stat().st_size
            slowest = max((a.seconds.get(path.name, 0.0) for a in attendees), default=0.0)
            items_table.add_row(path.name, _mib(size),
                                f"{seconds:.2f} s ({size / max(seconds, 1e-9) / 1e6:.0f} MB/s)",
                                f"{slowest:.2f} s", "verified" if all(
                                    path.name in a.received for a in attendees) else "MISSING")
        out.print(people_table)
        out.print(items_table)
        expected = len(attendees) * len(files)
        if ok and verified == expected:
            out.print(f"[bold green]verified[/]: {verified}/{expected} downloads identical to "
                      f"the originals, byte for byte")
        else:
            ok = False
            out.print(f"[bold red]FAILED[/]: {verified}/{expected} downloads verified")
        if keep and ok:
            await _keep_open(work, dep, uri, organizer, deck, out, keep)
            await organizer.leave()
        return ok
    finally:
        for att in attendees:
            if att.task is not None:
                att.task.cancel()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--attendees", type=int, default=5, choices=range(1, 9),
                        metavar="N", help="attendees besides the organizer (1-8, default 5)")
    parser.add_argument("--big-mib", type=int, default=24,
                        help="size of the largest shared file in MiB (default 24, min 20)")
    parser.add_argument("--keep", action="store_true",
                        help="then keep the meeting open for a browser, presenting, until "
                             "Ctrl-C (and keep the temp directory)")
    parser.add_argument("--turn-seconds", type=float, default=5.0,
                        help="with --keep: seconds between the organizer's page turns")


def run_demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    out = Console(highlight=False, width=None if sys.stdout.isatty() else 110)
    work = Path(tempfile.mkdtemp(prefix="webconf-demo-"))
    try:
        ok = _run(work, args.attendees, max(20, args.big_mib), out,
                  max(1.0, args.turn_seconds) if args.keep else 0.0)
    except DemoFailure as exc:
        out.print(f"[bold red]demo failed:[/] {exc}")
        return 1
    except Exception as exc:  # noqa: BLE001 - the demo reports any failure with its reason
        out.print(f"[bold red]demo failed:[/] {type(exc).__name__}: {exc}")
        return 1
    finally:
        if args.keep:
            out.print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1
