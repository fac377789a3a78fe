"""Two webconf nodes on one PostgreSQL behind HAProxy, for tests/test_multinode.py (issue 10).

What docs/deployment.md ("Many nodes") tells an operator to do, on loopback:
- `webconf init DIR --database URL --share SHARE` once, users added once (the directory is in
  the database), `wcs.public_url` set to the balancer's HTTPS address;
- each node a copy of DIR whose ports differ by `WEBCONF_*` variables, started with
  `webconf serve COPY --node NAME` (its own process group, dying with us: local.ServeProcess);
- `haproxy -f CFG -db` in front of both nodes' SIP-TLS and HTTPS ports, CFG rendered from
  docs/haproxy.cfg itself (`render_haproxy_cfg`), started by the same process-long thread
  as the nodes with `PR_SET_PDEATHSIG`, so a killed test run leaves no balancer behind.

`RawChannel` is the data channel at the wire level (every frame, its `seq`, `?after=`), to
check the resume contract apart from the client library's own reconnect logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import tomli_w

from clients.wcs import Channel, WcsSession, client_ssl_context
from webconf.deploy.lifetime import die_with_parent
from webconf.deploy.local import ServeProcess, _in_spawner, add_users, free_port

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_DOC = ROOT / "docs" / "haproxy.cfg"
TENANT = "contoso.example"
LOOPBACK = "127.0.0.1"

DOC_NODES = {"n1": "10.0.0.11", "n2": "10.0.0.12"}
"""The nodes' addresses in docs/haproxy.cfg; each listens on 5061 (SIP) and 8443 (HTTPS)."""

NODE_ENV = {
    "WEBCONF_FOCUS_NODE_TIMEOUT_SECONDS": "3",
    "WEBCONF_FOCUS_HEARTBEAT_SECONDS": "0.5",
    "WEBCONF_WCS_SHUTDOWN_GRACE_SECONDS": "2",
}
"""Settings of every node here: a dead focus's lease goes stale in 3 s, not 15."""


def haproxy_missing() -> str | None:
    """Why the balancer cannot run here, or None."""
    if shutil.which("haproxy") is None:
        return "haproxy is not installed (scripts/system-deps.sh installs Debian's haproxy)"
    return None


# -- the balancer's configuration -----------------------------------------------------------------

def haproxy_substitutions(*, sip_port: int, https_port: int, nodes: Iterable[Node],
                          ca_file: Path, stats_socket: Path) -> dict[str, str]:
    """docs/haproxy.cfg text -> this run's: loopback ports, our CA and socket, no `user`
    switch (the test may not run as root), fewer connections, the log on stderr (`-db`
    keeps haproxy in the foreground)."""
    subs = {
        "    log /dev/log local0\n": "    log stderr format raw local0\n",
        "    user haproxy\n": "",
        "    group haproxy\n": "",
        "    maxconn 40000\n": "    maxconn 4000\n",  # within a test runner's descriptor limit
        "/run/haproxy/admin.sock": str(stats_socket),
        "/etc/haproxy/webconf-ca.pem": str(ca_file),
        "bind :5061\n": f"bind {LOOPBACK}:{sip_port}\n",
        "bind :8443\n": f"bind {LOOPBACK}:{https_port}\n",
    }
    for node in nodes:
        address = DOC_NODES[node.name]
        subs[f"server {node.name} {address}:5061\n"] = (
            f"server {node.name} {LOOPBACK}:{node.sip_port}\n")
        subs[f"server {node.name} {address}:8443\n"] = (
            f"server {node.name} {LOOPBACK}:{node.https_port}\n")
    return subs


def render_haproxy_cfg(template: str, substitutions: Mapping[str, str]) -> str:
    """`template` with each key replaced; a key that does not occur is an error, so the
    documented file and the tested one stay the same file."""
    text = template
    for old, new in substitutions.items():
        count = text.count(old)
        if count == 0:
            raise ValueError(f"docs/haproxy.cfg no longer contains {old!r}: update "
                             "tests/multinode.py together with the documented configuration")
        text = text.replace(old, new)
    return text


# -- the balancer process -------------------------------------------------------------------------

class Balancer:
    """`haproxy -f CFG -db` as our child: its own process group, SIGKILLed by the kernel if
    the forking thread (local.py's process-long spawner) goes away."""

    def __init__(self, workdir: Path, config: str, stats_socket: Path,
                 ports: Iterable[int]) -> None:
        self.cfg_path = workdir / "haproxy.cfg"
        self.cfg_path.write_text(config)
        self.log_path = workdir / "haproxy.log"
        self.stats_socket = stats_socket
        self.ports = list(ports)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> None:
        check = subprocess.run(["haproxy", "-c", "-q", "-f", str(self.cfg_path)],
                               capture_output=True, text=True, check=False, timeout=30)
        if check.returncode:
            raise RuntimeError(f"haproxy refuses {self.cfg_path}: {check.stderr.strip()}")
        log: IO[bytes] = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        try:
            def popen() -> subprocess.Popen[bytes]:
                return subprocess.Popen(
                    ["haproxy", "-f", str(self.cfg_path), "-db"], stdin=subprocess.DEVNULL,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    preexec_fn=die_with_parent(signal.SIGKILL))  # see lifetime.py

            self.proc = _in_spawner(popen)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-1500:]}")
            if self.stats_socket.exists() and all(_accepts(port) for port in self.ports):
                with contextlib.suppress(OSError):
                    self.command("show info")
                    return
            time.sleep(0.05)
        raise RuntimeError(f"haproxy did not listen within {timeout:g} s")

    def command(self, line: str) -> str:
        """One command on the admin socket; its answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def stats(self) -> list[dict[str, str]]:
        """`show stat` as rows (pxname, svname, status, scur, stot, ...)."""
        text = self.command("show stat").lstrip("# ")
        return list(csv.DictReader(line for line in text.splitlines() if line.strip()))

    def server(self, backend: str, name: str) -> dict[str, str]:
        for row in self.stats():
            if row["pxname"] == backend and row["svname"] == name:
                return row
        raise KeyError(f"{backend}/{name}")

    def status(self, backend: str, name: str) -> str:
        """"UP", "DOWN", "MAINT", "DRAIN", "UP 1/2" (going down), "no check", ..."""
        return self.server(backend, name)["status"]

    def wait_status(self, backend: str, name: str, wanted: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        status = ""
        while time.monotonic() < deadline:
            status = self.status(backend, name)
            if status == wanted:
                return
            time.sleep(0.05)
        raise AssertionError(f"haproxy: {backend}/{name} is {status!r}, not {wanted!r} "
                             f"after {timeout:g} s")

    async def await_status(self, backend: str, name: str, wanted: str,
                           timeout: float = 20.0) -> None:
        await asyncio.to_thread(self.wait_status, backend, name, wanted, timeout)

    def set_state(self, backend: str, name: str, state: str) -> None:
        """`ready`, `drain` (no new connections) or `maint` (none at all)."""
        answer = self.command(f"set server {backend}/{name} state {state}").strip()
        if answer:
            raise RuntimeError(f"haproxy: set server {backend}/{name} state {state}: {answer}")

    def sessions(self, backend: str, name: str) -> int:
        """Connections this server has been given so far (`stot`)."""
        return int(self.server(backend, name)["stot"] or 0)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=1):
        return True
    return False


# -- the nodes ------------------------------------------------------------------------------------

@dataclass
class Node:
    """One `webconf serve` of a copy of the deployment directory."""

    name: str
    base_dir: Path
    sip_port: int
    https_port: int
    internal_port: int
    env: dict[str, str]
    serve: ServeProcess | None = None

    @property
    def url(self) -> str:
        """This node's own HTTPS address (not the balancer's)."""
        return f"https://{LOOPBACK}:{self.https_port}"

    def start(self, timeout: float = 90.0) -> None:
        self.serve = ServeProcess(self.base_dir, self.env, args=["--node", self.name],
                                  stop_timeout=15,
                                  stderr_path=self.base_dir.parent / f"{self.name}.serve.log")
        self.serve.start(timeout)

    def kill9(self) -> None:
        """SIGKILL the node's whole process group: supervisor, focus and WCS at once."""
        assert self.serve is not None
        self.serve.kill9()

    def stop(self) -> None:
        if self.serve is not None:
            self.serve.stop()

    def log_events(self, component: str) -> list[dict[str, Any]]:
        """The JSON lines of DIR/var/log/<component>.log ("focus", "wcs", "audit")."""
        path = self.base_dir / "var" / "log" / f"{component}.log"
        events = []
        with contextlib.suppress(FileNotFoundError):
            for line in path.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        events.append(event)
        return events

    def joined(self) -> set[str]:
        """Participant ids this node's focus admitted (its `join` log lines)."""
        return {str(e.get("participant")) for e in self.log_events("focus")
                if e.get("event") == "join"}


@dataclass
class Cluster:
    """A deployment on `database_url`, two nodes of it, and HAProxy in front."""

    workdir: Path
    database_url: str
    users: Mapping[str, str]
    env: Mapping[str, str] = field(default_factory=dict)
    """Extra WEBCONF_* settings of every node."""
    node_names: tuple[str, ...] = ("n1", "n2")
    nodes: dict[str, Node] = field(default_factory=dict)
    balancer: Balancer | None = None
    sip_port: int = 0
    """The balancer's SIP-TLS port."""
    https_port: int = 0
    """The balancer's HTTPS port: `wcs.public_url`, what joins hand out."""

    @property
    def base_dir(self) -> Path:
        return self.workdir / "dep"

    @property
    def share_dir(self) -> Path:
        return self.workdir / "share"

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.https_port}"

    @property
    def ca_pem(self) -> Path:
        return self.base_dir / "certs" / "ca.pem"

    @functools.cached_property
    def ssl(self) -> ssl.SSLContext:
        return client_ssl_context(self.ca_pem)

    @property
    def lb(self) -> Balancer:
        assert self.balancer is not None, "not started"
        return self.balancer

    def node(self, name: str) -> Node:
        return self.nodes[name]

    # -- set-up -------------------------------------------------------------------------------
    def start(self) -> Cluster:
        """init, users, copies, both nodes, the balancer; everything stopped on failure."""
        try:
            self._prepare()
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                for future in [pool.submit(node.start) for node in self.nodes.values()]:
                    future.result()
            self._start_balancer()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sip_port, self.https_port = free_port(), free_port()
        ports = {name: (free_port(), free_port(), free_port()) for name in self.node_names}
        first = ports[self.node_names[0]]
        init = subprocess.run(
            [sys.executable, "-m", "webconf", "init", str(self.base_dir), "--database",
             self.database_url, "--share", str(self.share_dir), "--tenant", TENANT,
             "--sip-port", str(first[0]), "--https-port", str(first[1]),
             "--internal-port", str(first[2]), "--wss-port", "0"],  # no browsers here
            capture_output=True, text=True, check=False, timeout=120,
            env=without_webconf_env())
        if init.returncode:
            raise RuntimeError(f"webconf init failed: {init.stderr.strip()}")
        self._set_public_url()
        add_users(self.base_dir, self.users.items(), without_webconf_env())
        for name, (sip, https, internal) in ports.items():
            node_dir = self.workdir / name / "dep"
            shutil.copytree(self.base_dir, node_dir, symlinks=True,  # keys stay 0600
                            ignore=self._not_copied)
            env = {**without_webconf_env(), **NODE_ENV, **self.env,
                   "WEBCONF_FOCUS_SIP_PORT": str(sip), "WEBCONF_WCS_HTTPS_PORT": str(https),
                   "WEBCONF_WCS_INTERNAL_PORT": str(internal)}
            self.nodes[name] = Node(name, node_dir, sip, https, internal, env)

    def _not_copied(self, directory: str, names: list[str]) -> set[str]:
        """What docs/deployment.md leaves out of a node's copy: the first node's run-time
        files and the CA's private key (no serving node needs it)."""
        if Path(directory) != self.base_dir:
            return set()
        return {"var", "ca-private"} & set(names)

    def _set_public_url(self) -> None:
        """Joins hand out the balancer's address, so clients reach the WCS through it."""
        path = self.base_dir / "webconf.toml"
        doc = tomllib.loads(path.read_text())
        doc.setdefault("wcs", {})["public_url"] = self.url
        path.write_text(tomli_w.dumps(doc))

    def _start_balancer(self) -> None:
        stats_socket = self.workdir / "haproxy.sock"
        config = render_haproxy_cfg(HAPROXY_DOC.read_text(), haproxy_substitutions(
            sip_port=self.sip_port, https_port=self.https_port, nodes=self.nodes.values(),
            ca_file=self.ca_pem, stats_socket=stats_socket))
        self.balancer = Balancer(self.workdir, config, stats_socket,
                                 [self.sip_port, self.https_port])
        self.balancer.start()
        for backend in ("webconf_sip", "webconf_wcs"):
            for name in self.nodes:
                self.balancer.wait_status(backend, name, "UP")

    def stop(self) -> None:
        """The balancer first (no new connections), then the nodes, in parallel."""
        if self.balancer is not None:
            self.balancer.stop()
        threads = [threading.Thread(target=node.stop) for node in self.nodes.values()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)

    def logs(self) -> str:
        """The tail of every log of the run, for a failure message."""
        parts = []
        for path in sorted(self.workdir.rglob("*.log")):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace")[-1500:]
                parts.append(f"--- {path.relative_to(self.workdir)}\n{text}")
        return "\n".join(parts)

    # -- clients ------------------------------------------------------------------------------
    def session(self, webconf_url: str, conference: str, cookie: str) -> WcsSession:
        """A WCS session at `webconf_url`: the balancer's (`self.url`) or one node's."""
        return WcsSession(webconf_url, conference, cookie, ssl=self.ssl)


def without_webconf_env() -> dict[str, str]:
    """Our environment minus any WEBCONF_* setting a developer's shell may hold."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WEBCONF_")
            or k in ("WEBCONF_VECTORS",)}


# -- what clients receive -------------------------------------------------------------------------

class Collector:
    """Reads a `Channel` (the client library's, reconnecting) in a task, keeping every event."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.events: list[dict[str, Any]] = []
        self.ended = False
        self._changed = asyncio.Event()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for event in self.channel.events():
                self.events.append(event)
                self._changed.set()
        finally:
            self.ended = True
            self._changed.set()

    async def wait(self, predicate: Callable[[Collector], bool], what: str,
                   timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0 or (self.ended and not predicate(self)):
                raise AssertionError(
                    f"{what}: not seen within {timeout:g} s (channel end "
                    f"{self.channel.end_reason!r}); events: {summarize(self.events)}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def shared(self) -> list[str]:
        """Item ids of every `item.shared` (welcome items included), in arrival order."""
        return shared_ids(self.events)

    async def close(self) -> None:
        await self.channel.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self.task, 10)


def shared_ids(events: Iterable[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for event in events:
        if event.get("type") == "welcome":
            out += [str(entry["item"]["id"]) for entry in event.get("items", [])]
        elif event.get("type") == "item.shared":
            out.append(str(event["item"]["id"]))
    return out


def summarize(events: Iterable[dict[str, Any]]) -> list[str]:
    """Event types (with seq and item id) without keys, for assertion messages."""
    out = []
    for event in events:
        text = str(event.get("type"))
        if "seq" in event:
            text += f"#{event['seq']}"
        item = event.get("item")
        if isinstance(item, dict):
            text += f"({item.get('id')})"
        out.append(text)
    return out


class RawChannel:
    """The data channel at the wire level: one socket, every text frame, no reconnect.
    `connect(after=N)` asks to resume (docs/protocol.md: `?after=N`)."""

    def __init__(self, webconf_url: str, conference: str, cookie: str,
                 context: ssl.SSLContext) -> None:
        self.base = _wss(webconf_url)
        self.path = f"/v1/conferences/{conference}/channel"
        self.cookie = cookie
        self.context = context
        self.frames: list[dict[str, Any]] = []
        """Every frame of every connection, pongs excepted."""
        self.last_seq: int | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self, webconf_url: str | None = None, *, after: int | None = None
                      ) -> dict[str, Any]:
        """Open (at `webconf_url` if given) and return the first frame."""
        if webconf_url is not None:
            self.base = _wss(webconf_url)
        await self.drop()
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.context))
        url = self.base + self.path + ("" if after is None else f"?after={after}")
        self._ws = await self._http.ws_connect(
            url, headers={"Authorization": f"Bearer {self.cookie}"}, heartbeat=None)
        return await self.next(10)

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        """The next frame (a `{"type": "closed", ...}` pseudo-frame once the socket closed)."""
        assert self._ws is not None, "connect() first"
        while True:
            msg = await self._ws.receive(timeout=timeout)
            if msg.type == aiohttp.WSMsgType.TEXT:
                frame = json.loads(msg.data)
                if frame.get("type") == "pong":
                    continue
                self.frames.append(frame)
                if isinstance(frame.get("seq"), int):
                    self.last_seq = frame["seq"]
                return dict(frame)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                return {"type": "closed", "code": self._ws.close_code,
                        "reason": str(msg.extra or "")}

    async def until(self, predicate: Callable[[dict[str, Any]], bool], what: str,
                    timeout: float = 15.0) -> list[dict[str, Any]]:
        """Frames up to and including the first that satisfies `predicate`."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                frame = await self.next(max(left, 0.01))
            except TimeoutError:
                raise AssertionError(f"{what}: not seen within {timeout:g} s; frames: "
                                     f"{summarize(got)}") from None
            got.append(frame)
            if predicate(frame):
                return got
            if frame["type"] == "closed":
                raise AssertionError(f"{what}: the channel closed first ({frame}); frames: "
                                     f"{summarize(got)}")

    async def drop(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None

    async def close(self) -> None:
        await self.drop()
        if self._http is not None:
            await self._http.close()
            self._http = None


def _wss(webconf_url: str) -> str:
    return webconf_url.replace("https://", "wss://", 1).rstrip("/")
