"""The SIP join load generator of `bench/sip_joins.py`: asyncio over raw protocols.

One join, as it drives any server (ours or Kamailio):
INVITE -> [401 -> ACK -> INVITE with Digest] -> 100 -> 200 -> ACK -> BYE -> 200.

Requests are built from bytes templates, responses read with a minimal head parser (only
the fields the join needs) and writes batched per read, so that the generator is not the
bottleneck; a 401 is answered by `webconf.sip.digest_client`. `generate()`
runs it in separate processes (`python -m bench.sip_gen SPEC_JSON`, uvloop when installed),
synchronised on wall-clock windows: each round has a warm-up, then a measured window in
which only completions are counted, then a drain (no new joins; in-flight ones finish, so
no dialog is left behind). Failed joins (a non-200 final answer, a timeout, a lost
connection) are counted over the whole run, warm-up and drain included: a burst at the
start must not fail either.

CPU: the servers' processes are read from /proc/<pid>/stat (utime + stime, every thread)
at both ends of the measured window, per group (e.g. focus, wcs, postgres; kamailio); the
CPU milliseconds per join of a group is its CPU time over the window divided by the joins
completed in it. The generator's own CPU time is reported too, to show who is saturated.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from webconf.deploy.lifetime import die_with_parent
from webconf.sip import digest, digest_client

from .common import cpu_seconds, percentile

ROOT = Path(__file__).resolve().parents[1]


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
    domain: str
    """The users' domain (`user@domain`)."""
    conference_uri: str
    """The Request-URI and To of every INVITE."""
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
    started: int = 0
    """Joins started over the whole run (warm-up, window and drain)."""
    succeeded: int = 0
    """Joins completed over the whole run."""
    first_failed: int = 0
    """Failed joins among the first `concurrency` started (in "reused" mode: the burst sent
    at once when the connection opened)."""
    challenged: int = 0
    """401/407 challenges answered with credentials (the Digest dance happened)."""
    leftover: int = 0
    """Calls still in flight when the drain gave up."""
    cpu_seconds: float = 0.0
    """This process's CPU time over the window."""


class _Call:
    __slots__ = ("call_id", "from_tag", "user", "cseq", "branch", "started", "authed",
                 "answered", "on_done", "n", "seq")

    def __init__(self, call_id: bytes, from_tag: bytes, user: bytes, started: float,
                 on_done: Callable[[_Call, str | None], None], seq: int = 0) -> None:
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
        self.seq = seq


_WANTED = {b"call-id": b"i", b"i": b"i", b"cseq": b"cseq", b"to": b"t", b"t": b"t",
           b"contact": b"m", b"m": b"m", b"content-length": b"l", b"l": b"l",
           b"www-authenticate": b"w"}
_URI_IN_BRACKETS = re.compile(rb"<([^>]*)>")


def _parse_head(head: bytes) -> tuple[int, dict[bytes, Any]]:
    """(status, {short name: value}) of a response head; status 0 for a request."""
    lines = head.split(b"\r\n")
    start = lines[0]
    status = int(start[8:11]) if start.startswith(b"SIP/2.0 ") else 0
    fields: dict[bytes, Any] = {b"reason": start[12:]} if status else {}
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
                    self.gen.result.challenged += 1
                    call.cseq += 1
                    self._invite(call, auth)
                    return
            reason = fields.get(b"reason", b"").decode(errors="replace")
            self._end(call, f"INVITE {status} {reason}".strip())
        elif method == b"BYE" and status >= 200:
            self._end(call, None if status == 200 else f"BYE {status} " + fields.get(
                b"reason", b"").decode(errors="replace"))

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
        self.conf_uri = spec.conference_uri.encode()
        transport = b"TLS" if spec.tls else b"TCP"
        self.invite_line = b"INVITE " + self.conf_uri + b" SIP/2.0\r\n"
        self.via_start = b"Via: SIP/2.0/" + transport + b" "
        self.at_domain = b"@" + spec.domain.encode()
        self.to_line = b"To: <" + self.conf_uri + b">\r\n"
        self.ua_line = b"User-Agent: " + spec.user_agent.encode() + b"\r\n"
        self.invite_tail = (b"Accept: application/vnd.webconf.join+json\r\n" + self.ua_line
                            + b"Content-Length: 0\r\n\r\n")
        self.tag = spec.tag.encode()
        self.conns: list[_Conn] = []

    def new_call(self, on_done: Callable[[_Call, str | None], None],
                 started: float | None) -> _Call:
        self.seq += 1
        self.result.started += 1
        n = self.seq
        return _Call(b"%s-%d" % (self.tag, n), b"%x" % n, self.users[n % len(self.users)],
                     time.monotonic() if started is None else started, on_done, n)

    def authorization(self, call: _Call, challenges: list[bytes]) -> bytes | None:
        """The Authorization header line answering the first usable challenge (the
        server's order), built by `webconf.sip.digest_client`; HA1s are cached per user."""
        usable = digest_client.parse_challenges(raw.decode(errors="replace")
                                                for raw in challenges)
        if not usable:
            return None
        challenge = usable[0]
        key = (call.user, challenge.realm, challenge.algorithm)
        ha1 = self.ha1.get(key)
        if ha1 is None:
            ha1 = self.ha1[key] = digest.ha1(call.user.decode(), challenge.realm,
                                             self.spec.password, challenge.algorithm)
        value = digest_client.authorization(
            challenge, username=call.user.decode(), method="INVITE",
            uri=self.spec.conference_uri, ha1_hex=ha1, cnonce=f"{call.n:x}{self.seq:x}")
        return b"Authorization: " + value.encode() + b"\r\n"

    def done(self, call: _Call, error: str | None) -> None:
        now = time.monotonic()
        if error is not None:
            self.errors[error] += 1
            if call.seq <= self.spec.concurrency:
                self.result.first_failed += 1
            return
        self.result.succeeded += 1
        if self.window_start <= now < self.window_end:
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


def gen_process(spec_json: str) -> None:
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
    cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds over the window, per process group (the servers' and "generator")."""
    started: int = 0
    succeeded: int = 0
    first_failed: int = 0
    challenged: int = 0
    window_s: float = 0.0

    @property
    def failed(self) -> int:
        """Joins that did not complete (any non-200 final answer, timeout, lost connection),
        over the whole run."""
        return sum(self.errors.values())

    @property
    def cpu_ms_per_join(self) -> dict[str, float]:
        """CPU milliseconds per join, per process group: what contention does not change."""
        if self.completed <= 0:
            return {}
        return {name: round(1000 * s / self.completed, 3) for name, s in self.cpu_s.items()}

    @property
    def server_cpu_ms_per_join(self) -> float | None:
        """The servers' CPU milliseconds per join (every group but the generator)."""
        if self.completed <= 0:
            return None
        return round(1000 * sum(s for name, s in self.cpu_s.items() if name != "generator")
                     / self.completed, 3)

    def brief(self) -> dict[str, Any]:
        return {"joins_per_s": round(self.rate, 1), "errors": self.errors,
                "p50_ms": self.latency_ms_p50, "p99_ms": self.latency_ms_p99,
                "cpu_pct": self.cpu, "cpu_ms_per_join": self.cpu_ms_per_join,
                "server_cpu_ms_per_join": self.server_cpu_ms_per_join,
                "connections": self.connections, "started": self.started,
                "succeeded": self.succeeded, "challenged": self.challenged,
                **({"leftover": self.leftover} if self.leftover else {})}


def _cpu_by_pid(groups: dict[str, list[int]]) -> dict[str, dict[int, float]]:
    return {name: {p: cpu_seconds(p) for p in pids} for name, pids in groups.items()}


def cpu_delta(before: dict[str, dict[int, float]],
              after: dict[str, dict[int, float]]) -> dict[str, float]:
    """CPU seconds per group between two /proc readings. A process read only at the end
    started inside the window and counts whole; one gone by the end is lost (its share is
    unknowable from /proc), which can only understate a group."""
    out = {}
    for name, now in after.items():
        then = before.get(name, {})
        out[name] = round(sum(max(0.0, s - then.get(p, 0.0)) for p, s in now.items()), 4)
    return out


def generate(*, host: str, port: int, tls: bool, ca_file: str | None, server_hostname: str,
             mode: str, concurrency: int, processes: int, users: list[str], password: str,
             domain: str, conference_uri: str, warmup: float, duration: float,
             server_pids: Callable[[], dict[str, list[int]]], tag: str,
             call_timeout: float = 10.0) -> Measurement:
    """Run `processes` generator processes for one round; sum their results.
    `server_pids` is called at both ends of the window (process sets may change)."""
    start_at = time.time() + 1.5  # time for the generator interpreters to import
    per_proc = [concurrency // processes + (1 if i < concurrency % processes else 0)
                for i in range(processes)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    procs = []
    for i, n in enumerate(per_proc):
        spec = GenSpec(host=host, port=port, tls=tls, ca_file=ca_file,
                       server_hostname=server_hostname, mode=mode, concurrency=n, users=users,
                       password=password, domain=domain, conference_uri=conference_uri,
                       start_at=start_at, warmup=warmup, duration=duration,
                       call_timeout=call_timeout, tag=f"{tag}p{i}")
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sip_gen", json.dumps(asdict(spec))],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            env=env, preexec_fn=die_with_parent())  # see webconf/deploy/lifetime.py
        procs.append(proc)
    window_start = start_at + warmup
    time.sleep(max(0.0, window_start - time.time()))
    t0 = time.time()
    before = _cpu_by_pid(server_pids())
    time.sleep(max(0.0, window_start + duration - time.time()))
    after = _cpu_by_pid(server_pids())
    elapsed = time.time() - t0
    cpu_s = cpu_delta(before, after)
    cpu = {name: round(100 * s / elapsed, 1) for name, s in cpu_s.items()}
    results: list[dict[str, Any]] = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=duration + call_timeout + 60)
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
    completed = connections = leftover = started = succeeded = first_failed = challenged = 0
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
        started += res["started"]
        succeeded += res["succeeded"]
        first_failed += res["first_failed"]
        challenged += res["challenged"]
        gen_cpu += res["cpu_seconds"]
    cpu_s["generator"] = round(gen_cpu, 4)
    cpu["generator"] = round(100 * gen_cpu / duration, 1)
    return Measurement(rate=completed / duration, completed=completed, errors=dict(errors),
                       latency_ms_p50=round(percentile(latencies, 50), 2),
                       latency_ms_p99=round(percentile(latencies, 99), 2), cpu=cpu,
                       connections=connections, leftover=leftover, cpu_s=cpu_s,
                       started=started, succeeded=succeeded, first_failed=first_failed,
                       challenged=challenged, window_s=round(elapsed, 3))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.sip_gen SPEC_JSON (bench.sip_gen.generate starts it)")
    gen_process(sys.argv[1])
