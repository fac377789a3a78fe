"""SIP joins per second: our focus (full authenticated join) against Kamailio (stateless 200).

    python -m bench --only sip            # the rows, with the other benchmarks' runner
    python -m bench.sip_joins [--smoke] [--rounds 3] [--seconds 10] [--json]

One join, as the same load generator drives both servers:

- ours:     INVITE -> 401 (Digest challenge) -> ACK -> INVITE with Digest -> 100 -> 200 (a
            cookie minted at the WCS over mTLS) -> ACK -> BYE -> 200 (cookie revoked at the
            WCS, durably, before the 200);
- Kamailio: INVITE -> 200 -> ACK -> BYE -> 200 (`sl_send_reply`, no state, no auth), over
            TLS from Debian's `kamailio` + `kamailio-tls-modules` (bench/kamailio/*.tmpl).

Rows (medians over rounds; ratio = ours / Kamailio):
1. `joins/s, one TLS connection`: every join on one reused TLS connection, N dialogs in
   flight (target >= 0.25x).
2. `joins/s, TLS connection per join`: N concurrent clients, each opening a new TLS
   connection (full handshake, no resumption) per join (target >= 1.0x). Kamailio 5.6
   crashes with tcp_children > 1 under connection-per-call load, so it runs with
   tcp_children=1 here (and in the SIPp per-call row); the one-connection row uses 2.
3. `joins/s, SIPp TCP one connection` and 4. `joins/s, SIPp TCP connection per call`:
   Debian's SIPp (no TLS) over plain TCP (our focus's `focus.tcp_port` listener), with the
   Digest scenario bench/sipp/join_auth.xml, closed loop at N calls in flight (-l N).
   Informative.

The generator (`_Generator` below) is asyncio over raw protocols (uvloop when installed),
with requests built from bytes templates, responses read with a minimal head parser and
writes batched per read; it answers a 401 with a Digest computed by `webconf.sip.digest`.
It runs in separate processes (multiprocessing), synchronised on wall-clock windows; each
round has a warm-up, then a measured window in which only completions are counted, then a
drain (no new joins; in-flight ones finish, so no dialog is left behind). CPU seconds of
the servers and of the generator over the window are reported, to show who is saturated.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from webconf.sip import digest
from webconf.sip.message import parse_auth_params

from .common import Row, children, machine, median, percentile, require, stack

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KAMAILIO_TEMPLATES = HERE / "kamailio"
SIPP_SCENARIO = HERE / "sipp" / "join_auth.xml"
DOMAIN = "contoso.example"
CONF_ID = "BENCH"
ORGANIZER = "org"
CONF_URI = f"sip:{ORGANIZER}@{DOMAIN};gruu;opaque=app:conf:focus:id:{CONF_ID}"
PASSWORD = "bench-pw"
N_USERS = 64
SIPP_USER = "sipp0"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# =========================================================================================
# The load generator
# =========================================================================================
@dataclass
class GenSpec:
    """What one generator process does; picklable (it crosses a process boundary)."""

    host: str
    port: int
    tls: bool
    ca_file: str | None
    server_hostname: str
    mode: str
    """"reused": one connection, `concurrency` dialogs in flight on it; "per-join":
    `concurrency` clients, each joining on a new connection (closed after the BYE's 200)."""
    concurrency: int
    users: list[str]
    password: str
    start_at: float
    """time.time() at which the warm-up starts (all processes share it)."""
    warmup: float
    duration: float
    call_timeout: float = 10.0
    tag: str = "g"
    """Unique per process and round: prefixes Call-IDs, tags and branches."""
    user_agent: str = "webconf-bench/1"


@dataclass
class GenResult:
    completed: int = 0
    """Joins completed inside the measured window."""
    errors: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    """INVITE sent (connect started, per-join) -> 200 received, for joins in the window."""
    connections: int = 0
    leftover: int = 0
    """Calls still in flight when the drain gave up."""
    cpu_seconds: float = 0.0
    """This process's CPU time over the window."""


class _Call:
    __slots__ = ("call_id", "from_tag", "user", "cseq", "branch", "started", "authed",
                 "answered", "on_done", "n")

    def __init__(self, call_id: bytes, from_tag: bytes, user: bytes, started: float,
                 on_done: Callable[[_Call, str | None], None]) -> None:
        self.call_id = call_id
        self.from_tag = from_tag
        self.user = user
        self.cseq = 1
        self.branch = b""
        self.started = started
        self.authed = False
        self.answered = 0.0
        self.on_done = on_done
        self.n = 0


_WANTED = {b"call-id": b"i", b"i": b"i", b"cseq": b"cseq", b"to": b"t", b"t": b"t",
           b"contact": b"m", b"m": b"m", b"content-length": b"l", b"l": b"l",
           b"www-authenticate": b"w"}
_URI_IN_BRACKETS = re.compile(rb"<([^>]*)>")


def _parse_head(head: bytes) -> tuple[int, dict[bytes, Any]]:
    """(status, {short name: value}) of a response head; status 0 for a request."""
    lines = head.split(b"\r\n")
    start = lines[0]
    status = int(start[8:11]) if start.startswith(b"SIP/2.0 ") else 0
    fields: dict[bytes, Any] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = _WANTED.get(name.strip().lower())
        if key is None:
            continue
        if key == b"w":
            fields.setdefault(b"w", []).append(value.strip())
        else:
            fields.setdefault(key, value.strip())
    return status, fields


class _Conn(asyncio.Protocol):
    """One SIP connection of the generator: many calls, matched by Call-ID."""

    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.buf = bytearray()
        self.calls: dict[bytes, _Call] = {}
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.local = b""
        self.contact_tail = b""

    # -- transport callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = f"{host}:{port}".encode()
        tp = b"tls" if self.gen.spec.tls else b"tcp"
        self.contact_tail = b"@" + self.local + b";transport=" + tp + b">\r\n"

    def connection_lost(self, exc: Exception | None) -> None:
        calls, self.calls = self.calls, {}
        for call in calls.values():
            call.on_done(call, "connection lost")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            while buf[:2] == b"\r\n":  # keep-alive pongs
                del buf[:2]
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            status, fields = _parse_head(bytes(buf[:end]))
            total = end + 4 + int(fields.get(b"l", b"0") or 0)
            if len(buf) < total:
                break
            del buf[:total]
            if status:
                self._response(status, fields)
        self.flush()

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

    # -- calls ------------------------------------------------------------------------------
    def start_call(self, on_done: Callable[[_Call, str | None], None],
                   started: float | None = None) -> None:
        gen = self.gen
        call = gen.new_call(on_done, started)
        self.calls[call.call_id] = call
        self._invite(call, b"")

    def _branch(self, call: _Call) -> bytes:
        call.n += 1
        return b"z9hG4bK%s.%d" % (call.call_id, call.n)

    def _invite(self, call: _Call, auth: bytes) -> None:
        gen = self.gen
        call.branch = self._branch(call)
        self.out.append(b"".join((
            gen.invite_line,
            gen.via_start, self.local, b";branch=", call.branch, b";rport\r\n"
            b"Max-Forwards: 70\r\nFrom: <sip:", call.user, gen.at_domain, b">;tag=",
            call.from_tag, b"\r\n", gen.to_line, b"Call-ID: ", call.call_id,
            b"\r\nCSeq: %d INVITE\r\nContact: <sip:" % call.cseq, call.user,
            self.contact_tail, auth, gen.invite_tail)))

    def _in_dialog(self, call: _Call, method: bytes, ruri: bytes, to: bytes, cseq: int,
                   branch: bytes) -> None:
        gen = self.gen
        self.out.append(b"".join((
            method, b" ", ruri, b" SIP/2.0\r\n", gen.via_start, self.local, b";branch=",
            branch, b";rport\r\nMax-Forwards: 70\r\nFrom: <sip:", call.user, gen.at_domain,
            b">;tag=", call.from_tag, b"\r\nTo: ", to, b"\r\nCall-ID: ", call.call_id,
            b"\r\nCSeq: %d " % cseq, method, b"\r\n", gen.ua_line,
            b"Content-Length: 0\r\n\r\n")))

    def _response(self, status: int, fields: dict[bytes, Any]) -> None:
        call = self.calls.get(fields.get(b"i", b""))
        if call is None:
            return
        method = fields.get(b"cseq", b"").rpartition(b" ")[2]
        to = fields.get(b"t", b"")
        if method == b"INVITE":
            if status < 200:
                return
            if status == 200:
                call.answered = time.monotonic()
                match = _URI_IN_BRACKETS.search(fields.get(b"m", b""))
                target = match.group(1) if match else self.gen.conf_uri
                self._in_dialog(call, b"ACK", target, to, call.cseq, self._branch(call))
                call.cseq += 1
                self._in_dialog(call, b"BYE", target, to, call.cseq, self._branch(call))
                return
            # a non-2xx final response: ACK it on the INVITE's branch
            self._in_dialog(call, b"ACK", self.gen.conf_uri, to, call.cseq, call.branch)
            if status in (401, 407) and not call.authed:
                auth = self.gen.authorization(call, fields.get(b"w", []))
                if auth is not None:
                    call.authed = True
                    call.cseq += 1
                    self._invite(call, auth)
                    return
            self._end(call, f"INVITE {status}")
        elif method == b"BYE" and status >= 200:
            self._end(call, None if status == 200 else f"BYE {status}")

    def _end(self, call: _Call, error: str | None) -> None:
        if self.calls.pop(call.call_id, None) is not None:
            call.on_done(call, error)

    def expire(self, now: float, timeout: float) -> None:
        for call in [c for c in self.calls.values() if now - c.started > timeout]:
            self._end(call, "timeout")
        self.flush()


class _Generator:
    def __init__(self, spec: GenSpec) -> None:
        self.spec = spec
        self.ctx: ssl.SSLContext | None = None
        if spec.tls:
            self.ctx = ssl.create_default_context(cafile=spec.ca_file)
            self.ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        offset = time.monotonic() - time.time()
        self.warm_at = spec.start_at + offset
        self.window_start = self.warm_at + spec.warmup
        self.window_end = self.window_start + spec.duration
        self.running = True
        self.result = GenResult()
        self.errors: Counter[str] = Counter()
        self.seq = 0
        self.users = [u.encode() for u in spec.users]
        self.ha1: dict[tuple[bytes, str, str], str] = {}
        self.conf_uri = CONF_URI.encode()
        transport = b"TLS" if spec.tls else b"TCP"
        self.invite_line = b"INVITE " + self.conf_uri + b" SIP/2.0\r\n"
        self.via_start = b"Via: SIP/2.0/" + transport + b" "
        self.at_domain = b"@" + DOMAIN.encode()
        self.to_line = b"To: <" + self.conf_uri + b">\r\n"
        self.ua_line = b"User-Agent: " + spec.user_agent.encode() + b"\r\n"
        self.invite_tail = (b"Accept: application/vnd.webconf.join+json\r\n" + self.ua_line
                            + b"Content-Length: 0\r\n\r\n")
        self.tag = spec.tag.encode()
        self.conns: list[_Conn] = []

    def new_call(self, on_done: Callable[[_Call, str | None], None],
                 started: float | None) -> _Call:
        self.seq += 1
        n = self.seq
        return _Call(b"%s-%d" % (self.tag, n), b"%x" % n, self.users[n % len(self.users)],
                     time.monotonic() if started is None else started, on_done)

    def authorization(self, call: _Call, challenges: list[bytes]) -> bytes | None:
        for raw in challenges:
            try:
                scheme, params = parse_auth_params(raw.decode())
            except Exception:  # noqa: BLE001 - a challenge we cannot read: try the next
                continue
            alg = digest.canonical_algorithm(params.get("algorithm", "MD5"))
            if scheme != "digest" or alg is None or "nonce" not in params:
                continue
            realm, nonce = params.get("realm", ""), params["nonce"]
            user = call.user.decode()
            key = (call.user, realm, alg)
            ha1 = self.ha1.get(key)
            if ha1 is None:
                ha1 = self.ha1[key] = digest.ha1(user, realm, self.spec.password, alg)
            cnonce = f"{call.n:x}{self.seq:x}"
            response = digest.digest_response(alg, ha1, nonce, "00000001", cnonce, "INVITE",
                                              CONF_URI)
            value = (f'Authorization: Digest username="{user}", realm="{realm}", '
                     f'nonce="{nonce}", uri="{CONF_URI}", response="{response}", '
                     f'algorithm={alg}, qop=auth, nc=00000001, cnonce="{cnonce}"')
            if "opaque" in params:
                value += f', opaque="{params["opaque"]}"'
            return value.encode() + b"\r\n"
        return None

    def done(self, call: _Call, error: str | None) -> None:
        now = time.monotonic()
        if error is not None:
            self.errors[error] += 1
        elif self.window_start <= now < self.window_end:
            self.result.completed += 1
            self.result.latencies_ms.append(round((call.answered - call.started) * 1000, 2))

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        spec = self.spec
        _, proto = await asyncio.wait_for(loop.create_connection(
            lambda: _Conn(self), spec.host, spec.port, ssl=self.ctx,
            server_hostname=spec.server_hostname if self.ctx else None),
            spec.call_timeout)
        self.result.connections += 1
        return proto

    async def run(self) -> GenResult:
        await asyncio.sleep(max(0.0, self.warm_at - time.monotonic()))
        if self.spec.mode == "reused":
            await self._run_reused()
        else:
            await self._run_per_join()
        self.result.errors = dict(self.errors)
        return self.result

    async def _run_reused(self) -> None:
        conn: _Conn | None = None

        def on_done(call: _Call, error: str | None) -> None:
            self.done(call, error)
            if self.running and conn is not None and not conn.closed.done():
                conn.start_call(on_done)

        async def ticker() -> None:
            while True:
                await asyncio.sleep(0.5)
                if conn is not None:
                    conn.expire(time.monotonic(), self.spec.call_timeout)

        tick = asyncio.create_task(ticker())
        stopper = asyncio.create_task(self._stop_at_window_end())
        try:
            while self.running:
                try:
                    conn = await self._connect()
                except (OSError, TimeoutError, ssl.SSLError) as exc:
                    self.errors[f"connect: {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.2)
                    continue
                for _ in range(self.spec.concurrency):
                    conn.start_call(on_done)
                conn.flush()
                await asyncio.wait([conn.closed, stopper], return_when=asyncio.FIRST_COMPLETED)
            # drain: no new calls; wait for the in-flight ones
            deadline = time.monotonic() + self.spec.call_timeout
            while conn is not None and conn.calls and time.monotonic() < deadline \
                    and not conn.closed.done():
                await asyncio.sleep(0.02)
            if conn is not None:
                self.result.leftover += len(conn.calls)
                if conn.transport is not None:
                    conn.transport.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(conn.closed), 2)
        finally:
            tick.cancel()
            stopper.cancel()

    async def _stop_at_window_end(self) -> None:
        await asyncio.sleep(max(0.0, self.window_end - time.monotonic()))
        self.running = False

    async def _run_per_join(self) -> None:
        loop = asyncio.get_running_loop()

        async def client() -> None:
            while self.running:
                started = time.monotonic()
                try:
                    conn = await self._connect()
                except (OSError, TimeoutError, ssl.SSLError) as exc:
                    self.errors[f"connect: {type(exc).__name__}"] += 1
                    await asyncio.sleep(0.05)
                    continue
                finished: asyncio.Future[str | None] = loop.create_future()

                def on_done(call: _Call, error: str | None,
                            fut: asyncio.Future[str | None] = finished) -> None:
                    self.done(call, error)
                    if not fut.done():
                        fut.set_result(error)

                conn.start_call(on_done, started)
                conn.flush()
                try:
                    await asyncio.wait_for(asyncio.shield(finished), self.spec.call_timeout)
                except TimeoutError:
                    conn.expire(float("inf"), 0)
                if conn.transport is not None:
                    conn.transport.close()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(conn.closed), 2)

        stopper = asyncio.create_task(self._stop_at_window_end())
        await asyncio.gather(*(client() for _ in range(self.spec.concurrency)))
        stopper.cancel()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process (0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    parts = text.rpartition(")")[2].split()
    return (int(parts[11]) + int(parts[12])) / CLK_TCK


def _gen_process(spec_json: str) -> None:
    """Entry point of one generator process: a GenSpec as JSON in, a GenResult on stdout."""
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    spec = GenSpec(**json.loads(spec_json))
    gen = _Generator(spec)

    async def main() -> GenResult:
        async def sample_cpu() -> float:
            await asyncio.sleep(max(0.0, gen.window_start - time.monotonic()))
            before = time.process_time()
            await asyncio.sleep(max(0.0, gen.window_end - time.monotonic()))
            return time.process_time() - before

        cpu = asyncio.create_task(sample_cpu())
        result = await gen.run()
        result.cpu_seconds = round(await cpu, 3)
        return result

    try:
        out: dict[str, Any] = asdict(asyncio.run(main()))
    except BaseException as exc:  # noqa: BLE001 - report to the parent, never hang it
        out = {"fatal": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(out))
    sys.stdout.flush()


@dataclass
class Measurement:
    rate: float
    completed: int
    errors: dict[str, int]
    latency_ms_p50: float
    latency_ms_p99: float
    cpu: dict[str, float]
    """CPU use over the window, in % of one core, per process group."""
    connections: int
    leftover: int

    @property
    def cpu_ms_per_join(self) -> dict[str, float]:
        """CPU milliseconds per join, per process group: what contention does not change."""
        if self.rate <= 0:
            return {}
        return {name: round(10 * pct / self.rate, 3) for name, pct in self.cpu.items()}

    def brief(self) -> dict[str, Any]:
        return {"joins_per_s": round(self.rate, 1), "errors": self.errors,
                "p50_ms": self.latency_ms_p50, "p99_ms": self.latency_ms_p99,
                "cpu_pct": self.cpu, "cpu_ms_per_join": self.cpu_ms_per_join,
                "connections": self.connections,
                **({"leftover": self.leftover} if self.leftover else {})}


def generate(*, host: str, port: int, tls: bool, ca_file: str | None, server_hostname: str,
             mode: str, concurrency: int, processes: int, users: list[str], password: str,
             warmup: float, duration: float, server_pids: Callable[[], dict[str, list[int]]],
             tag: str) -> Measurement:
    """Run `processes` generator processes for one round; sum their results."""
    start_at = time.time() + 1.5  # time for the generator interpreters to import
    per_proc = [concurrency // processes + (1 if i < concurrency % processes else 0)
                for i in range(processes)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    procs = []
    for i, n in enumerate(per_proc):
        spec = GenSpec(host=host, port=port, tls=tls, ca_file=ca_file,
                       server_hostname=server_hostname, mode=mode, concurrency=n, users=users,
                       password=password, start_at=start_at, warmup=warmup,
                       duration=duration, tag=f"{tag}p{i}")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sip_joins", "--generator", json.dumps(asdict(spec))],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            env=env)
        procs.append(proc)
    window_start = start_at + warmup
    time.sleep(max(0.0, window_start - time.time()))
    groups = server_pids()
    before = {name: sum(_cpu_seconds(p) for p in pids) for name, pids in groups.items()}
    t0 = time.time()
    time.sleep(max(0.0, window_start + duration - time.time()))
    elapsed = time.time() - t0
    cpu = {name: round(100 * (sum(_cpu_seconds(p) for p in pids) - before[name]) / elapsed, 1)
           for name, pids in groups.items()}
    results: list[dict[str, Any]] = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        try:
            results.append(json.loads(out))
        except ValueError:
            results.append({"fatal": f"exit {proc.returncode}: "
                                     f"{err.decode(errors='replace')[-300:]}"})
    errors: Counter[str] = Counter()
    latencies: list[float] = []
    completed = connections = leftover = 0
    gen_cpu = 0.0
    for res in results:
        if "fatal" in res:
            errors[f"generator: {res['fatal']}"] += 1
            continue
        completed += res["completed"]
        errors.update(res["errors"])
        latencies += res["latencies_ms"]
        connections += res["connections"]
        leftover += res["leftover"]
        gen_cpu += res["cpu_seconds"]
    cpu["generator"] = round(100 * gen_cpu / duration, 1)
    return Measurement(rate=completed / duration, completed=completed, errors=dict(errors),
                       latency_ms_p50=round(percentile(latencies, 50), 2),
                       latency_ms_p99=round(percentile(latencies, 99), 2), cpu=cpu,
                       connections=connections, leftover=leftover)


# =========================================================================================
# Kamailio
# =========================================================================================
@dataclass
class Kamailio:
    proc: subprocess.Popen[bytes]
    tls_port: int
    tcp_port: int
    tcp_children: int
    workdir: Path

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "kamailio.log").read_text(errors="replace")[-1500:]
        return ""


def _fill(template: Path, values: dict[str, str]) -> str:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    if re.search(r"@[A-Z_]+@", text):
        raise ValueError(f"unfilled placeholder in {template.name}")
    return text


def _free_port_pair() -> tuple[int, int]:
    ports = []
    socks = []
    for _ in range(2):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(int(s.getsockname()[1]))
    for s in socks:
        s.close()
    return ports[0], ports[1]


@contextlib.contextmanager
def kamailio(certs_dir: Path, *, tcp_children: int, children_udp: int = 1,
             max_connections: int = 8192) -> Iterator[Kamailio]:
    """Run Debian's kamailio in the foreground (-DD -E) as a stateless TLS/TCP responder."""
    workdir = Path(tempfile.mkdtemp(prefix="webconf-kamailio-"))
    run_dir = workdir / "run"
    run_dir.mkdir()
    tls_port, tcp_port = _free_port_pair()
    (workdir / "tls.cfg").write_text(_fill(KAMAILIO_TEMPLATES / "tls.cfg.tmpl", {
        "CERT": str(certs_dir / "focus.pem"), "KEY": str(certs_dir / "focus.key")}))
    modules = os.environ.get("KAMAILIO_MODULES", KAMAILIO_MODULES)
    (workdir / "kamailio.cfg").write_text(_fill(KAMAILIO_TEMPLATES / "kamailio.cfg.tmpl", {
        "DEBUG": "1", "CHILDREN": str(children_udp), "TCP_CHILDREN": str(tcp_children),
        "MAX_CONNECTIONS": str(max_connections), "TLS_PORT": str(tls_port),
        "TCP_PORT": str(tcp_port), "MODULES": modules, "TLS_CFG": str(workdir / "tls.cfg")}))
    log = (workdir / "kamailio.log").open("wb")
    proc = subprocess.Popen(
        ["kamailio", "-DD", "-E", "-f", str(workdir / "kamailio.cfg"), "-Y", str(run_dir),
         "-w", str(run_dir), "-m", "64", "-M", "8"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    kam = Kamailio(proc, tls_port, tcp_port, tcp_children, workdir)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"kamailio exited with {proc.returncode}: {kam.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", tls_port), 0.5).close()
                socket.create_connection(("127.0.0.1", tcp_port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kamailio did not listen: {kam.log_tail()}") from None
                time.sleep(0.1)
        yield kam
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)


# =========================================================================================
# SIPp
# =========================================================================================
@dataclass
class SippRun:
    rate: float
    successful: int
    failed: int
    elapsed: float
    cpu: dict[str, float]
    error: str = ""

    def brief(self) -> dict[str, Any]:
        out: dict[str, Any] = {"calls_per_s": round(self.rate, 1), "successful": self.successful,
                               "failed": self.failed, "seconds": round(self.elapsed, 2),
                               "cpu_pct": self.cpu}
        if self.error:
            out["error"] = self.error
        return out


def _sipp_epoch(text: str) -> float:
    """SIPp's time stamp "YYYY-MM-DD\tHH:MM:SS.micros\tEPOCH.micros" as epoch seconds."""
    return float(text.strip().split("\t")[-1])


def parse_sipp_stats(path: Path) -> tuple[int, int, float]:
    """(successful calls, failed calls, elapsed seconds) from SIPp's -trace_stat CSV.

    Elapsed is CurrentTime - StartTime of the last (final) dump: ElapsedTime(C) has only
    whole seconds."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(fh, delimiter=";") if r]
    header, last = rows[0], rows[-1]
    col = {name: i for i, name in enumerate(header)}
    elapsed = _sipp_epoch(last[col["CurrentTime"]]) - _sipp_epoch(last[col["StartTime"]])
    return int(last[col["SuccessfulCall(C)"]]), int(last[col["FailedCall(C)"]]), elapsed


def sipp(*, port: int, transport: str, calls: int, concurrency: int,
         server_pids: Callable[[], dict[str, list[int]]], user: str = SIPP_USER,
         password: str = PASSWORD, timeout: float = 120.0) -> SippRun:
    """Run SIPp's join scenario over TCP (`t1` one connection, `tn` one per call)."""
    workdir = Path(tempfile.mkdtemp(prefix="webconf-sipp-"))
    stats = workdir / "stats.csv"
    cmd = ["sipp", f"127.0.0.1:{port}", "-sf", str(SIPP_SCENARIO), "-s", user, "-ap", password,
           "-key", "domain", DOMAIN, "-key", "conf", CONF_ID, "-t", transport, "-i",
           "127.0.0.1", "-r", "100000", "-rp", "1000", "-l", str(concurrency), "-m",
           str(calls), "-nostdin", "-trace_stat", "-stf", str(stats), "-fd", "1",
           "-timeout", f"{int(timeout)}s", "-max_socket", str(max(64, concurrency * 4))]
    try:
        groups = server_pids()
        before = {name: sum(_cpu_seconds(p) for p in pids) for name, pids in groups.items()}
        started = time.time()
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            _, err = proc.communicate(timeout=timeout + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        wall = time.time() - started
        cpu = {name: round(100 * (sum(_cpu_seconds(p) for p in pids) - before[name]) / wall, 1)
               for name, pids in groups.items()}
        try:
            ok, failed, elapsed = parse_sipp_stats(stats)
        except (OSError, ValueError, KeyError, IndexError) as exc:
            return SippRun(0.0, 0, 0, wall, cpu, error=f"no stats ({exc}): "
                           f"{err.decode(errors='replace')[-300:]}")
        error = "" if proc.returncode in (0, 1) else f"sipp exit {proc.returncode}"
        return SippRun(ok / elapsed if elapsed > 0 else 0.0, ok, failed, elapsed, cpu, error)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# =========================================================================================
# The benchmark
# =========================================================================================
def _organizer_join(cfg: Any) -> None:
    """The organizer joins (and leaves) once, so the conference exists for attendees."""
    from clients.sip import ConferenceDialog, SipConnection
    from conferencing import tls

    async def go() -> None:
        conn = await SipConnection.open("127.0.0.1", cfg.focus.sip_port,
                                        ssl_context=tls.client_context(cfg),
                                        server_hostname=DOMAIN)
        try:
            dialog = ConferenceDialog(conn, CONF_URI, f"{ORGANIZER}@{DOMAIN}", PASSWORD)
            await dialog.join()
            await dialog.leave()
        finally:
            await conn.close()

    asyncio.run(go())


@dataclass
class Settings:
    rounds: int = 3
    seconds: float = 10.0
    warmup: float = 1.5
    reused_concurrency: int = 32
    """Dialogs in flight on the one connection (the focus answers 503 past 32 pending)."""
    per_join_concurrency: int = 32
    reused_processes: int = 1
    per_join_processes: int = 2
    sipp_concurrency: int = 32
    sipp_seconds: float = 8.0


def _ratio_row(metric: str, target: str, factor: float, ours: list[Measurement],
               base: list[Measurement] | None, detail: dict[str, Any]) -> Row:
    ours_rate = median([m.rate for m in ours])
    base_rate = median([m.rate for m in base]) if base else None
    passed = None if not base_rate else ours_rate >= factor * base_rate
    detail = {**detail, "ours_rounds": [m.brief() for m in ours],
              **({"kamailio_rounds": [m.brief() for m in base]} if base else {})}
    if base:
        # the two servers run back to back in each round: the per-round ratio is the
        # comparison least affected by load that drifts between rounds
        per_round = [o.rate / b.rate for o, b in zip(ours, base, strict=False) if b.rate > 0]
        detail["ratio_per_round"] = [round(r, 4) for r in per_round]
        detail["ratio_median_of_rounds"] = round(median(per_round), 4)
        cpu_ours = [sum(v for k, v in m.cpu_ms_per_join.items() if k != "generator")
                    for m in ours if m.rate > 0]
        cpu_base = [sum(v for k, v in m.cpu_ms_per_join.items() if k != "generator")
                    for m in base if m.rate > 0]
        detail["server_cpu_ms_per_join"] = {"ours": round(median(cpu_ours), 3),
                                            "kamailio": round(median(cpu_base), 3)}
    return Row(metric, round(ours_rate, 1), None if base_rate is None else round(base_rate, 1),
               target, passed, unit="joins/s", detail=detail)


def run(smoke: bool = False, settings: Settings | None = None) -> list[Row]:
    s = settings or (Settings(rounds=1, seconds=2.0, warmup=0.7, sipp_seconds=2.0)
                     if smoke else Settings())
    missing = require("kamailio", "sipp")
    load_start = round(os.getloadavg()[0], 2)
    users = [f"u{i}" for i in range(N_USERS)]
    accounts = [(f"{u}@{DOMAIN}", PASSWORD) for u in [*users, ORGANIZER, SIPP_USER]]
    env = {"WEBCONF_FOCUS_MD5_ONLY_USER_AGENTS": "baresip,sipp"}
    ours: dict[str, list[Measurement]] = {"reused": [], "per-join": []}
    kam: dict[str, list[Measurement]] = {"reused": [], "per-join": []}
    sipp_ours: dict[str, list[SippRun]] = {"t1": [], "tn": []}
    sipp_kam: dict[str, list[SippRun]] = {"t1": [], "tn": []}
    notes: list[str] = []
    with contextlib.ExitStack() as stack_:
        st = stack_.enter_context(stack(users=accounts, tcp_sip=True, env=env))
        cfg = st.cfg
        _organizer_join(cfg)
        ca_file = str(cfg.certs_dir / "ca.pem")
        kam_multi = kam_one = None
        if "kamailio" not in missing:
            kam_multi = stack_.enter_context(kamailio(cfg.certs_dir, tcp_children=2))
            kam_one = stack_.enter_context(kamailio(cfg.certs_dir, tcp_children=1))
        else:
            notes.append("kamailio not installed: no baseline (make bench-deps)")

        def our_pids() -> dict[str, list[int]]:
            return {name: [pid] for name, pid in st.pids.items()}

        def kam_pids(k: Kamailio) -> Callable[[], dict[str, list[int]]]:
            return lambda: {"kamailio": k.pids()}

        for rnd in range(s.rounds):
            for mode in ("reused", "per-join"):
                conc = s.reused_concurrency if mode == "reused" else s.per_join_concurrency
                procs = s.reused_processes if mode == "reused" else s.per_join_processes
                common = dict(tls=True, ca_file=ca_file, server_hostname=DOMAIN, mode=mode,
                              concurrency=conc, processes=procs, users=users,
                              password=PASSWORD, warmup=s.warmup, duration=s.seconds)
                targets: list[tuple[str, Any]] = [("ours", None)]
                k = kam_multi if mode == "reused" else kam_one
                if k is not None:
                    targets.append(("kamailio", k))
                if rnd % 2:
                    targets.reverse()  # alternate who goes first against load drift
                for who, kserver in targets:
                    if kserver is None:
                        m = generate(host="127.0.0.1", port=cfg.focus.sip_port,
                                     server_pids=our_pids, tag=f"o{rnd}{mode[0]}", **common)
                        ours[mode].append(m)
                    else:
                        m = generate(host="127.0.0.1", port=kserver.tls_port,
                                     server_pids=kam_pids(kserver), tag=f"k{rnd}{mode[0]}",
                                     **common)
                        if not kserver.alive():
                            m.errors["kamailio crashed"] = 1
                            notes.append(f"kamailio died: {kserver.log_tail()[-300:]}")
                        kam[mode].append(m)
        if "sipp" in missing:
            notes.append("sipp not installed: no SIPp rows (make bench-deps)")
        else:
            guess = {"ours": 150.0, "kamailio": 2000.0}
            for rnd in range(s.rounds):
                for transport in ("t1", "tn"):
                    for who in ("ours", "kamailio"):
                        if who == "ours":
                            port, pids = cfg.focus.tcp_port, our_pids
                            bucket = sipp_ours
                        else:
                            k = kam_multi if transport == "t1" else kam_one
                            if k is None:
                                continue
                            port, pids, bucket = k.tcp_port, kam_pids(k), sipp_kam
                        prior = [r.rate for r in bucket[transport] if r.rate > 0]
                        rate = median(prior) if prior else guess[who]
                        calls = max(50, int(rate * s.sipp_seconds))
                        bucket[transport].append(sipp(
                            port=port, transport=transport, calls=calls,
                            concurrency=s.sipp_concurrency, server_pids=pids))
    kam_children = {"reused": 2, "per-join": 1}
    base_detail = {"rounds": s.rounds, "seconds_per_round": s.seconds, "warmup_s": s.warmup,
                   "machine": machine(), "load_avg_1m_at_start": load_start,
                   **({"notes": notes} if notes else {})}
    gen_desc = ("bench.sip_joins asyncio generator ({procs} process(es), uvloop if installed), "
                "bytes templates, Digest via webconf.sip.digest")
    rows = [
        _ratio_row("joins/s, one TLS connection", ">= 0.25x", 0.25, ours["reused"],
                   kam["reused"] or None, {
                       **base_detail,
                       "generator": gen_desc.format(procs=s.reused_processes),
                       "dialogs_in_flight": s.reused_concurrency,
                       "kamailio_tcp_children": kam_children["reused"]}),
        _ratio_row("joins/s, TLS connection per join", ">= 1.0x", 1.0, ours["per-join"],
                   kam["per-join"] or None, {
                       **base_detail,
                       "generator": gen_desc.format(procs=s.per_join_processes),
                       "concurrent_clients": s.per_join_concurrency,
                       "tls": "full handshake per join (no session resumption)",
                       "kamailio_tcp_children": 1,
                       "kamailio_note": "tcp_children=1: Kamailio 5.6 crashes with "
                                        "tcp_children > 1 under connection-per-call load"}),
    ]
    if "sipp" not in missing:
        for transport, metric in (("t1", "joins/s, SIPp TCP one connection"),
                                  ("tn", "joins/s, SIPp TCP connection per call")):
            o = median([r.rate for r in sipp_ours[transport]])
            b = median([r.rate for r in sipp_kam[transport]]) if sipp_kam[transport] else None
            rows.append(Row(metric, round(o, 1), None if b is None else round(b, 1), "-", None,
                            unit="joins/s", detail={
                                "rounds": s.rounds, "generator": f"SIPp 3.6 -t {transport} "
                                f"-l {s.sipp_concurrency} (closed loop), scenario "
                                "bench/sipp/join_auth.xml (Digest via -s/-ap, MD5)",
                                "kamailio_tcp_children": 2 if transport == "t1" else 1,
                                "ours_rounds": [r.brief() for r in sipp_ours[transport]],
                                "kamailio_rounds": [r.brief() for r in sipp_kam[transport]],
                                "note": "informative: SIPp (one C++ thread) is the load "
                                        "generator here, and may be the limit for Kamailio"}))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--reused-concurrency", type=int)
    parser.add_argument("--per-join-concurrency", type=int)
    parser.add_argument("--per-join-processes", type=int)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument("--generator", metavar="SPEC_JSON", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generator:
        _gen_process(args.generator)
        return
    s = (Settings(rounds=1, seconds=2.0, warmup=0.7, sipp_seconds=2.0) if args.smoke
         else Settings())
    for name in ("rounds", "seconds", "reused_concurrency", "per_join_concurrency",
                 "per_join_processes"):
        value = getattr(args, name)
        if value is not None:
            setattr(s, name, value)
    rows = run(args.smoke, s)
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    else:
        for r in rows:
            ratio = "-" if r.ratio is None else f"{r.ratio:.3f}x"
            print(f"{r.metric:40s} ours {r.ours:10.1f}  kamailio {r.baseline!s:>10}  "
                  f"ratio {ratio:>8}  target {r.target:9s} pass {r.passed}")


if __name__ == "__main__":
    sys.exit(main())
