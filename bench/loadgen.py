"""Meeting clients spread over several worker processes, driven from the benchmark process.

The fan-out and scale benchmarks need more participants than one Python event loop can
drive on one core, so each worker process holds a slice of them (`WorkerSpec`) and obeys
commands sent over a pipe (`Fleet.call(command, **args)` -> one reply per worker):

- `join`:    join every member of the slice (organizers first when asked to), SIP over TLS
             (one TLS connection per participant, or `sip_per_connection` dialogs sharing
             one), then open each one's WSS data channel; at most `join_concurrency`
             joins in flight per worker.
- `warm`:    one GET /items per member at once, so the shared HTTPS pool holds warm
             keep-alive connections (a participant that already talked to the WCS).
- `collect`: wait until every joined member downloaded, decrypted and verified one item
             (members react to `item.shared` on their channel by themselves) and return
             the wall-clock (`time.time()`) moments of the push arrival and of the verified
             end of download, so the driver can subtract its own t0 across processes.
- `turn`:    wait until every joined member heard a page turn (`presentation.changed` for
             an item and page, docs/protocol.md §9.1) and return the wall-clock moments.
- `status`:  how many SIP connections and data channels are still open.
- `leave`:   BYE for everyone (paced), then close the channels and connections.
- `stop`:    close everything and exit.

Each worker shares one aiohttp pool (no connection limit: the WSS channels hold theirs for
good) and one TLS context between its members, binds its sockets to its own loopback
address when given one (more source ports: 127.0.0.0/8 is all on `lo`), and raises its
RLIMIT_NOFILE soft limit to the hard limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import ssl
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp

from clients.download import DownloadError, ItemIntegrityError
from clients.meeting import FocusAddress, MeetingClient
from clients.sip import SipConnection, SipError
from clients.wcs import WcsError, client_ssl_context
from webconf.stats import summary_ms

from .common import rss_mib


def raise_nofile() -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit; return it.

    Children started afterwards inherit it, so calling this before starting the servers
    gives them the descriptors they need too (and they raise their own at start-up)."""
    from webconf.deploy.capacity import raise_nofile_limit

    return raise_nofile_limit()


def error_kind(exc: BaseException) -> str:
    """A short label for an error, for the error counts of a report."""
    if isinstance(exc, SipError):
        return f"sip-{exc.status}" if exc.status else f"sip-transport({exc.reason[:40]})"
    if isinstance(exc, ItemIntegrityError):
        return "integrity"
    if isinstance(exc, WcsError):
        return f"http-{exc.status}" if exc.status else f"network({exc.code})"
    if isinstance(exc, DownloadError):
        cause = exc.__cause__
        if isinstance(cause, WcsError):
            return f"download-http-{cause.status}" if cause.status else "download-network"
        return "download"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    if isinstance(exc, OSError | aiohttp.ClientError):
        return f"connection({type(exc).__name__})"
    return type(exc).__name__


@dataclass(frozen=True)
class Target:
    host: str
    sip_port: int
    ca: str
    """Path of the deployment's CA certificate."""
    password: str


@dataclass(frozen=True)
class Member:
    conference_uri: str
    address: str
    organizer: bool = False


@dataclass
class WorkerSpec:
    index: int
    target: Target
    members: list[Member]
    local_host: str | None = None
    """Source address for every socket of this worker (e.g. 127.0.0.3); None = default."""
    sip_per_connection: int = 1
    """Dialogs per SIP TLS connection; 1 = each participant has its own connection."""
    channels: bool = True
    download: bool = True
    """React to `item.shared` by downloading, decrypting and verifying the item."""
    join_concurrency: int = 100
    timeout: float = 60.0
    uvloop: bool = False
    """Run the worker's event loop on uvloop when it is installed (cheaper TLS reads)."""
    lean_ssl: bool = False
    """Client side only: share one TLS read buffer per event loop instead of 256 KiB per
    connection (see `webconf.deploy.capacity`), to fit thousands of connections."""


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max of `values` (seconds) in ms (`webconf.stats.summary_ms`); {} for none."""
    return summary_ms(values, with_max=True) if values else {}


# -- worker side ------------------------------------------------------------------------------

@dataclass(eq=False)
class _Participant:
    member: Member
    client: MeetingClient | None = None
    own_sip: SipConnection | None = None
    joined: bool = False
    consumer: asyncio.Task[None] | None = None
    notified: dict[str, float] = field(default_factory=dict)
    done: dict[str, float] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    channel_end: str | None = None
    turns: dict[tuple[str, int], float] = field(default_factory=dict)
    """(item, page) -> when its `presentation.changed` arrived."""


class _Worker:
    def __init__(self, spec: WorkerSpec, conn: Connection) -> None:
        self.spec = spec
        self.conn = conn
        self.people = [_Participant(m) for m in spec.members]
        self.shared_sip: list[SipConnection] = []
        self.finished: Counter[str] = Counter()
        self.turned: Counter[tuple[str, int]] = Counter()
        self.progress = asyncio.Event()
        self.ssl = client_ssl_context(spec.target.ca)
        local = (spec.local_host, 0) if spec.local_host else None
        self.local_addr = local
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl, limit=0, local_addr=local,
                                           keepalive_timeout=600),
            timeout=aiohttp.ClientTimeout(total=None, connect=spec.timeout,
                                          sock_read=spec.timeout))

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    command, args = await loop.run_in_executor(None, self.conn.recv)
                except (EOFError, OSError):
                    return
                if command == "stop":
                    self.conn.send({"stopped": True})
                    return
                try:
                    reply = await getattr(self, f"cmd_{command}")(**args)
                except Exception as exc:  # noqa: BLE001 - reported to the driver
                    reply = {"fatal": f"{type(exc).__name__}: {exc}",
                             "trace": traceback.format_exc()}
                reply["worker"] = self.spec.index
                self.conn.send(reply)
        finally:
            await self.shutdown()

    # -- join ---------------------------------------------------------------------------
    async def _sip(self) -> SipConnection:
        t = self.spec.target
        return await SipConnection.open(t.host, t.sip_port, ssl_context=self.ssl,
                                        server_hostname=_domain(self.spec.members[0]),
                                        timeout=self.spec.timeout, local_addr=self.local_addr)

    async def cmd_join(self, organizers: bool | None = None) -> dict[str, Any]:
        """Join the members (only organizers / only the others / all when None)."""
        spec = self.spec
        todo = [p for p in self.people if not p.joined and (
            organizers is None or p.member.organizer == organizers)]
        gate = asyncio.Semaphore(spec.join_concurrency)
        errors: Counter[str] = Counter()
        latencies: list[float] = []
        per = max(1, spec.sip_per_connection)
        if per > 1:
            needed = -(-len(todo) // per)
            while len(self.shared_sip) < needed:
                self.shared_sip.append(await self._sip())
        started = time.perf_counter()

        async def one(i: int, p: _Participant) -> None:
            async with gate:
                t0 = time.perf_counter()
                try:
                    sip = self.shared_sip[i // per] if per > 1 else None
                    if sip is None:
                        sip = p.own_sip = await self._sip()
                    client = MeetingClient(
                        p.member.conference_uri, p.member.address, spec.target.password,
                        focus=FocusAddress(spec.target.host, spec.target.sip_port),
                        ssl_context=self.ssl, sip_connection=sip, http=self.http,
                        timeout=spec.timeout)
                    p.client = client
                    await client.join()
                    if spec.channels:
                        await client.open_channel()
                        p.consumer = asyncio.create_task(self._consume(p))
                    p.joined = True
                    latencies.append(time.perf_counter() - t0)
                except Exception as exc:  # noqa: BLE001 - counted
                    errors[error_kind(exc)] += 1

        await asyncio.gather(*(one(i, p) for i, p in enumerate(todo)))
        return {"joined": len(latencies), "attempted": len(todo), "errors": dict(errors),
                "seconds": time.perf_counter() - started, "join_ms": summary(latencies)}

    async def _consume(self, p: _Participant) -> None:
        """React to every `item.shared`: note the arrival, download, decrypt, verify."""
        assert p.client is not None and p.client.channel is not None
        try:
            async for event in p.client.channel.events():
                if event.get("type") == "presentation.changed":
                    key = (str(event.get("item")), int(event.get("page") or 0))
                    if key not in p.turns:
                        p.turns[key] = time.time()
                        self.turned[key] += 1
                        self.progress.set()
                    continue
                if event.get("type") != "item.shared":
                    continue
                item_id = str(event["item"]["id"])
                if item_id in p.notified:
                    continue
                p.notified[item_id] = time.time()
                if self.spec.download:
                    try:
                        await p.client.fetch(event, None)
                        p.done[item_id] = time.time()
                    except Exception as exc:  # noqa: BLE001 - counted
                        p.failed[item_id] = error_kind(exc)
                else:
                    p.done[item_id] = p.notified[item_id]
                self.finished[item_id] += 1
                self.progress.set()
        except Exception as exc:  # noqa: BLE001 - reported by `status`
            p.channel_end = error_kind(exc)
        else:
            p.channel_end = p.client.channel.end_reason or "ended"

    # -- measurements ----------------------------------------------------------------------
    async def cmd_warm(self) -> dict[str, Any]:
        errors: Counter[str] = Counter()
        started = time.perf_counter()

        async def one(p: _Participant) -> None:
            try:
                assert p.client is not None
                await p.client.list_items()
            except Exception as exc:  # noqa: BLE001 - counted
                errors[error_kind(exc)] += 1

        await asyncio.gather(*(one(p) for p in self.people if p.joined))
        return {"errors": dict(errors), "seconds": time.perf_counter() - started}

    async def cmd_collect(self, item_id: str, timeout: float) -> dict[str, Any]:
        joined = [p for p in self.people if p.joined]
        deadline = time.monotonic() + timeout
        while self.finished[item_id] < len(joined):
            self.progress.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), left)
        errors: Counter[str] = Counter()
        for p in joined:
            if item_id in p.failed:
                errors[p.failed[item_id]] += 1
            elif item_id not in p.done:
                errors["not-notified" if item_id not in p.notified else "unfinished"] += 1
        return {"notify": [p.notified[item_id] for p in joined if item_id in p.notified],
                "done": [p.done[item_id] for p in joined if item_id in p.done],
                "pairs": [(p.notified[item_id], p.done[item_id]) for p in joined
                          if item_id in p.done and item_id in p.notified],
                "errors": dict(errors), "participants": len(joined)}

    async def cmd_turn(self, item_id: str, page: int, timeout: float) -> dict[str, Any]:
        """When each joined member heard that `item_id` is shown at `page`."""
        key = (item_id, page)
        joined = [p for p in self.people if p.joined]
        deadline = time.monotonic() + timeout
        while self.turned[key] < len(joined):
            self.progress.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.progress.wait(), left)
        arrived = [p.turns[key] for p in joined if key in p.turns]
        missed = len(joined) - len(arrived)
        return {"arrived": arrived, "errors": {"not-turned": missed} if missed else {},
                "participants": len(joined)}

    async def cmd_status(self) -> dict[str, Any]:
        joined = [p for p in self.people if p.joined]
        channels = sum(1 for p in joined if p.client is not None and p.client.channel is not None
                       and p.channel_end is None and p.client.channel.end_reason is None)
        sips = {id(c): c for c in self.shared_sip}
        sips.update({id(p.own_sip): p.own_sip for p in joined if p.own_sip is not None})
        sip_open = sum(1 for c in sips.values()
                       if c._error is None and not c.writer.is_closing())
        reconnects = sum(p.client.channel.reconnects for p in joined
                         if p.client is not None and p.client.channel is not None)
        return {"joined": len(joined), "channels_open": channels, "sip_open": sip_open,
                "channel_reconnects": reconnects, "rss_mib": _own_rss_mib()}

    async def cmd_leave(self, concurrency: int = 100) -> dict[str, Any]:
        gate = asyncio.Semaphore(concurrency)
        statuses: Counter[str] = Counter()
        started = time.perf_counter()

        async def one(p: _Participant) -> None:
            async with gate:
                assert p.client is not None
                try:
                    status = await p.client.leave()
                except Exception as exc:  # noqa: BLE001 - counted
                    statuses[error_kind(exc)] += 1
                    return
                statuses[str(status)] += 1
                p.joined = False
                await self._close(p)

        await asyncio.gather(*(one(p) for p in self.people if p.joined))
        errors = {k: v for k, v in statuses.items() if k != "200"}
        return {"left": statuses.get("200", 0), "errors": errors,
                "seconds": time.perf_counter() - started}

    # -- teardown -------------------------------------------------------------------------
    async def _close(self, p: _Participant) -> None:
        if p.consumer is not None:
            p.consumer.cancel()
            with contextlib.suppress(BaseException):
                await p.consumer
            p.consumer = None
        if p.client is not None:
            with contextlib.suppress(Exception):
                await p.client.close()
        if p.own_sip is not None:
            with contextlib.suppress(Exception):
                await p.own_sip.close()
            p.own_sip = None

    async def shutdown(self) -> None:
        await asyncio.gather(*(self._close(p) for p in self.people), return_exceptions=True)
        for conn in self.shared_sip:
            with contextlib.suppress(Exception):
                await conn.close()
        with contextlib.suppress(Exception):
            await self.http.close()


def _domain(member: Member) -> str:
    from clients.meeting import conference_domain

    return conference_domain(member.conference_uri)


def _own_rss_mib() -> float:
    return round(rss_mib(os.getpid()), 1)


async def _worker_async(spec: WorkerSpec, conn: Connection) -> None:
    await _Worker(spec, conn).serve()


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    raise_nofile()
    if spec.lean_ssl:
        from webconf.deploy.capacity import install_lean_tls_buffers

        install_lean_tls_buffers()
    if spec.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        asyncio.run(_worker_async(spec, conn))
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


# -- driver side ------------------------------------------------------------------------------

class FleetError(RuntimeError):
    pass


class Fleet:
    """Worker processes (spawned, so nothing of the driver's state leaks into them)."""

    def __init__(self, specs: Sequence[WorkerSpec]) -> None:
        ctx = mp.get_context("spawn")
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        try:
            for spec in specs:
                ours, theirs = ctx.Pipe()
                proc = ctx.Process(target=worker_main, args=(spec, theirs), daemon=True,
                                   name=f"loadgen-{spec.index}")
                proc.start()
                theirs.close()
                self.pipes.append(ours)
                self.procs.append(proc)
        except BaseException:
            self.close()
            raise

    def call(self, command: str, wait: float = 600.0, **args: Any) -> list[dict[str, Any]]:
        """Send `command` to every worker and wait up to `wait` s for all replies (in
        worker order); `args` are the command's keyword arguments."""
        for pipe in self.pipes:
            pipe.send((command, args))
        deadline = time.monotonic() + wait
        replies = []
        for i, pipe in enumerate(self.pipes):
            if not pipe.poll(max(0.0, deadline - time.monotonic())):
                raise FleetError(f"worker {i} did not answer {command!r} in {wait:.0f} s")
            try:
                reply: dict[str, Any] = pipe.recv()
            except EOFError:
                raise FleetError(f"worker {i} died during {command!r}") from None
            if "fatal" in reply:
                raise FleetError(f"worker {i} failed {command!r}: {reply['fatal']}\n"
                                 f"{reply.get('trace', '')}")
            replies.append(reply)
        return replies

    async def acall(self, command: str, wait: float = 600.0,
                    **args: Any) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.call, command, wait, **args)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def close(self, timeout: float = 60.0) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.send(("stop", {}))
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for pipe in self.pipes:
            with contextlib.suppress(Exception):
                pipe.close()
        self.pipes.clear()
        self.procs.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def split(items: Sequence[Member], parts: int) -> list[list[Member]]:
    """Round-robin split, so every worker gets members of every conference."""
    return [list(items[i::parts]) for i in range(parts)]
