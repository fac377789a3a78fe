"""Scale-out on PostgreSQL (issue 10, "Measure"): joins, cross-node push, revocation, workers.

    python -m bench --only scaleout       # the rows, with the other benchmarks' runner
    python -m bench.scaleout [--smoke]

One run, on a fresh PostgreSQL database (`webconf init DIR --database URL --share SHARE`,
bench/cluster.py) beside the embedded SQLite default (`common.stack`):

1. `joins/s PostgreSQL vs SQLite`: bench/sip_joins.py's full authenticated join (INVITE,
   401, INVITE with Digest, 200 with a cookie minted over mTLS, ACK, BYE, revocation) from
   its generator (`sip_gen.generate`, one TLS connection, 32 dialogs in flight), against
   one node on PostgreSQL and one SQLite deployment, rounds alternating. ours = PostgreSQL,
   baseline = SQLite.
2. `cross-node share-to-push p50/p99`: two nodes (`webconf serve DIR --node n1` and a copy
   on other ports, `--node n2`) on the one database and share. M attendees admitted over
   n1's internal API (mTLS, the focus-client certificate) each hold one data channel on n2
   and one on n1; the presenter uploads N small items, one at a time, to n1. Latency = from
   just before the upload request is sent (t0) to the `item.shared` frame, per channel;
   cross = n2's channels (n1 commits, NOTIFY wakes n2, n2 reads the log), baseline = n1's
   channels (same node) of the same uploads. Goal: cross p99 < 100 ms.
3. `revocation visible everywhere p99`: R attendees, each with a channel on n1 and one on
   n2; one at a time, DELETE the participant on n1's internal API and measure, from just
   before the DELETE is sent, until (a) each node refuses the cookie (GET items -> 401,
   polled every `poll_ms` over keep-alive) and (b) each node's channel gets `revoked` and is
   closed. ours = the latest of the four per participant, baseline = n1's own (same node).
   Goal: < 1 s.
4. `download MB/s, --workers 2`: n1 restarted as `webconf serve DIR --workers 2` (two WCS
   processes on the same ports, SO_REUSEPORT) against Debian's nginx with
   `worker_processes 2` serving the very blob file: bench/download.py's upload, nginx
   configuration, wrk runs and parsing; `wrk -t2 -c8`, rounds alternating. Goal >= 1.0x.

All latencies are measured in this one asyncio process (perf_counter); channel readers,
uploader and pollers share its loop, so they include this process's scheduling. Where the
time goes: every phase records CPU seconds of each server process, of our database's
PostgreSQL backends, of this process and of the whole machine (/proc): on 2 cores the load
generator competes with the servers (and with whatever else the machine runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.stats import summary_ms

from . import download, sip_joins
from .cluster import Cluster, Node, cluster
from .common import (
    cpu_seconds,
    machine,
    median,
    pg_backend_pids,
    pg_missing,
    pg_server,
    stack,
    standalone,
)
from .report import Row
from .sip_gen import Measurement, generate

TENANT = "contoso.example"
ORGANIZER = f"presenter@{TENANT}"
PUSH_TARGET_MS = 100.0
REVOKE_TARGET_MS = 1000.0
WAIT_SECONDS = 10.0
"""Longest wait for one push or one revocation before it counts as lost."""


@dataclass
class Settings:
    join_rounds: int = 3
    join_seconds: float = 10.0
    join_warmup: float = 1.5
    join_concurrency: int = 32
    push_items: int = 200
    push_channels: int = 20
    """Attendees; each holds one channel on each node."""
    push_warmup_items: int = 5
    item_bytes: int = 1024
    revocations: int = 100
    poll_ms: float = 5.0
    download_sizes_mib: tuple[int, ...] = (5, 100)
    download_rounds: int = 3
    wrk_seconds: int = 10


SMOKE = Settings(join_rounds=1, join_seconds=2.0, join_warmup=0.7, push_items=20,
                 push_channels=4, push_warmup_items=2, revocations=10,
                 download_sizes_mib=(5,), download_rounds=1, wrk_seconds=2)


# -- where the time goes ------------------------------------------------------------------------
def _machine_busy() -> tuple[float, float]:
    """(busy, idle) core-seconds of the whole machine so far (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / tick, idle / tick


@dataclass
class CpuMeter:
    """CPU seconds per group of processes over a window; a group's pids are read at both
    ends (a process that appeared meanwhile counts whole, one that vanished is lost)."""

    groups: dict[str, Callable[[], list[int]]]
    _before: dict[str, dict[int, float]] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)
    _t0: float = 0.0

    def start(self) -> None:
        self._before = {name: {p: cpu_seconds(p) for p in pids()}
                        for name, pids in self.groups.items()}
        self._machine = _machine_busy()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self._t0
        out: dict[str, Any] = {}
        for name, pids in self.groups.items():
            before = self._before.get(name, {})
            out[name] = round(sum(cpu_seconds(p) - before.get(p, 0.0) for p in pids()), 2)
        busy, idle = _machine_busy()
        cores = os.cpu_count() or 1
        out["machine_busy_pct"] = round(100 * (busy - self._machine[0]) / cores
                                        / max(wall, 1e-9), 1)
        out["wall_seconds"] = round(wall, 2)
        return out


def _node_groups(nodes: list[Node], database_url: str | None
                 ) -> dict[str, Callable[[], list[int]]]:
    def kind(node: Node, what: str) -> Callable[[], list[int]]:
        return lambda: node.pids()[what]

    groups: dict[str, Callable[[], list[int]]] = {}
    for node in nodes:
        groups[f"{node.name}_wcs"] = kind(node, "wcs")
        groups[f"{node.name}_focus"] = kind(node, "focus")
    if database_url is not None:
        groups["postgres"] = lambda: pg_backend_pids(database_url)
    groups["bench"] = lambda: [os.getpid()]
    return groups


async def _meter_groups(meter: CpuMeter, start: bool) -> dict[str, Any] | None:
    """`CpuMeter.start/stop` off the loop (the postgres group runs its own event loop)."""
    if start:
        await asyncio.to_thread(meter.start)
        return None
    return await asyncio.to_thread(meter.stop)


# -- the internal API and the data channel ---------------------------------------------------
class Internal:
    """The WCS internal API of one node over mTLS, as the focus calls it."""

    def __init__(self, cfg: Config, node: Node) -> None:
        self.node = node
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=tls.client_context(cfg, client_cert="focus-client")))

    async def admit(self, conference: str, user: str, role: str | None = None
                    ) -> dict[str, Any]:
        """Admit `user` to the presenter's conference `conference` (its URI id)."""
        body = {"tenant": TENANT, "organizer": ORGANIZER, "user": user,
                **({"role": role} if role else {})}
        async with self.http.post(f"{self.node.internal_url}/internal/v1/conferences/"
                                  f"{conference}/participants", json=body) as resp:
            doc: dict[str, Any] = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"admit {user}: {resp.status} {doc}")
            return doc

    async def revoke(self, who: dict[str, Any]) -> int:
        async with self.http.delete(
                f"{self.node.internal_url}/internal/v1/conferences/{who['conference']}/"
                f"participants/{who['participant']}") as resp:
            return resp.status

    async def close(self) -> None:
        await self.http.close()


def _auth(who: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {who['cookie']}"}


class Board:
    """Arrival times of `item.shared` per item id, and a wake when every channel has it."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrivals: dict[str, list[tuple[str, float]]] = defaultdict(list)
        self._complete: dict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def arrived(self, item_id: str, where: str, at: float) -> None:
        got = self.arrivals[item_id]
        got.append((where, at))
        if len(got) >= self.expected:
            self._complete[item_id].set()

    async def wait(self, item_id: str, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._complete[item_id].wait(), timeout)
        return len(self.arrivals[item_id]) >= self.expected


class Listener:
    """One data channel read in a task: when each `item.shared` came (to the board), when
    `revoked` came and when the socket closed (perf_counter, taken before parsing)."""

    def __init__(self, where: str, ws: aiohttp.ClientWebSocketResponse,
                 board: Board | None = None) -> None:
        self.where = where
        self.ws = ws
        self.board = board
        self.revoked_at: float | None = None
        self.closed_at: float | None = None
        self.closed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    @classmethod
    async def open(cls, http: aiohttp.ClientSession, node: Node, who: dict[str, Any],
                   board: Board | None = None) -> Listener:
        url = f"wss://127.0.0.1:{node.https_port}/v1/conferences/{who['conference']}/channel"
        ws = await http.ws_connect(url, headers=_auth(who), heartbeat=None)
        first = await ws.receive_json(timeout=WAIT_SECONDS)
        if first.get("type") != "welcome":
            raise RuntimeError(f"channel on {node.name}: first frame {first.get('type')}")
        return cls(node.name, ws, board)

    async def _run(self) -> None:
        import json

        try:
            while True:
                msg = await self.ws.receive()
                now = time.perf_counter()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = json.loads(msg.data)
                kind = frame.get("type")
                if kind == "item.shared" and self.board is not None:
                    self.board.arrived(str(frame["item"]["id"]), self.where, now)
                elif kind == "revoked":
                    self.revoked_at = now
        finally:
            self.closed_at = time.perf_counter()
            self.closed.set()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.task, 5)


def _ms(values: list[float]) -> dict[str, float]:
    """p50/p95/p99/max in ms; zeros for no values (rows hold numbers)."""
    return {k: 0.0 if v is None else v for k, v in summary_ms(values, with_max=True).items()}


# -- 2. cross-node push -------------------------------------------------------------------------
async def _push(cl: Cluster, n1: Node, n2: Node, s: Settings) -> dict[str, Any]:
    internal = Internal(cl.cfg, n1)
    ctx = tls.client_context(cl.cfg)
    channels = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=0))
    uploads = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
    listeners: list[Listener] = []
    try:
        presenter = await internal.admit("PUSH", ORGANIZER)
        attendees = [await internal.admit("PUSH", f"a{i}@{TENANT}", "attendee")
                     for i in range(s.push_channels)]
        board = Board(expected=2 * len(attendees))
        for who in attendees:
            for node in (n2, n1):
                listeners.append(await Listener.open(channels, node, who, board))
        url = f"{n1.url}/v1/conferences/{presenter['conference']}/items"
        cross: list[float] = []
        same: list[float] = []
        cross_201: list[float] = []
        upload_ms: list[float] = []
        lost = 0
        meter = CpuMeter(_node_groups([n1, n2], cl.database_url))
        for k in range(s.push_warmup_items + s.push_items):
            if k == s.push_warmup_items:
                await _meter_groups(meter, start=True)
            body = os.urandom(s.item_bytes)
            t0 = time.perf_counter()
            async with uploads.post(url, data=body, headers={
                    **_auth(presenter), "X-Item-Name": f"item-{k}.bin",
                    "Content-Type": "application/octet-stream"}) as resp:
                doc = await resp.json()
                if resp.status != 201:
                    raise RuntimeError(f"upload: {resp.status} {doc}")
            t201 = time.perf_counter()
            item_id = str(doc["item"]["id"])
            complete = await board.wait(item_id, WAIT_SECONDS)
            if k < s.push_warmup_items:
                continue
            lost += 0 if complete else board.expected - len(board.arrivals[item_id])
            upload_ms.append((t201 - t0) * 1000)
            for where, at in board.arrivals[item_id]:
                (cross if where == n2.name else same).append(at - t0)
                if where == n2.name:
                    cross_201.append(at - t201)
        cpu = await _meter_groups(meter, start=False)
        return {"cross": _ms(cross), "same": _ms(same), "cross_from_201": _ms(cross_201),
                "upload": _ms([u / 1000 for u in upload_ms]), "samples": len(cross),
                "lost": lost, "items": s.push_items, "channels_per_node": len(attendees),
                "cpu_seconds": cpu}
    finally:
        for listener in listeners:
            await listener.close()
        await channels.close()
        await uploads.close()
        await internal.close()


# -- 3. revocation everywhere -------------------------------------------------------------------
async def _refused(http: aiohttp.ClientSession, url: str, who: dict[str, Any], t0: float,
                   poll: float) -> float:
    """Seconds from t0 until GET `url` with the cookie is 401 (polled)."""
    deadline = t0 + WAIT_SECONDS
    while time.perf_counter() < deadline:
        async with http.get(url, headers=_auth(who)) as resp:
            await resp.read()
            at = time.perf_counter()
            if resp.status == 401:
                return at - t0
            if resp.status != 200:
                raise RuntimeError(f"GET items: {resp.status}")
        await asyncio.sleep(poll)
    raise TimeoutError("the cookie was still accepted")


async def _closed(listener: Listener, t0: float) -> float:
    await asyncio.wait_for(listener.closed.wait(), WAIT_SECONDS)
    assert listener.closed_at is not None
    if listener.revoked_at is None:
        raise RuntimeError(f"channel on {listener.where} closed without a revoked frame")
    return listener.closed_at - t0


async def _revocations(cl: Cluster, n1: Node, n2: Node, s: Settings) -> dict[str, Any]:
    internal = Internal(cl.cfg, n1)
    ctx = tls.client_context(cl.cfg)
    channels = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, limit=0))
    polls = {node.name: aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
             for node in (n1, n2)}
    opened: list[Listener] = []
    try:
        await internal.admit("REVOKE", ORGANIZER)
        attendees = [await internal.admit("REVOKE", f"r{i}@{TENANT}", "attendee")
                     for i in range(s.revocations)]
        held: list[dict[str, Listener]] = []
        for who in attendees:
            pair = {node.name: await Listener.open(channels, node, who) for node in (n1, n2)}
            opened += pair.values()
            held.append(pair)
        urls = {node.name: f"{node.url}/v1/conferences/{attendees[0]['conference']}/items"
                for node in (n1, n2)}
        for name, url in urls.items():  # warm both keep-alive pools
            async with polls[name].get(url, headers=_auth(attendees[0])) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"GET items on {name}: {resp.status}")
        samples: dict[str, list[float]] = defaultdict(list)
        errors: dict[str, int] = defaultdict(int)
        poll = s.poll_ms / 1000
        meter = CpuMeter(_node_groups([n1, n2], cl.database_url))
        await _meter_groups(meter, start=True)
        for who, pair in zip(attendees, held, strict=True):
            t0 = time.perf_counter()
            delete = asyncio.create_task(internal.revoke(who))
            checks = {f"{name}_refused": _refused(polls[name], urls[name], who, t0, poll)
                      for name in urls}
            checks.update({f"{name}_closed": _closed(pair[name], t0) for name in urls})
            results = await asyncio.gather(*checks.values(), return_exceptions=True)
            status = await delete
            if status != 204:
                errors[f"delete {status}"] += 1
                continue
            times: dict[str, float] = {}
            for k, v in zip(checks, results, strict=True):
                if isinstance(v, BaseException):
                    errors[f"{k}: {type(v).__name__}"] += 1
                else:
                    times[k] = v
            if len(times) < len(checks):
                continue
            for k, v in times.items():
                samples[k].append(v)
            samples["everywhere"].append(max(times.values()))
            samples["same_node"].append(max(times[f"{n1.name}_refused"],
                                            times[f"{n1.name}_closed"]))
            samples["cross_node"].append(max(times[f"{n2.name}_refused"],
                                             times[f"{n2.name}_closed"]))
        cpu = await _meter_groups(meter, start=False)
        return {**{k: _ms(v) for k, v in samples.items()},
                "revoked": len(samples["everywhere"]), "participants": len(attendees),
                "errors": dict(errors), "poll_ms": s.poll_ms, "cpu_seconds": cpu}
    finally:
        for listener in opened:
            await listener.close()
        await channels.close()
        for session in polls.values():
            await session.close()
        await internal.close()


# -- 1. joins on both backends ------------------------------------------------------------------
async def _pg_probe(database_url: str, n: int = 100) -> dict[str, float]:
    """Median ms of a round trip (SELECT 1) and of a one-row INSERT commit with
    synchronous_commit on (the server's default: a WAL flush per commit) and off (what
    SQLite's WAL + synchronous=NORMAL gives): the floor under each database write."""
    import asyncpg

    host, port, user, _ = pg_server()
    conn = await asyncpg.connect(host=host, port=port, user=user,
                                 database=database_url.rsplit("/", 1)[1], timeout=10)
    out: dict[str, float] = {}
    try:
        await conn.execute("CREATE TABLE bench_commit_probe (x integer)")
        for label, sql in (("round_trip_ms", "SELECT 1"),
                           ("commit_ms_synchronous_on", "INSERT INTO bench_commit_probe "
                                                        "VALUES (1)"),
                           ("commit_ms_synchronous_off", "INSERT INTO bench_commit_probe "
                                                         "VALUES (1)")):
            await conn.execute("SET synchronous_commit = "
                               + ("off" if label.endswith("_off") else "on"))
            took = []
            for _ in range(n):
                t0 = time.perf_counter()
                await conn.execute(sql)
                took.append(time.perf_counter() - t0)
            out[label] = round(median(took) * 1000, 3)
        await conn.execute("DROP TABLE bench_commit_probe")
    finally:
        await conn.close()
    return out


def _joins(s: Settings, sqlite_cfg: Config, sqlite_pids: Callable[[], dict[str, list[int]]],
           pg: Node, database_url: str) -> Row:
    users = [f"u{i}" for i in range(sip_joins.N_USERS)]
    runs: dict[str, list[Measurement]] = {"postgresql": [], "sqlite": []}
    targets = {
        "postgresql": (pg.sip_port, lambda: {
            **pg.pids(), "postgres": pg_backend_pids(database_url)}),
        "sqlite": (sqlite_cfg.focus.sip_port, sqlite_pids)}
    ca_file = str(sqlite_cfg.certs_dir / "ca.pem")
    probe = asyncio.run(_pg_probe(database_url))
    for rnd in range(s.join_rounds):
        order = ["postgresql", "sqlite"] if rnd % 2 == 0 else ["sqlite", "postgresql"]
        for backend in order:
            port, pids = targets[backend]
            ca = ca_file if backend == "sqlite" else str(pg.base_dir / "certs" / "ca.pem")
            runs[backend].append(generate(
                host="127.0.0.1", port=port, tls=True, ca_file=ca,
                server_hostname=sip_joins.DOMAIN, mode="reused",
                concurrency=s.join_concurrency, processes=1, users=users,
                password=sip_joins.PASSWORD, domain=sip_joins.DOMAIN,
                conference_uri=sip_joins.CONF_URI, warmup=s.join_warmup,
                duration=s.join_seconds, server_pids=pids, tag=f"{backend[0]}{rnd}"))
    pg_rate = median([m.rate for m in runs["postgresql"]])
    sq_rate = median([m.rate for m in runs["sqlite"]])
    per_round = [p.rate / q.rate for p, q in zip(runs["postgresql"], runs["sqlite"],
                                                 strict=True) if q.rate > 0]
    errors = sum(sum(m.errors.values()) for ms in runs.values() for m in ms)

    def cpu(ms: list[Measurement]) -> float | None:
        values = [v for v in (m.server_cpu_ms_per_join for m in ms) if v is not None]
        return round(median(values), 3) if values else None

    return Row("joins/s PostgreSQL vs SQLite (one TLS connection)", round(pg_rate, 1),
               round(sq_rate, 1), "-", None, unit="joins/s", cpu_ms=cpu(runs["postgresql"]),
               baseline_cpu_ms=cpu(runs["sqlite"]), detail={
                   "ours_is": "one node on PostgreSQL (webconf init --database)",
                   "baseline_is": "the embedded SQLite default",
                   "rounds": s.join_rounds, "seconds_per_round": s.join_seconds,
                   "dialogs_in_flight": s.join_concurrency, "errors": errors,
                   "postgresql_probe": probe,
                   "ratio_per_round": [round(r, 3) for r in per_round],
                   "postgresql_rounds": [m.brief() for m in runs["postgresql"]],
                   "sqlite_rounds": [m.brief() for m in runs["sqlite"]],
                   "cpu_pct_is": "% of one core per process group over the window "
                                 "(postgres = our database's backends)"})


# -- 4. download with --workers 2 ------------------------------------------------------------------
def _downloads(cl: Cluster, n1: Node, s: Settings) -> list[Row]:
    cfg = cl.cfg
    admitted = asyncio.run(download.admit(cfg))
    rows = []
    for size_mib in s.download_sizes_mib:
        item, _ = asyncio.run(download.upload(cfg, admitted, size_mib * 2**20))
        blob = asyncio.run(download.blob_path(cfg, item["id"], admitted.conference))
        auth = {"Authorization": f"Bearer {admitted.cookie}"}
        runs: dict[str, list[dict[str, Any]]] = {"ours": [], "nginx": []}
        per_worker: list[list[float]] = []
        with download.nginx(cfg, blob, workers=2) as ngx:
            download.run_h2load(item["url"], auth, 8)  # warm both
            download.run_h2load(ngx.url, {}, 8)
            wcs = n1.pids()["wcs"]
            servers: dict[str, tuple[str, dict[str, str], Callable[[], float]]] = {
                "ours": (item["url"], auth, lambda: sum(cpu_seconds(p) for p in wcs)),
                "nginx": (ngx.url, {}, ngx.cpu_seconds)}
            for rnd in range(s.download_rounds):
                for who in (["ours", "nginx"] if rnd % 2 == 0 else ["nginx", "ours"]):
                    url, headers, cpu = servers[who]
                    before = [cpu_seconds(p) for p in wcs]
                    runs[who].append(download._timed(
                        cpu, lambda: download.run_wrk(url, headers, s.wrk_seconds)))
                    if who == "ours":
                        per_worker.append([round(cpu_seconds(p) - b, 2)
                                           for p, b in zip(wcs, before, strict=True)])
        ours = median([r["mb_s"] for r in runs["ours"]])
        base = median([r["mb_s"] for r in runs["nginx"]])
        rows.append(Row(
            f"download MB/s, serve --workers 2 vs nginx 2 workers ({size_mib} MiB item)",
            round(ours, 1), round(base, 1), ">= 1.0x", base > 0 and ours / base >= 1.0,
            unit="MB/s", detail={
                "tool": f"wrk -t2 -c8 -d{s.wrk_seconds}s", "rounds": s.download_rounds,
                "ours_is": "webconf serve --workers 2 (PostgreSQL, SO_REUSEPORT)",
                "baseline_is": "nginx worker_processes 2, TLS1.3 AES-256-GCM, sendfile on",
                "ours_mb_s": [round(r["mb_s"], 1) for r in runs["ours"]],
                "nginx_mb_s": [round(r["mb_s"], 1) for r in runs["nginx"]],
                "ours_cpu_s_per_gb": median([r["server_cpu_s_per_gb"] or 0
                                             for r in runs["ours"]]),
                "nginx_cpu_s_per_gb": median([r["server_cpu_s_per_gb"] or 0
                                              for r in runs["nginx"]]),
                "wcs_worker_cpu_seconds_per_round": per_worker,
                "load_avg_1m": round(os.getloadavg()[0], 2)}))
    return rows


# -- the rows ---------------------------------------------------------------------------------
def _push_rows(res: dict[str, Any]) -> list[Row]:
    cross, same = res["cross"], res["same"]
    ok = res["lost"] == 0 and res["samples"] > 0
    detail = {"items": res["items"], "channels_per_node": res["channels_per_node"],
              "samples": res["samples"], "lost": res["lost"],
              "clock": "from just before the upload request (t0) to the item.shared frame",
              "cross_ms": cross, "same_node_ms": same, "cross_from_201_ms": res[
                  "cross_from_201"], "upload_ms": res["upload"],
              "cpu_seconds": res["cpu_seconds"], "machine": machine()}
    return [
        Row("cross-node share-to-push p99 (PostgreSQL, 2 nodes)", cross["p99"], same["p99"],
            f"< {PUSH_TARGET_MS:.0f} ms", ok and cross["p99"] < PUSH_TARGET_MS, "ms", True,
            detail),
        Row("cross-node share-to-push p50 (PostgreSQL, 2 nodes)", cross["p50"], same["p50"],
            "-", None, "ms", True, {"baseline_is": "same-node channels, same uploads"}),
    ]


def _revoke_row(res: dict[str, Any]) -> Row:
    every, same = res["everywhere"], res["same_node"]
    ok = not res["errors"] and res["revoked"] == res["participants"]
    return Row("revocation visible everywhere p99 (2 nodes)", every["p99"], same["p99"],
               f"< {REVOKE_TARGET_MS:.0f} ms", ok and every["p99"] < REVOKE_TARGET_MS, "ms",
               True, {
                   "baseline_is": "the revoking node's own refusal and channel close",
                   "clock": "from just before the DELETE; the latest of: each node's 401 "
                            "(polled) and each node's channel close after `revoked`",
                   **{k: v for k, v in res.items() if k != "cpu_seconds"},
                   "cpu_seconds": res["cpu_seconds"]})


def run(smoke: bool = False, settings: Settings | None = None) -> list[Row]:
    s = settings or (SMOKE if smoke else Settings())
    why = pg_missing()
    if why:
        print(f"bench.scaleout: skipped, {why}")
        return []
    accounts = [(f"{u}@{sip_joins.DOMAIN}", sip_joins.PASSWORD)
                for u in [*(f"u{i}" for i in range(sip_joins.N_USERS)), sip_joins.ORGANIZER]]
    rows: list[Row] = []
    with cluster(users=accounts) as cl:
        n1 = cl.node("n1")
        n1.start()
        with stack(users=accounts) as sq:
            sip_joins._organizer_join(sq.cfg)
            sip_joins._organizer_join(cl.cfg)
            rows.append(_joins(s, sq.cfg, lambda: {k: [v] for k, v in sq.pids.items()},
                               n1, cl.database_url))
        n2 = cl.node("n2")
        n2.start()
        push = asyncio.run(_push(cl, n1, n2, s))
        rows += _push_rows(push)
        rows.append(_revoke_row(asyncio.run(_revocations(cl, n1, n2, s))))
        n2.stop()
        missing = download.missing_tools()
        if missing:
            print(f"bench.scaleout: no --workers download rows, missing {', '.join(missing)}")
        else:
            n1.start(workers=2)
            if len(n1.pids()["wcs"]) != 2:
                raise RuntimeError(f"--workers 2 runs {len(n1.pids()['wcs'])} WCS processes")
            rows += _downloads(cl, n1, s)
    return rows


def main() -> None:
    standalone("python -m bench.scaleout", __doc__, run)


if __name__ == "__main__":
    main()
