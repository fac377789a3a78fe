"""The run itself: organizers join, participants join and open their channels, items are
shared and downloaded by everyone, then everyone leaves; errors are counted, never raised."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from webconf.stats import summary_ms

from ..meeting import MeetingClient, conference_domain
from ..sip import SipConnection, SipError
from ..wcs import client_ssl_context
from .errors import error_kind
from .plan import ItemSource, Plan, Target
from .procs import client_cpu, cpu_report, rss_report
from .report import Live

PAGE_TURN_GAP = 0.25
"""Seconds between page turns: within the presenter's rate (docs/protocol.md §9.1)."""


def present_deck(pages: int) -> bytes:
    """A PDF of `pages` blank slides, so the WCS counts its pages (§9.1)."""
    from io import BytesIO

    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=960, height=540)
    out = BytesIO()
    writer.write(out)
    return out.getvalue()


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


@dataclass
class _Turn:
    """One page turn: when the presenter sent it, when each listener heard of it."""

    started: float
    expected: int
    seen: dict[int, float] = field(default_factory=dict)
    complete: asyncio.Event = field(default_factory=asyncio.Event)


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


class LoadTest:
    def __init__(self, plan: Plan, target: Target, live: Live) -> None:
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
        self.turns: dict[tuple[int, str, int], _Turn] = {}
        """(conference, item, page) -> its page turn (docs/protocol.md §9.1)."""

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
            if self.plan.present_pages:
                await self._present_phase()
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
                if event.get("type") == "presentation.changed":
                    self._turn_seen(member, event)
                    continue
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

    def _turn_seen(self, member: _Member, event: dict[str, Any]) -> None:
        turn = self.turns.get((member.conference, str(event.get("item")),
                               int(event.get("page") or 0)))
        if turn is not None and member.index not in turn.seen:
            turn.seen[member.index] = time.perf_counter()
            if len(turn.seen) >= turn.expected:
                turn.complete.set()

    async def _present_phase(self) -> None:
        """Each organizer shares a PDF and turns its pages, one turn at a time, each when
        the previous one reached every listener (or timed out)."""
        listeners = Counter(m.conference for m in self.members if m.listening)
        active = [m for m, org in enumerate(self.organizers) if org is not None]
        deck = await asyncio.to_thread(present_deck, self.plan.present_pages)
        await asyncio.gather(*(self._present_conference(m, listeners[m], deck)
                               for m in active))

    async def _present_conference(self, m: int, listening: int, deck: bytes) -> None:
        organizer = self.organizers[m]
        assert organizer is not None and organizer.wcs is not None

        async def body() -> AsyncIterator[bytes]:
            yield deck

        try:
            item = await organizer.wcs.upload(body(), name=f"{self.prefix}{m}-deck.pdf",
                                              content_type="application/pdf", sha256=False,
                                              size=len(deck))
        except Exception as exc:  # noqa: BLE001
            self.error(exc, f"present share {self.target.conference_ids[m]}")
            return
        for page in range(1, self.plan.present_pages + 1):
            turn = self.turns[(m, str(item["id"]), page)] = _Turn(time.perf_counter(),
                                                                 listening)
            try:
                await organizer.set_page(str(item["id"]), page)
            except Exception as exc:  # noqa: BLE001
                self.error(exc, f"page turn {self.target.conference_ids[m]}")
                continue
            if listening:
                try:
                    await asyncio.wait_for(turn.complete.wait(), self.plan.timeout)
                except TimeoutError:
                    self.error_kind_only("timeout", "page turn",
                                         f"{listening - len(turn.seen)} attendees missed page "
                                         f"{page} for {self.plan.timeout:g} s")
            await asyncio.sleep(PAGE_TURN_GAP)

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
        if self.plan.present_pages:
            turns = [t - turn.started for turn in self.turns.values() for t in turn.seen.values()]
            report["present_latency_ms"] = summary_ms(turns)
            report["page_turns_seen"] = len(turns)
        if self.examples:
            report["error_examples"] = dict(sorted(self.examples.items()))
        return report
