"""`webconf loadtest`: simulated meetings against a real deployment, with a latency report.

Target: by default a fresh deployment in a temp dir (`init_deployment` on free loopback ports,
users added to the tenant directory, `webconf serve` as a subprocess, always stopped and
removed at the end); `--dir DIR` an existing deployment whose servers already run (its
load-test users are added for the run and removed after); or `--focus HOST:PORT --ca FILE
--password-env VAR --user-pattern 'user{i}@domain'` a remote focus whose users exist.

Scenario, per conference m (tenant-wide conference id `LOAD<m>`): the organizer joins first
and creates the conference; the participants (spread over the conferences) join with at
most `--join-concurrency` INVITEs in flight and open their data channels; then every
organizer shares `--items` items of `--item-size` random bytes (generated in memory and
streamed with a precomputed SHA-256); each participant reacts to `item.shared` on its channel
by downloading, decrypting and verifying the item (nothing is written to disk); then everyone
leaves with BYE. Errors are counted by kind and never abort the run.

Measured: join latency (INVITE sent to 200 OK, Digest round trip included), joins/s,
share-to-all-decrypted latency per item (upload start to the moment the last participant of
its conference verified it) and per participant, download MB/s (verified plaintext bytes
over the wall time of the share phase), and the servers' peak RSS (VmHWM) when their
processes are visible in /proc. Exit status 0 only if no error occurred.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import aiohttp

from .download import DownloadError, ItemIntegrityError
from .meeting import FocusAddress, MeetingClient, conference_domain
from .sip import SipConnection, SipError
from .wcs import WcsError, client_ssl_context

DEFAULT_TENANT = "load.example"
BLOCK = 1024 * 1024
"""Generated item content: one random block per item, each copy stamped with its index."""
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
CONNECTION_MODES = ("per-join", "reused")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}

_LIVE_GROUPS: set[int] = set()
"""Process groups of the `webconf serve` we started and have not yet seen stop."""


class LoadtestError(Exception):
    """The load test could not be set up (the run itself never raises: it counts errors)."""


# -- small pure helpers -----------------------------------------------------------------------

def parse_size(text: str) -> int:
    """Bytes from `1MiB`, `256KiB`, `500k`, `2MB`, `1.5GiB`, `4096`.

    Binary units carry an `i` (KiB, MiB, GiB, TiB = powers of 1024); `k`, `M`, `G`, `T`
    with or without `B` are decimal (powers of 1000). Case does not matter.
    """
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 1MiB, 256KiB, 500k, 4096)")
    number, unit, binary, _ = m.groups()
    if binary and not unit:
        raise ValueError(f"not a size: {text!r}")
    base = 1024 if binary else 1000
    value = Fraction(number) * base ** _UNITS[unit.lower()]
    if value.denominator != 1:
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The p-th percentile (0-100) with linear interpolation between closest ranks
    (numpy's default); None for no values."""
    if not values:
        return None
    if not 0 <= p <= 100:
        raise ValueError("p must be between 0 and 100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * p / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99 in milliseconds (rounded to 0.1 ms), None when nothing was measured."""
    out: dict[str, float | None] = {}
    for p in (50, 95, 99):
        v = percentile(seconds, p)
        out[f"p{p}"] = None if v is None else round(v * 1000, 1)
    return out


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def error_kind(exc: BaseException) -> str:
    """A short name for an error: sip-401, sip-503, sip-connection, timeout, tls, integrity,
    http-404, network, connection, ... (the report counts errors by these)."""
    if isinstance(exc, SipError):
        if exc.status:
            return f"sip-{exc.status}"
        return "timeout" if any(isinstance(e, TimeoutError) for e in _chain(exc)) \
            else "sip-connection"
    if isinstance(exc, ItemIntegrityError):
        return "integrity"
    if isinstance(exc, DownloadError | WcsError):
        status = exc.status if isinstance(exc, WcsError) else 0
        for inner in _chain(exc):
            if isinstance(inner, WcsError) and inner.status:
                status = inner.status
        if status:
            return f"http-{status}"
    for inner in _chain(exc):
        if isinstance(inner, ssl.SSLError | aiohttp.ClientSSLError):
            return "tls"
    for inner in _chain(exc):
        if isinstance(inner, TimeoutError):
            return "timeout"
    if isinstance(exc, DownloadError | WcsError):
        return "network"
    if isinstance(exc, ConnectionError | OSError | aiohttp.ClientError):
        return "connection"
    return type(exc).__name__.lower()


def _fmt_size(n: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


# -- generated items ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ItemSource:
    """`size` pseudo-random bytes held as one random block (at most 1 MiB); copy i of the
    block starts with i as 8 bytes, so no two blocks of an item are equal."""

    size: int
    block: bytes
    sha256: str

    @classmethod
    def generate(cls, size: int) -> ItemSource:
        block = os.urandom(min(size, BLOCK))
        digest = hashlib.sha256()
        for chunk in _chunks(block, size):
            digest.update(chunk)
        return cls(size, block, digest.hexdigest())

    def chunks(self) -> Iterator[bytes]:
        return _chunks(self.block, self.size)

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks():
            yield chunk


def _chunks(block: bytes, size: int) -> Iterator[bytes]:
    left, index = size, 0
    while left > 0:
        n = min(len(block), left)
        stamp = index.to_bytes(8, "big")
        yield (stamp + block[8:n])[:n] if n > 8 else block[:n]
        left -= n
        index += 1


# -- server processes and their memory --------------------------------------------------------

def _component(args: list[str]) -> tuple[str, int] | None:
    """("wcs"|"focus", index of the module argument) for `python -m conferencing|focus ...`."""
    for i, arg in enumerate(args[:-1]):
        if arg == "-m":
            module = args[i + 1]
            if module == "conferencing":
                return "wcs", i + 1
            if module == "focus":
                return "focus", i + 1
            return None
    return None


def find_server_pids(base_dir: Path) -> dict[str, list[int]]:
    """PIDs of the WCS and focus processes serving `base_dir`, from /proc cmdlines."""
    base = base_dir.expanduser().resolve()
    found: dict[str, list[int]] = {"wcs": [], "focus": []}
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return found
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        comp = _component(args)
        if comp is None:
            continue
        kind, index = comp
        for arg in args[index + 1:]:
            path = Path(arg)
            if not path.is_absolute():
                try:
                    path = Path(os.readlink(entry / "cwd")) / path
                except OSError:
                    continue
            if path.resolve() == base:
                found[kind].append(int(entry.name))
                break
    return found


def peak_rss_mib(pid: int) -> float | None:
    """VmHWM (peak resident set) of a process in MiB, None if unreadable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far, None if unreadable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def rss_report(pids: dict[str, list[int]] | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {"wcs": None, "focus": None, "total": None}
    if not pids:
        return out
    total = 0.0
    for kind in ("wcs", "focus"):
        values = [v for v in (peak_rss_mib(p) for p in pids.get(kind, [])) if v is not None]
        if values:
            out[kind] = round(sum(values), 1)
            total += sum(values)
    if out["wcs"] is not None or out["focus"] is not None:
        out["total"] = round(total, 1)
    return out


def client_cpu() -> float:
    times = os.times()
    return times.user + times.system


def cpu_report(pids: dict[str, list[int]] | None, client_since: float = 0.0
               ) -> dict[str, float | None]:
    """CPU seconds of the server processes (since they started) and of this process (since
    `client_since`, a `client_cpu()` reading)."""
    out: dict[str, float | None] = {"wcs": None, "focus": None}
    for kind in ("wcs", "focus"):
        values = [v for v in (cpu_seconds(p) for p in (pids or {}).get(kind, []))
                  if v is not None]
        if values:
            out[kind] = round(sum(values), 2)
    times = os.times()
    out["client"] = round(times.user + times.system - client_since, 2)
    return out


class _Serve:
    """`webconf serve DIR` as a subprocess in its own process group."""

    def __init__(self, base_dir: Path, env: dict[str, str], log_path: Path) -> None:
        self.base_dir = base_dir
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "webconf", "serve", str(self.base_dir),
                stdout=asyncio.subprocess.PIPE, stderr=log_fd,
                stdin=asyncio.subprocess.DEVNULL, env=self.env, start_new_session=True)
        finally:
            os.close(log_fd)
        _LIVE_GROUPS.add(self.proc.pid)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = await asyncio.wait_for(self.proc.stdout.readline(), max(remaining, 0.01))
            except TimeoutError:
                raise LoadtestError("webconf serve did not become ready in "
                                    f"{READY_TIMEOUT:.0f} s") from None
            if not line:
                await self.proc.wait()
                raise LoadtestError(f"webconf serve exited ({self.proc.returncode}) before it "
                                    f"was ready: {self._log_tail()}")
            if line.startswith(b"webconf ready"):
                break
        self._drain = asyncio.create_task(self._read_rest())

    async def _read_rest(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while await self.proc.stdout.read(65536):
            pass

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-800:]
        except OSError:
            return "(no log)"

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        # The supervisor stops its children; anything of its group still alive is a straggler.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _LIVE_GROUPS.discard(proc.pid)
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain


def _kill_leftover_groups() -> None:
    """Last resort (interrupt, crash): SIGKILL the serve process groups we started."""
    for pgid in list(_LIVE_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _LIVE_GROUPS.discard(pgid)


# -- targets ----------------------------------------------------------------------------------

@dataclass
class Target:
    description: str
    focus: FocusAddress
    ca: Path
    password: str
    organizers: list[str]
    """One per conference: the conference's organizer (joins first)."""
    participants: list[str]
    conference_ids: list[str]
    pids: Callable[[], dict[str, list[int]] | None] = lambda: None

    def conference_uri(self, m: int) -> str:
        user, _, domain = self.organizers[m].partition("@")
        return f"sip:{user}@{domain};gruu;opaque=app:conf:focus:id:{self.conference_ids[m]}"


@dataclass(frozen=True)
class Plan:
    participants: int = 20
    conferences: int = 2
    items: int = 2
    item_size: int = BLOCK
    concurrency: int = 10
    connection: str = "per-join"
    timeout: float = 60.0


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


@contextlib.asynccontextmanager
async def own_deployment(plan: Plan, tenant: str, say: Callable[[str], None]
                         ) -> AsyncIterator[Target]:
    """A fresh deployment in a temp dir with M organizers and N users; always cleaned up."""
    from focus.directory import Directory
    from webconf.deploy.init import DeployError, init_deployment

    tmp = Path(tempfile.mkdtemp(prefix="webconf-loadtest-"))
    serve: _Serve | None = None
    try:
        sip_port, https_port, internal_port = _free_ports(3)
        try:
            cfg = await asyncio.to_thread(
                init_deployment, tmp / "dep", sip_port=sip_port, https_port=https_port,
                internal_port=internal_port, tenants=[tenant])
        except DeployError as exc:
            raise LoadtestError(f"cannot create the deployment: {exc}") from None
        password = secrets.token_urlsafe(16)
        organizers = [f"org{m}@{tenant}" for m in range(plan.conferences)]
        participants = [f"user{i}@{tenant}" for i in range(plan.participants)]
        say(f"adding {len(organizers) + len(participants)} users to {tenant}")
        directory = await Directory.open(cfg.store_url)
        try:
            for address in organizers + participants:
                await directory.add_user(address, password)
        finally:
            await directory.close()
        env = {**os.environ,
               "WEBCONF_FOCUS_MAX_CONNECTIONS_PER_SOURCE": "1000000",
               "WEBCONF_FOCUS_MAX_CONNECTIONS": str(max(20_000, 4 * plan.participants)),
               "WEBCONF_WCS_MAX_CONNECTIONS": str(max(10_000, 4 * plan.participants)),
               "WEBCONF_WCS_MAX_UPLOAD_BYTES": str(max(2 * 1024**3, plan.item_size + 1)),
               "WEBCONF_WCS_SHUTDOWN_GRACE_SECONDS": "3"}
        say(f"starting webconf serve {cfg.base_dir}")
        serve = _Serve(cfg.base_dir, env, tmp / "serve.log")
        await serve.start()
        base = cfg.base_dir
        yield Target(description=f"fresh deployment ({cfg.public_host})",
                     focus=FocusAddress(cfg.public_host, cfg.focus.sip_port),
                     ca=cfg.certs_dir / "ca.pem", password=password, organizers=organizers,
                     participants=participants,
                     conference_ids=[f"LOAD{m}" for m in range(plan.conferences)],
                     pids=lambda: find_server_pids(base))
    finally:
        if serve is not None:
            await serve.stop()
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.asynccontextmanager
async def existing_deployment(plan: Plan, base_dir: Path, tenant: str | None,
                              say: Callable[[str], None]) -> AsyncIterator[Target]:
    """A deployment whose servers run already: add this run's users, remove them after."""
    import tomllib

    base = base_dir.expanduser().resolve()
    try:
        data = tomllib.loads((base / "webconf.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LoadtestError(f"cannot read {base / 'webconf.toml'}: {exc}") from None
    server, focus_cfg = data.get("server", {}), data.get("focus", {})
    host = str(server.get("public_host") or server.get("host") or "127.0.0.1")
    if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached on loopback
        host = "127.0.0.1"
    tenant = tenant or (data.get("tenants", {}).get("domains") or [DEFAULT_TENANT])[0]
    pids = find_server_pids(base)
    if not pids["wcs"] and not pids["focus"]:
        say(f"warning: no running server processes found for {base} (no RSS will be "
            f"reported); start them with `webconf serve {base}`")

    from focus.directory import Directory
    from webconf.deploy.config import ConfigError, load_config

    try:
        store_url = load_config(base).store_url
    except ConfigError as exc:
        raise LoadtestError(str(exc)) from None
    run = secrets.token_hex(3)
    password = secrets.token_urlsafe(16)
    organizers = [f"loadtest-org{m}@{tenant}" for m in range(plan.conferences)]
    participants = [f"loadtest-user{i}@{tenant}" for i in range(plan.participants)]
    addresses = organizers + participants
    say(f"adding {len(addresses)} load-test users to {tenant} in {base}")
    directory = await Directory.open(store_url)
    try:
        for address in addresses:
            await directory.add_user(address, password)
        yield Target(description=f"deployment {base}",
                     focus=FocusAddress(host, int(focus_cfg.get("sip_port", 5061))),
                     ca=base / "certs" / "ca.pem", password=password, organizers=organizers,
                     participants=participants,
                     conference_ids=[f"LOAD{m}-{run}" for m in range(plan.conferences)],
                     pids=lambda: find_server_pids(base))
    finally:
        with contextlib.suppress(Exception):
            for address in addresses:
                await directory.remove_user(address)
        await directory.close()


@contextlib.asynccontextmanager
async def remote_target(plan: Plan, focus: str, ca: Path, password: str, pattern: str,
                        organizer_pattern: str | None) -> AsyncIterator[Target]:
    """A remote focus with existing users: organizers from `organizer_pattern` (default: the
    first M addresses of `pattern`), participants from `pattern` after them."""
    def expand(pat: str, i: int) -> str:
        try:
            address = pat.format(i=i)
        except (KeyError, IndexError, ValueError) as exc:
            raise LoadtestError(f"bad user pattern {pat!r}: {exc}") from None
        if "@" not in address:
            raise LoadtestError(f"user pattern {pat!r} gives {address!r}, not user@domain")
        return address

    if "{i}" not in pattern:
        raise LoadtestError("--user-pattern needs an {i}, e.g. 'user{i}@contoso.example'")
    if organizer_pattern is not None:
        organizers = [expand(organizer_pattern, m) for m in range(plan.conferences)]
        participants = [expand(pattern, i) for i in range(plan.participants)]
    else:
        organizers = [expand(pattern, m) for m in range(plan.conferences)]
        participants = [expand(pattern, plan.conferences + i)
                        for i in range(plan.participants)]
    run = secrets.token_hex(3)
    yield Target(description=f"focus {focus}", focus=FocusAddress.parse(focus), ca=ca,
                 password=password, organizers=organizers, participants=participants,
                 conference_ids=[f"LOAD{m}-{run}" for m in range(plan.conferences)])


# -- the run ----------------------------------------------------------------------------------

@dataclass
class _ItemTrack:
    conference: int = -1
    started: float | None = None
    size: int = 0
    expected: int | None = None
    done: dict[int, float] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def check(self) -> None:
        if self.expected is not None and len(self.done) + len(self.failed) >= self.expected:
            self.complete.set()


@dataclass(eq=False)
class _Member:
    index: int
    conference: int
    address: str
    client: MeetingClient | None = None
    own_sip: SipConnection | None = None
    joined: bool = False
    listening: bool = False
    consumer: asyncio.Task[None] | None = None
    fetches: set[asyncio.Task[None]] = field(default_factory=set)


class _Live:
    """rich.progress on stderr (joins, items decrypted); a no-op when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._joins: Any = None
        self._items: Any = None

    def __enter__(self) -> _Live:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(None, None, None)
            self._progress = None

    def say(self, text: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"[dim]{text}[/]")
        elif self.enabled:
            print(text, file=sys.stderr)

    def start_joins(self, total: int) -> None:
        if self._progress is not None:
            self._joins = self._progress.add_task("joins", total=total)

    def joined(self) -> None:
        if self._progress is not None and self._joins is not None:
            self._progress.advance(self._joins)

    def start_items(self, total: int) -> None:
        if self._progress is not None:
            self._items = self._progress.add_task("items decrypted", total=total)

    def decrypted(self) -> None:
        if self._progress is not None and self._items is not None:
            self._progress.advance(self._items)


class LoadTest:
    def __init__(self, plan: Plan, target: Target, live: _Live) -> None:
        self.plan = plan
        self.target = target
        self.live = live
        self.ssl = client_ssl_context(target.ca)
        self.prefix = f"load-{secrets.token_hex(4)}-"
        self.errors: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.join_seconds: list[float] = []
        self.connect_seconds: list[float] = []
        self.upload_seconds: list[float] = []
        self.items: dict[str, _ItemTrack] = {}
        self.verified_bytes = 0
        self.last_progress = time.perf_counter()
        self.organizers: list[MeetingClient | None] = []
        self.members = [_Member(i, i % plan.conferences, address)
                        for i, address in enumerate(target.participants)]
        self.http: aiohttp.ClientSession | None = None
        self.shared_sips: list[SipConnection] = []
        self.channel_tasks: list[asyncio.Task[None]] = []
        self.phase: dict[str, float] = {}

    # -- bookkeeping
    def error(self, exc: BaseException, phase: str) -> None:
        kind = error_kind(exc)
        self.errors[kind] += 1
        self.examples.setdefault(kind, f"{phase}: {type(exc).__name__}: {exc}"[:300])

    def error_kind_only(self, kind: str, phase: str, message: str) -> None:
        self.errors[kind] += 1
        self.examples.setdefault(kind, f"{phase}: {message}"[:300])

    def _touch(self, _done: int = 0, _total: int | None = None) -> None:
        self.last_progress = time.perf_counter()

    def track(self, item_id: str) -> _ItemTrack:
        track = self.items.get(item_id)
        if track is None:
            track = self.items[item_id] = _ItemTrack()
        return track

    def _client(self, m: int, address: str, sip: SipConnection | None) -> MeetingClient:
        return MeetingClient(self.target.conference_uri(m), address, self.target.password,
                             focus=self.target.focus, ssl_context=self.ssl, sip_connection=sip,
                             http=self.http, timeout=self.plan.timeout)

    async def _open_sip(self, m: int) -> SipConnection:
        """A TLS connection to the focus, checking its name against conference m's domain."""
        domain = conference_domain(self.target.conference_uri(m))
        return await SipConnection.open(self.target.focus.host, self.target.focus.port,
                                        ssl_context=self.ssl, server_hostname=domain,
                                        timeout=self.plan.timeout)

    # -- phases
    async def run(self) -> dict[str, Any]:
        started, cpu0 = time.perf_counter(), client_cpu()
        connector = aiohttp.TCPConnector(ssl=self.ssl, limit=0, limit_per_host=0,
                                         ttl_dns_cache=300)
        self.http = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=self.plan.timeout,
                                          sock_read=self.plan.timeout))
        rss: dict[str, float | None] = {"wcs": None, "focus": None, "total": None}
        cpu: dict[str, float | None] = {}
        try:
            await self._organizers_join()
            await self._join_phase()
            await self._share_phase()
            await self._leave_phase()
            pids = self.target.pids()
            rss, cpu = rss_report(pids), cpu_report(pids, cpu0)
        finally:
            await self._close_all()
        return self._report(rss, cpu, time.perf_counter() - started)

    async def _organizers_join(self) -> None:
        async def one(m: int) -> MeetingClient | None:
            client = self._client(m, self.target.organizers[m], None)
            try:
                await asyncio.wait_for(client.join(), self.plan.timeout)
            except Exception as exc:  # noqa: BLE001 - counted; its conference then fails
                self.error(exc, f"organizer join {self.target.conference_ids[m]}")
                with contextlib.suppress(Exception):
                    await client.close()
                return None
            return client

        self.organizers = list(await asyncio.gather(
            *(one(m) for m in range(self.plan.conferences))))

    async def _join_phase(self) -> None:
        self.live.start_joins(len(self.members))
        queue = iter(self.members)
        channel_tasks = self.channel_tasks
        last_join = [time.perf_counter()]
        reused = self.plan.connection == "reused"

        async def worker() -> None:
            shared: dict[str, SipConnection] = {}  # reused mode: one per conference domain
            for member in queue:
                domain = conference_domain(self.target.conference_uri(member.conference))
                try:
                    if reused:
                        if domain not in shared:
                            shared[domain] = await self._open_sip(member.conference)
                            self.shared_sips.append(shared[domain])
                        sip = shared[domain]
                    else:
                        t0 = time.perf_counter()
                        sip = member.own_sip = await self._open_sip(member.conference)
                        self.connect_seconds.append(time.perf_counter() - t0)
                    member.client = self._client(member.conference, member.address, sip)
                    t0 = time.perf_counter()
                    await asyncio.wait_for(member.client.join(), self.plan.timeout)
                    t1 = time.perf_counter()
                    self.join_seconds.append(t1 - t0)
                    last_join[0] = t1
                    member.joined = True
                    channel_tasks.append(asyncio.create_task(self._open_channel(member)))
                except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                    self.error(exc, f"join {member.address}")
                    if reused and (isinstance(exc, SipError) and exc.status == 0
                                   or isinstance(exc, OSError)):
                        shared.pop(domain, None)  # a broken shared connection: open anew
                finally:
                    self.live.joined()

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(max(1, self.plan.concurrency))))
        self.phase["join"] = max(last_join[0] - t_start, 1e-9)
        await asyncio.gather(*channel_tasks)

    async def _open_channel(self, member: _Member) -> None:
        assert member.client is not None
        try:
            await asyncio.wait_for(member.client.open_channel(), self.plan.timeout)
        except Exception as exc:  # noqa: BLE001
            self.error(exc, f"channel {member.address}")
            return
        member.listening = True
        member.consumer = asyncio.create_task(self._consume(member))

    async def _consume(self, member: _Member) -> None:
        assert member.client is not None and member.client.channel is not None
        try:
            async for event in member.client.channel.events():
                if event.get("type") != "item.shared":
                    continue
                item = event.get("item")
                if not isinstance(item, dict) or not str(item.get("name", "")).startswith(
                        self.prefix):
                    continue
                task = asyncio.create_task(self._fetch(member, event))
                member.fetches.add(task)
                task.add_done_callback(member.fetches.discard)
        except Exception as exc:  # noqa: BLE001
            self.error(exc, f"channel {member.address}")

    async def _fetch(self, member: _Member, event: dict[str, Any]) -> None:
        assert member.client is not None
        track = self.track(str(event["item"]["id"]))
        try:
            result = await member.client.fetch(event, None, progress=self._touch)
        except Exception as exc:  # noqa: BLE001
            self.error(exc, f"fetch {member.address}")
            track.failed.add(member.index)
        else:
            track.done[member.index] = time.perf_counter()
            self.verified_bytes += result.size
            self.live.decrypted()
        self._touch()
        track.check()

    async def _share_phase(self) -> None:
        listeners = Counter(m.conference for m in self.members if m.listening)
        active = [m for m, org in enumerate(self.organizers) if org is not None]
        self.live.start_items(sum(listeners[m] for m in active) * self.plan.items)
        sources = {(m, k): await asyncio.to_thread(ItemSource.generate, self.plan.item_size)
                   for m in active for k in range(self.plan.items)}
        self._touch()
        t_start = time.perf_counter()
        await asyncio.gather(*(self._share_conference(m, listeners[m], sources)
                               for m in active))
        finish = [t for track in self.items.values() for t in track.done.values()]
        self.phase["share"] = max((max(finish) if finish else time.perf_counter()) - t_start,
                                  1e-9)

    async def _share_conference(self, m: int, listening: int,
                                sources: dict[tuple[int, int], ItemSource]) -> None:
        organizer = self.organizers[m]
        assert organizer is not None and organizer.wcs is not None
        tracks: list[_ItemTrack] = []
        for k in range(self.plan.items):
            source = sources[(m, k)]
            started = time.perf_counter()
            try:
                item = await organizer.wcs.upload(
                    source.stream(), name=f"{self.prefix}{m}-{k}.bin",
                    content_type="application/octet-stream", sha256=source.sha256,
                    size=source.size)
            except Exception as exc:  # noqa: BLE001
                self.error(exc, f"share {self.target.conference_ids[m]}")
                continue
            self.upload_seconds.append(time.perf_counter() - started)
            self._touch()
            track = self.track(str(item["id"]))
            track.conference, track.started, track.size = m, started, source.size
            track.expected = listening
            track.check()
            tracks.append(track)
        await self._await_items(tracks)

    async def _await_items(self, tracks: list[_ItemTrack]) -> None:
        """Wait for every item to be done by every listener; give up after `timeout`
        seconds without any progress (download bytes count as progress)."""
        while True:
            pending = [t for t in tracks if not t.complete.is_set()]
            if not pending:
                return
            remaining = self.last_progress + self.plan.timeout - time.perf_counter()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*(t.complete.wait() for t in pending)), remaining)
        for track in pending:
            missing = (track.expected or 0) - len(track.done) - len(track.failed)
            for _ in range(max(0, missing)):
                self.error_kind_only("timeout", "fetch",
                                     f"item not decrypted within {self.plan.timeout:g} s "
                                     "without progress")
            track.expected = len(track.done) + len(track.failed)
            track.complete.set()

    async def _leave_phase(self) -> None:
        t0 = time.perf_counter()
        gate = asyncio.Semaphore(max(1, self.plan.concurrency))

        async def leave(client: MeetingClient, who: str) -> None:
            async with gate:
                try:
                    status = await asyncio.wait_for(client.leave(), self.plan.timeout)
                except Exception as exc:  # noqa: BLE001
                    self.error(exc, f"leave {who}")
                    return
                if status != 200:
                    self.error_kind_only(f"sip-{status}" if status else "sip-connection",
                                         f"leave {who}", f"BYE answered {status}")

        await asyncio.gather(*(leave(m.client, m.address) for m in self.members
                               if m.joined and m.client is not None))
        await asyncio.gather(*(leave(org, self.target.organizers[m])
                               for m, org in enumerate(self.organizers) if org is not None))
        self.phase["leave"] = time.perf_counter() - t0

    async def _close_all(self) -> None:
        tasks: list[asyncio.Task[None]] = list(self.channel_tasks)
        for member in self.members:
            tasks.extend(member.fetches)
            if member.consumer is not None:
                tasks.append(member.consumer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

        async def close(client: MeetingClient | None, sip: SipConnection | None) -> None:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.close()
            if sip is not None:
                with contextlib.suppress(Exception):
                    await sip.close()

        await asyncio.gather(*(close(m.client, m.own_sip) for m in self.members),
                             *(close(org, None) for org in self.organizers),
                             *(close(None, sip) for sip in self.shared_sips))
        if self.http is not None:
            await self.http.close()

    # -- report
    def _report(self, rss: dict[str, float | None], cpu: dict[str, float | None],
                duration: float) -> dict[str, Any]:
        share_items: list[float] = []
        per_participant: list[float] = []
        for track in self.items.values():
            if track.started is None:
                continue
            per_participant.extend(t - track.started for t in track.done.values())
            if track.done and not track.failed and len(track.done) >= (track.expected or 0):
                share_items.append(max(track.done.values()) - track.started)
        joins_ok = len(self.join_seconds)
        share_wall = self.phase.get("share", 0.0)
        report: dict[str, Any] = {
            "target": self.target.description,
            "connection": self.plan.connection,
            "participants": self.plan.participants,
            "conferences": self.plan.conferences,
            "items": self.plan.items,
            "item_size": self.plan.item_size,
            "join_concurrency": self.plan.concurrency,
            "joins_ok": joins_ok,
            "join_latency_ms": summary_ms(self.join_seconds),
            "joins_per_s": round(joins_ok / self.phase["join"], 2)
            if joins_ok and "join" in self.phase else 0.0,
            "share_latency_ms": summary_ms(share_items),
            "participant_latency_ms": summary_ms(per_participant),
            "upload_latency_ms": summary_ms(self.upload_seconds),
            "downloads_verified": len(per_participant),
            "download_mb_s": round(self.verified_bytes / share_wall / 1e6, 2)
            if share_wall > 0 and self.verified_bytes else 0.0,
            "errors": dict(sorted(self.errors.items())),
            "error_count": sum(self.errors.values()),
            "rss_mib": rss,
            "cpu_s": cpu,
            "duration_s": round(duration, 2),
        }
        if self.connect_seconds:
            report["connect_latency_ms"] = summary_ms(self.connect_seconds)
        if self.examples:
            report["error_examples"] = dict(sorted(self.examples.items()))
        return report


# -- output -----------------------------------------------------------------------------------

def _pcts(d: dict[str, float | None]) -> str:
    if d.get("p50") is None:
        return "n/a"
    return " / ".join(f"{d[k]:.1f}" for k in ("p50", "p95", "p99"))


def _mib(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} MiB"


def render_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="webconf loadtest", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("target", report["target"]),
        ("participants / conferences", f"{report['participants']} / {report['conferences']}"),
        ("items per conference x size",
         f"{report['items']} x {_fmt_size(report['item_size'])}"),
        ("connection / join concurrency",
         f"{report['connection']} / {report['join_concurrency']}"),
        ("joins ok", f"{report['joins_ok']} of {report['participants']}"),
        ("join latency p50/p95/p99 ms", _pcts(report["join_latency_ms"])),
    ]
    if "connect_latency_ms" in report:
        rows.append(("TLS connect p50/p95/p99 ms", _pcts(report["connect_latency_ms"])))
    rows += [
        ("joins/s", f"{report['joins_per_s']:.1f}"),
        ("upload p50/p95/p99 ms", _pcts(report["upload_latency_ms"])),
        ("share-to-all-decrypted p50/p95/p99 ms", _pcts(report["share_latency_ms"])),
        ("share-to-participant p50/p95/p99 ms", _pcts(report["participant_latency_ms"])),
        ("downloads verified", str(report["downloads_verified"])),
        ("download MB/s", f"{report['download_mb_s']:.1f}"),
        ("errors", ", ".join(f"{k}: {v}" for k, v in report["errors"].items()) or "0"),
        ("peak RSS focus", _mib(report["rss_mib"]["focus"])),
        ("peak RSS WCS", _mib(report["rss_mib"]["wcs"])),
        ("peak RSS total", _mib(report["rss_mib"]["total"])),
        ("CPU s client / focus / WCS", " / ".join(
            "n/a" if report["cpu_s"].get(k) is None else f"{report['cpu_s'][k]:.1f}"
            for k in ("client", "focus", "wcs"))),
        ("duration", f"{report['duration_s']:.1f} s"),
    ]
    for metric, value in rows:
        table.add_row(metric, value)
    return table


# -- command line -----------------------------------------------------------------------------

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
    where = target.add_mutually_exclusive_group()
    where.add_argument("--dir", type=Path, metavar="DIR",
                       help="an existing deployment whose servers already run (`webconf serve "
                            "DIR`); load-test users are added for the run and removed after")
    where.add_argument("--focus", metavar="HOST:PORT",
                       help="a remote focus whose users exist; needs --ca, --password-env "
                            "and --user-pattern (no RSS then)")
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
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of the table (no live progress)")


def _plan(args: argparse.Namespace) -> Plan:
    if args.conferences > args.participants:
        raise LoadtestError("--conferences must not exceed --participants")
    if args.timeout <= 0:
        raise LoadtestError("--timeout must be positive")
    return Plan(participants=args.participants, conferences=args.conferences,
                items=args.items, item_size=args.item_size, concurrency=args.join_concurrency,
                connection=args.connection, timeout=args.timeout)


def _target(args: argparse.Namespace, plan: Plan, say: Callable[[str], None]
            ) -> contextlib.AbstractAsyncContextManager[Target]:
    remote_only = {"--ca": args.ca, "--password-env": args.password_env,
                   "--user-pattern": args.user_pattern,
                   "--organizer-pattern": args.organizer_pattern}
    if args.focus is None:
        given = [flag for flag, value in remote_only.items() if value is not None]
        if given:
            raise LoadtestError(f"{', '.join(given)} only go with --focus")
        if args.dir is not None:
            return existing_deployment(plan, args.dir, args.tenant, say)
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
    try:
        FocusAddress.parse(args.focus)
    except ValueError:
        raise LoadtestError(f"--focus {args.focus!r} is not HOST:PORT") from None
    if not args.ca.is_file():
        raise LoadtestError(f"--ca {args.ca}: no such file")
    return remote_target(plan, args.focus, args.ca, password, args.user_pattern,
                         args.organizer_pattern)


async def _main(args: argparse.Namespace, plan: Plan, live: _Live) -> dict[str, Any]:
    task = asyncio.current_task()
    if task is not None:  # SIGTERM unwinds like Ctrl-C: the servers we started are stopped
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    async with _target(args, plan, live.say) as target:
        live.say(f"{plan.participants} participants in {plan.conferences} conferences, "
                 f"{plan.items} x {_fmt_size(plan.item_size)} per conference, "
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
        with _Live(live_enabled) as live:
            report = asyncio.run(_main(args, plan, live))
    except LoadtestError as exc:
        print(f"webconf loadtest: {exc}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        print("webconf loadtest: terminated", file=sys.stderr)
        return 143
    finally:
        _kill_leftover_groups()
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
