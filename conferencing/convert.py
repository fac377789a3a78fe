"""Deck conversion (docs/protocol.md §9.4): a bounded queue and LibreOffice worker processes.

A deck committed by an upload is offered here (`submit`); `wcs.convert_concurrency` workers
take them in order. Each conversion:

- gets a private directory `DIR/var/convert/job-<pid>-<random>` (0700, under a 0700 root),
  the only place its plaintext ever is: the deck (decrypted from the share by the host,
  `conferencing.derived`), LibreOffice's fresh profile, its temp files and the PDF. The
  directory is removed whatever happens: success, failure, timeout, crash, cancellation.
  A WCS that died (SIGKILL) leaves one behind; the next start removes every directory
  whose process is gone (`sweep`);
- runs `soffice` (conferencing/soffice.py) in its own session, without network and in a
  PID namespace of its own (`unshare`), under RLIMIT_AS `wcs.convert_memory_bytes`, no
  core dumps, files no larger than an item may be, an environment of its own, and
  `PR_SET_PDEATHSIG`: a WCS that dies takes `unshare`, and with it the whole namespace;
- is killed (its process group, SIGKILL) after `wcs.convert_timeout_seconds`, or when the
  WCS stops (`stop`).

The queue holds `wcs.convert_queue_length` decks beyond those a worker is taking: one more
is refused at once, and reported like every failure, as `item.conversion` (the host's
`report_failure`). Where neither `unshare -n` (root) nor `unshare -rn` (a user namespace)
works, conversion is unavailable (logged once at start) unless `wcs.convert_allow_network`
lets LibreOffice run with the host's network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import secrets
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from webconf.deploy.config import WcsSection
from webconf.deploy.lifetime import die_with_parent

from . import soffice
from .metrics import Metrics
from .soffice import DeckKind, Job, SandboxMode

log = logging.getLogger("webconf.wcs.convert")
PROBE_SECONDS = 10.0
"""How long the start-up checks of `unshare` may take."""
KILL_WAIT_SECONDS = 5.0
"""After SIGKILL, how long we wait for the process to be reaped."""
REPORT_SECONDS = 1.0
"""At stop, how long reporting the interrupted conversions may take in all."""
STALE_SECONDS = 86400.0
"""A job directory this old is removed at start even if its process id is alive again."""
_JOB_RE = re.compile(r"^job-(\d+)-[0-9a-f]+$")


@dataclass(frozen=True)
class DeckRequest:
    """A committed deck to convert: which item, of which kind, and its PDF's name."""

    conference_id: str
    item_id: str
    kind: DeckKind
    pdf_name: str


class ConversionRefused(Exception):
    """The PDF was made but not stored; `reason` is one of soffice.py's reasons."""

    def __init__(self, reason: str, outcome: str = "refused") -> None:
        super().__init__(reason)
        self.reason = reason
        self.outcome = outcome


class DeckHost(Protocol):
    """What a conversion needs of the service (conferencing/derived.py)."""

    async def write_original(self, request: DeckRequest, path: Path) -> bool:
        """Write the deck's verified plaintext to `path` (a new file); False when the
        deck is gone (deleted, or its conference ended and shredded)."""

    async def share_pdf(self, request: DeckRequest, pdf: Path) -> bool:
        """Encrypt, store and announce the PDF as the deck's derived item; False when the
        deck or its conference went meanwhile; `ConversionRefused` when it cannot be
        stored."""

    async def report_failure(self, request: DeckRequest, reason: str) -> None:
        """Announce `item.conversion` failed with `reason` to the deck's conference."""


@dataclass
class Converter:
    """The queue and its workers; `start` and `stop` with the WCS (conferencing/app.py)."""

    wcs: WcsSection
    root: Path
    """Where job directories live (`DIR/var/convert`), never on the share."""
    metrics: Metrics
    host: DeckHost | None = None
    max_pdf_bytes: int = 0
    soffice_path: str | None = None
    unshare_path: str | None = None
    sandbox: SandboxMode | None = None
    """None: conversion is unavailable (`soffice` or a sandbox missing)."""
    queue: asyncio.Queue[DeckRequest] = field(default_factory=asyncio.Queue)
    workers: list[asyncio.Task[None]] = field(default_factory=list)
    idle: int = 0
    interrupted: list[DeckRequest] = field(default_factory=list)
    running: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    """The LibreOffice runs in progress, by deck item id."""
    cancelled: set[str] = field(default_factory=set)
    """Decks deleted while LibreOffice ran on them (`cancel`)."""

    @property
    def available(self) -> bool:
        return self.sandbox is not None and self.host is not None

    async def start(self) -> None:
        """Sweep a previous crash's job directories, find `soffice` and a sandbox, start
        the workers. Conversion being unavailable is logged once, here."""
        self.max_pdf_bytes = self.max_pdf_bytes or self.wcs.max_upload_bytes
        removed = await asyncio.to_thread(sweep, self.root)
        if removed:
            log.info(json.dumps({"event": "convert.sweep", "removed": removed}))
        if not self.wcs.convert_decks:
            return
        self.soffice_path = shutil.which(self.wcs.convert_soffice)
        if self.soffice_path is None:
            log.warning(json.dumps({"event": "convert.unavailable", "reason":
                                    f"{self.wcs.convert_soffice} not found"}))
            return
        self.unshare_path = shutil.which("unshare")
        self.sandbox = await probe_sandbox(self.unshare_path, self.wcs.convert_allow_network)
        if self.sandbox is None:
            log.warning(json.dumps({"event": "convert.unavailable", "reason":
                                    "no network namespace (unshare -n / -rn) and "
                                    "wcs.convert_allow_network is off"}))
            return
        if self.sandbox == "none":
            log.warning(json.dumps({"event": "convert.no_network_isolation", "reason":
                                    "no network namespace; wcs.convert_allow_network is on"}))
        self.workers = [asyncio.create_task(self._work(), name=f"wcs-convert-{n}")
                        for n in range(self.wcs.convert_concurrency)]

    async def submit(self, request: DeckRequest) -> None:
        """Queue a committed deck, or report at once why it will not be converted."""
        if not self.wcs.convert_decks:
            return
        if not self.available or not self.workers:
            self.metrics.conversions.labels("unavailable").inc()
            await self._report(request, soffice.UNAVAILABLE)
            return
        # Room: the waiting places, plus the workers about to take a deck.
        if self.queue.qsize() >= self.wcs.convert_queue_length + self.idle:
            self.metrics.conversions.labels("queue_full").inc()
            await self._report(request, soffice.QUEUE_FULL)
            return
        self.queue.put_nowait(request)

    def cancel(self, item_id: str) -> None:
        """The deck was deleted: kill its conversion if one runs here (nothing reported;
        one queued, or running on another node, finds the deck gone and stores nothing)."""
        proc = self.running.get(item_id)
        if proc is not None and proc.returncode is None:
            self.cancelled.add(item_id)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """Kill the conversions in progress (their directories removed), then report
        them and every queued deck as interrupted (bounded)."""
        for task in self.workers:
            task.cancel()
        for task in self.workers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.workers.clear()
        pending = self.interrupted
        self.interrupted = []
        while not self.queue.empty():
            pending.append(self.queue.get_nowait())
        if not pending:
            return
        self.metrics.conversions.labels("interrupted").inc(len(pending))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REPORT_SECONDS):
                for request in pending:
                    await self._report(request, soffice.INTERRUPTED)

    # -- one worker ---------------------------------------------------------------------
    async def _work(self) -> None:
        while True:
            self.idle += 1
            try:
                request = await self.queue.get()
            finally:
                self.idle -= 1
            try:
                await self._convert(request)
            except asyncio.CancelledError:
                self.interrupted.append(request)
                raise
            except Exception as exc:  # a bug or a store outage: the worker goes on
                log.exception(json.dumps({"event": "convert.error", "item": request.item_id,
                                          "error": type(exc).__name__}))
                self.metrics.conversions.labels("error").inc()
                await self._report(request, soffice.INTERNAL)

    async def _convert(self, request: DeckRequest) -> None:
        assert self.host is not None
        directory = await asyncio.to_thread(make_job_dir, self.root)
        job = Job(directory, request.kind)
        started = time.monotonic()
        try:
            outcome, reason = await self._convert_in(job, request)
        except ConversionRefused as exc:
            outcome, reason = exc.outcome, exc.reason
        finally:
            await remove_job_dir(directory)
        self.metrics.conversions.labels(outcome).inc()
        log.info(json.dumps({"event": "convert.done", "item": request.item_id,
                             "outcome": outcome,
                             "seconds": round(time.monotonic() - started, 3)}))
        if reason is not None:
            await self._report(request, reason)

    async def _convert_in(self, job: Job, request: DeckRequest) -> tuple[str, str | None]:
        """Plaintext in, LibreOffice, PDF out, within the job's directory: (outcome,
        reason to report or None)."""
        assert self.host is not None
        if not await self.host.write_original(request, job.source):
            return "dropped", None
        job.outdir.mkdir(mode=0o700)
        started = time.monotonic()
        try:
            outcome, reason = await self._run(job, request.item_id)
        finally:
            cancelled = request.item_id in self.cancelled
            self.cancelled.discard(request.item_id)
        self.metrics.conversion_seconds.observe(time.monotonic() - started)
        if cancelled:
            return "dropped", None
        if reason is not None:
            return outcome, reason
        stored = await self.host.share_pdf(request, job.pdf)
        return ("converted" if stored else "dropped"), None

    async def _run(self, job: Job, item_id: str) -> tuple[str, str | None]:
        """Run LibreOffice on `job`: ("ok", None) with a PDF in place, else
        (outcome, reason)."""
        assert self.soffice_path is not None and self.sandbox is not None
        argv = soffice.command(self.soffice_path, job, self.sandbox,
                               self.unshare_path or "unshare")
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, cwd=job.directory, env=soffice.environment(job),
            start_new_session=True,
            preexec_fn=limits(self.wcs.convert_memory_bytes, self.max_pdf_bytes + 1))
        self.running[item_id] = proc
        try:
            async with asyncio.timeout(self.wcs.convert_timeout_seconds):
                returncode = await proc.wait()
        except TimeoutError:
            return "timeout", soffice.timed_out(self.wcs.convert_timeout_seconds)
        finally:
            await kill(proc)
            self.running.pop(item_id, None)
        return await asyncio.to_thread(check_pdf, job, returncode, self.max_pdf_bytes)

    async def _report(self, request: DeckRequest, reason: str) -> None:
        """Tell the conference; a failure to tell it (a store outage) is only logged."""
        log.info(json.dumps({"event": "convert.failed", "item": request.item_id,
                             "reason": reason}))
        if self.host is None:
            return
        try:
            await self.host.report_failure(request, reason)
        except Exception as exc:
            log.warning(json.dumps({"event": "convert.report_failed",
                                    "item": request.item_id, "error": type(exc).__name__}))


def check_pdf(job: Job, returncode: int, max_bytes: int) -> tuple[str, str | None]:
    """What LibreOffice's run left: a PDF within bounds, or why not."""
    try:
        size = job.pdf.stat().st_size
        with job.pdf.open("rb") as f:
            magic = f.read(5)
    except OSError:
        size, magic = 0, b""
    if size and magic == b"%PDF-" and returncode == 0:
        if size > max_bytes:
            return "refused", soffice.TOO_LARGE
        return "ok", None
    return ("unreadable" if returncode == 0 else "crashed"), soffice.exit_reason(returncode)


def limits(memory_bytes: int, file_bytes: int) -> Callable[[], None]:
    """The converter's `preexec_fn` (between fork and exec, in the child): its rlimits,
    and death with the WCS (webconf/deploy/lifetime.py)."""
    die = die_with_parent(signal.SIGKILL)

    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no plaintext in a core file
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
        if die is not None:
            die()

    return preexec


async def kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the run's whole process group (LibreOffice's processes included; the PID
    namespace takes any that left it) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(KILL_WAIT_SECONDS):
            await proc.wait()


async def probe_sandbox(unshare: str | None, allow_network: bool) -> SandboxMode | None:
    """The first sandbox that runs `true` here: root's network namespace, then a user
    namespace's; "none" only if the operator allows the network; else None."""
    if unshare is not None:
        for mode in ("root", "user"):
            argv = [*soffice.sandbox_prefix(mode, unshare), "true"]
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
                    start_new_session=True)
            except OSError:
                break
            try:
                async with asyncio.timeout(PROBE_SECONDS):
                    if await proc.wait() == 0:
                        return mode
            except TimeoutError:
                pass
            finally:
                await kill(proc)
    return "none" if allow_network else None


def make_job_dir(root: Path) -> Path:
    """A new private job directory, named after this process (for `sweep`)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    path = root / f"job-{os.getpid()}-{secrets.token_hex(8)}"
    path.mkdir(mode=0o700)
    return path


async def remove_job_dir(path: Path) -> None:
    """Remove a job directory and everything in it; retried, since a killed process's
    last writes may land while we remove."""
    for attempt in range(20):
        await asyncio.to_thread(_remove_tree, path)
        if not os.path.lexists(path):
            return
        await asyncio.sleep(0.05 * (attempt + 1))
    log.error(json.dumps({"event": "convert.cleanup_failed", "dir": path.name}))


def _remove_tree(path: Path) -> None:
    def writable(function: object, name: str, exc: object) -> None:
        # A directory LibreOffice left read-only: make it ours again and go on.
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(name), 0o700)
            if os.path.isdir(name) and not os.path.islink(name):
                os.chmod(name, 0o700)
                shutil.rmtree(name, ignore_errors=True)
            else:
                os.unlink(name)

    if os.path.lexists(path):
        shutil.rmtree(path, onerror=writable)


def sweep(root: Path) -> int:
    """Remove job directories whose process is gone (a crash's leftovers) or older than
    `STALE_SECONDS`, and anything else in `root`; returns how many."""
    if not root.is_dir():
        return 0
    removed = 0
    now = time.time()
    for entry in root.iterdir():
        m = _JOB_RE.match(entry.name)
        try:
            stale = now - entry.lstat().st_mtime > STALE_SECONDS
        except OSError:
            continue
        if m is not None and not stale and _alive(int(m.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            _remove_tree(entry)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed += 1
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
