"""Real third-party SIP user agents join conferences on the focus (`webconf serve`, real TLS).

- baresip 1.0 (Debian `baresip-core`): TLS 1.3, Digest MD5 (the focus's per-User-Agent
  override), stays in the dialog, hangs up on SIGINT; the focus logs join and leave.
- pjsua2 (PyPI `pjsua2-python`, run by `tests/agents/pjsua2_driver.py` in its own process):
  TLS 1.2 with server verification, reads the join JSON from the multipart 200 OK and opens the
  data channel with the cookie; BYE revokes it.
- linphonec 5.1 (Debian `linphone-cli`): TLS 1.2 (mbedTLS 2), Digest SHA-256, verifies the
  focus's certificate against the tenant domain it dials.

Each test skips only when its agent is not installed. Every agent runs with a hard timeout in
its own process group, which is always killed; its output is in the assertion messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import importlib.util
import json
import os
import platform
import pty
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from focus.directory import Directory
from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.protocol import valid_id

from .conftest import ServeProcess

pytestmark = pytest.mark.slow  # third-party SIP agents: `make test` runs them, not test-fast

USER, PASSWORD = "alice@contoso.example", "alice-pw"
DRIVER = Path(__file__).parent / "agents" / "pjsua2_driver.py"


def conference_uri(conf: str) -> str:
    return f"sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:{conf}"


# -- the stack ----------------------------------------------------------------------------
async def add_user(cfg: Config) -> None:
    directory = await Directory.for_deployment(cfg)
    try:
        await directory.add_user(USER, PASSWORD)
    finally:
        await directory.close()


@pytest.fixture
def start_stack(deployment: Config, serve: ServeProcess) -> Callable[..., Config]:
    """Start `webconf serve` with a user alice; keyword arguments become WEBCONF_* overrides."""

    def start(**env: str) -> Config:
        asyncio.run(add_user(deployment))
        serve.env["WEBCONF_FOCUS_LEAVE_GRACE_SECONDS"] = "2"
        serve.env.update(env)
        serve.start()
        return deployment

    return start


def focus_events(cfg: Config) -> list[dict[str, Any]]:
    path = cfg.log_dir / "focus.log"
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


def find_event(cfg: Config, event: str, conference: str) -> dict[str, Any] | None:
    for e in focus_events(cfg):
        if e.get("event") == event and e.get("conference") == conference:
            return e
    return None


def wait_event(cfg: Config, event: str, conference: str, timeout: float,
               alive: Callable[[], bool] = lambda: True) -> dict[str, Any] | None:
    """The focus's first `event` line for `conference`, polling the log until `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = find_event(cfg, event, conference)
        if found is not None or not alive():
            return found or find_event(cfg, event, conference)
        time.sleep(0.1)
    return None


# -- agent processes ------------------------------------------------------------------------
class Agent:
    """One agent process in its own session; output goes to a file; always killed."""

    def __init__(self, argv: list[str], out: Path, *, env: dict[str, str] | None = None,
                 cwd: Path | None = None, use_pty: bool = False) -> None:
        self.out = out
        self.master: int | None = None
        self._buf = bytearray()
        self._reader: threading.Thread | None = None
        if use_pty:  # linphonec only runs its core from readline's hook on a terminal
            self.master, slave = pty.openpty()
            self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave,
                                         env=env, cwd=cwd, start_new_session=True)
            os.close(slave)
            self._reader = threading.Thread(target=self._read_pty, daemon=True)
            self._reader.start()
        else:
            with out.open("wb") as sink:
                self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink,
                                             stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                             start_new_session=True)

    def _read_pty(self) -> None:
        assert self.master is not None
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if ready:
                    data = os.read(self.master, 65536)
                    if not data:
                        return
                    self._buf.extend(data)
                elif self.proc.poll() is not None:
                    return
            except OSError:
                return

    def send(self, line: str) -> None:
        assert self.master is not None
        os.write(self.master, line.encode() + b"\n")

    def output(self) -> str:
        if self.master is not None:
            return self._buf.decode("utf-8", "replace")
        return self.out.read_text("utf-8", "replace") if self.out.exists() else ""

    def wait_output(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.proc.poll() is not None:
                return text in self.output()
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(2)
        if self.master is not None:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.out.write_bytes(bytes(self._buf))
            self.master = None

    def report(self, limit: int = 12000) -> str:
        text = self.output()
        if len(text) > limit:
            text = "...\n" + text[-limit:]
        return f"\n--- {self.out.name} (rc={self.proc.poll()}) ---\n{text}"


@contextlib.contextmanager
def running(agent: Agent, timeout: float) -> Iterator[Agent]:
    """Kill the agent's process group after `timeout` seconds, and always on exit."""
    timer = threading.Timer(timeout, agent.kill)
    timer.start()
    try:
        yield agent
    finally:
        timer.cancel()
        agent.kill()


# -- baresip ------------------------------------------------------------------------------------
def write_wav(path: Path, seconds: float) -> None:
    """8 kHz mono 16-bit silence: the only format baresip 1.0's aufile source plays here."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\0\0" * int(8000 * seconds))


def baresip_modules() -> Path:
    for base in ("/usr/lib/baresip", "/usr/local/lib/baresip",
                 f"/usr/lib/{platform.machine()}-linux-gnu/baresip"):
        if (Path(base) / "modules" / "aufile.so").exists():
            return Path(base) / "modules"
    return Path("/usr/lib/baresip/modules")


def baresip_config(directory: Path, cfg: Config) -> None:
    directory.mkdir()
    # aufile reaches the end of its file -> "audio error" -> baresip hangs up: make it long.
    write_wav(directory / "silence.wav", 60)
    (directory / "config").write_text("\n".join([
        "poll_method epoll",
        "sip_listen 127.0.0.1:0",
        f"sip_cafile {cfg.certs_dir / 'ca.pem'}",
        "call_local_timeout 20",
        f"audio_source aufile,{directory / 'silence.wav'}",
        f"audio_player aufile,{directory / 'played.wav'}",
        f"audio_alert aufile,{directory / 'alert.wav'}",
        f"module_path {baresip_modules()}",
        "module g711.so",
        "module aufile.so",
        "module_tmp account.so",
        "module_app menu.so",  # the /dial command
        "",
    ]))
    port = cfg.focus.sip_port
    (directory / "accounts").write_text(
        f"<sip:alice@contoso.example;transport=tls>;auth_pass={PASSWORD};"
        f'outbound="sip:127.0.0.1:{port};transport=tls";regint=0;pubint=0;mwi=no;'
        "answermode=manual\n")


def baresip_version() -> str:
    out = subprocess.run(["baresip", "-h"], capture_output=True, text=True, timeout=10)
    first = (out.stdout + out.stderr).split()
    return " ".join(first[:2]) if first else "?"


@pytest.mark.skipif(shutil.which("baresip") is None,
                    reason="baresip not installed (Debian baresip-core; `make sysdeps`)")
def test_baresip_joins_over_tls13_with_md5_stays_and_hangs_up(
        start_stack: Callable[..., Config], tmp_path: Path) -> None:
    cfg = start_stack()
    conf = "BARESIP1"
    baresip_config(tmp_path / "baresip", cfg)
    argv = ["baresip", "-f", str(tmp_path / "baresip"), "-n", "127.0.0.1", "-s", "-t", "40",
            "-e", f"/dial {conference_uri(conf)}"]
    if shutil.which("stdbuf"):
        argv = ["stdbuf", "-o0", "-e0", *argv]
    agent = Agent(argv, tmp_path / "baresip.out", cwd=tmp_path)
    with running(agent, 30):
        join = wait_event(cfg, "join", conf, 15, agent.alive)
        assert join is not None, "baresip never joined" + agent.report()
        assert join["user"] == USER and join["role"] == "organizer", join
        assert join["tls"] == "TLSv1.3", join
        assert agent.wait_output("Call established", 5), agent.report()
        # the focus offered baresip MD5 only (SHA-256 ends its call: "Function not implemented")
        challenges = [line for line in agent.output().splitlines()
                      if line.startswith("WWW-Authenticate:")]
        assert challenges and all("algorithm=MD5" in c for c in challenges), agent.report()
        time.sleep(3)  # it stays in the dialog
        assert agent.alive(), "baresip left early" + agent.report()
        assert find_event(cfg, "leave", conf) is None, "left early" + agent.report()
        agent.proc.send_signal(signal.SIGINT)  # baresip hangs up its calls (BYE) and exits
        leave = wait_event(cfg, "leave", conf, 10)
        assert leave is not None, "no leave after hang-up" + agent.report()
        assert leave["reason"] == "bye" and leave["participant"] == join["participant"], leave
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.proc.wait(5)
    print(f"baresip: {baresip_version()}; negotiated {join['tls']}")


# -- pjsua2 -------------------------------------------------------------------------------------
def pjsua2_missing() -> str | None:
    if importlib.util.find_spec("pjsua2") is not None:
        return None
    if platform.machine() != "x86_64":
        return f"no pjsua2 wheel for this architecture ({platform.machine()})"
    return "pjsua2 not installed (pip install -e '.[agents]' installs pjsua2-python)"


class Pjsua2:
    """The driver script as an asyncio subprocess speaking JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process, log: Path) -> None:
        self.proc = proc
        self.log = log
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def start(cls, cfg: Config, tmp_path: Path, conf: str, *, ca: Path | None = None,
                    name: str = "pjsua2") -> Pjsua2:
        log = tmp_path / f"{name}.log"
        argv = [sys.executable, str(DRIVER),
                "--proxy", f"sip:127.0.0.1:{cfg.focus.sip_port};transport=tls;lr",
                "--ca", str(ca or cfg.certs_dir / "ca.pem"), "--user", USER,
                "--password", PASSWORD, "--uri", conference_uri(conf), "--tls", "1.2",
                "--hold", "20"]
        with log.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=sink, start_new_session=True)
        return cls(proc, log)

    async def next_event(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        assert line, "pjsua2 driver exited" + self.report()
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    async def hangup(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"hangup\n")
        await self.proc.stdin.drain()

    async def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), 5)

    def report(self, limit: int = 12000) -> str:
        text = self.log.read_text("utf-8", "replace") if self.log.exists() else ""
        if len(text) > limit:
            text = "...\n" + text[-limit:]
        return f"\n--- events ---\n{self.events}\n--- {self.log.name} ---\n{text}"


def split_multipart(content_type: str, body: str) -> dict[str, str]:
    """Parts by content type, parsed by the standard library (not the focus's own parser)."""
    raw = f"Content-Type: {content_type}\r\n\r\n{body}".encode()
    message = email.message_from_bytes(raw, policy=email.policy.HTTP)
    assert message.is_multipart(), content_type
    return {part.get_content_type(): part.get_payload(decode=True).decode()
            for part in message.iter_parts()}


@pytest.mark.skipif(pjsua2_missing() is not None, reason=str(pjsua2_missing()))
async def test_pjsua2_joins_over_tls12_reads_multipart_and_opens_channel(
        start_stack: Callable[..., Config], tmp_path: Path) -> None:
    cfg = await asyncio.to_thread(start_stack)
    conf = "PJSUA1"
    agent = await Pjsua2.start(cfg, tmp_path, conf)
    try:
        async with asyncio.timeout(30):
            version = await agent.next_event(10)
            answered = await agent.next_event(20)
            assert answered["status"] == 200, agent.report()
            assert answered["state"] == "CONFIRMED", agent.report()
            assert answered["tls"] == "TLSv1.2", agent.report()
            assert answered["tls_info"]["verify_status"] == 0, agent.report()  # verified
            assert answered["contact"].endswith(";isfocus"), answered["contact"]
            assert answered["content_type"].startswith("multipart/mixed"), agent.report()
            parts = split_multipart(answered["content_type"], answered["body"])
            sdp_answer = parts["application/sdp"]
            m_lines = [line for line in sdp_answer.splitlines() if line.startswith("m=")]
            assert m_lines and all(line.split()[1] != "0" for line in m_lines), sdp_answer
            assert "a=inactive" in sdp_answer, sdp_answer
            joined = json.loads(parts["application/vnd.webconf.join+json"])
            # The join body names the WCS's public id, not the URI's (docs/protocol.md §2.1).
            assert valid_id(joined["conference"]) and joined["role"] == "organizer", joined
            async with aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg))) as http:
                ws_url = joined["webconf_url"].replace("https", "wss", 1) + \
                    f"/v1/conferences/{joined['conference']}/channel"
                async with http.ws_connect(ws_url, headers={
                        "Authorization": f"Bearer {joined['cookie']}"}) as ws:
                    welcome = await asyncio.wait_for(ws.receive_json(), 5)
                    assert welcome["type"] == "welcome", welcome
                    await agent.hangup()
                    ended = await agent.next_event(10)
                    assert ended["state"] == "DISCONNECTED", agent.report()
                    revoked = await asyncio.wait_for(ws.receive_json(), 5)
                    assert revoked["type"] == "revoked", revoked
            await asyncio.wait_for(agent.proc.wait(), 10)
    finally:
        await agent.kill()
    join = find_event(cfg, "join", conf)
    assert join is not None and join["tls"] == "TLSv1.2", focus_events(cfg)
    leave = await asyncio.to_thread(wait_event, cfg, "leave", conf, 5)
    assert leave is not None and leave["reason"] == "bye", focus_events(cfg)
    print(f"pjsua2: pjsip {version['pjsip']}; negotiated {answered['tls']} "
          f"{answered['tls_info'].get('cipher')}")


@pytest.mark.skipif(pjsua2_missing() is not None, reason=str(pjsua2_missing()))
async def test_pjsua2_refuses_a_focus_its_ca_did_not_certify(
        start_stack: Callable[..., Config], tmp_path: Path) -> None:
    """verify_server is really on: with another CA the handshake fails and nobody joins."""
    from webconf.deploy import pki

    cfg = await asyncio.to_thread(start_stack)
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(pki.generate_ca("some other CA")[0])
    agent = await Pjsua2.start(cfg, tmp_path, "PJSUA2", ca=other_ca, name="pjsua2-other-ca")
    try:
        async with asyncio.timeout(30):
            await agent.next_event(10)
            answered = await agent.next_event(20)
            assert answered["status"] != 200, agent.report()
            await asyncio.wait_for(agent.proc.wait(), 10)
    finally:
        await agent.kill()
    assert "PJSIP_TLS_ECERTVERIF" in agent.log.read_text(), agent.report()
    assert find_event(cfg, "join", "PJSUA2") is None


# -- linphonec ----------------------------------------------------------------------------------
def linphone_rc(path: Path, cfg: Config) -> None:
    port = cfg.focus.sip_port
    # The proxy is the tenant domain with maddr=127.0.0.1: belle-sip connects to the maddr and
    # verifies the certificate against the domain (its mbedTLS 2 cannot match IP SANs).
    proxy = f"sip:contoso.example:{port};transport=tls;maddr=127.0.0.1"
    path.write_text(f"""[sip]
sip_port=-1
sip_tcp_port=-1
sip_tls_port=-1
auto_net_state_mon=0
verify_server_certs=1
verify_server_cn=1
root_ca={cfg.certs_dir / 'ca.pem'}
default_proxy=0
register_only_when_network_is_up=0
ipv6_enabled=0

[net]
firewall_policy=0

[rtp]
audio_rtp_port=40000-40999

[sound]
echocancellation=0

[video]
enabled=0
capture=0
display=0

[proxy_0]
reg_proxy=<{proxy}>
reg_route=<{proxy};lr>
reg_identity=sip:alice@contoso.example
reg_expires=3600
reg_sendregister=0
publish=0
dial_escape_plus=0

[auth_info_0]
username=alice
userid=alice
passwd={PASSWORD}
realm=contoso.example
domain=contoso.example
""")


def linphone_version() -> str:
    out = subprocess.run(["linphonec", "-v"], capture_output=True, text=True, timeout=10)
    return (out.stdout + out.stderr).strip().splitlines()[-1] if out.stdout + out.stderr else "?"


@pytest.mark.skipif(shutil.which("linphonec") is None,
                    reason="linphonec not installed (Debian linphone-cli; `make sysdeps`)")
def test_linphonec_joins_over_tls12_and_terminates(start_stack: Callable[..., Config],
                                                   tmp_path: Path) -> None:
    # The focus's Contact carries its public host; linphone reaches it on a new connection and
    # verifies it by name, which mbedTLS 2 cannot do for an IP address: advertise "localhost"
    # (the deployment's certificate names it).
    cfg = start_stack(WEBCONF_SERVER_PUBLIC_HOST="localhost")
    conf = "LINPHONE1"
    home = tmp_path / "home"
    (home / ".local" / "share" / "linphone").mkdir(parents=True)  # its call-history DB
    rc = tmp_path / "linphonerc"
    linphone_rc(rc, cfg)
    log = tmp_path / "linphone-debug.log"
    env = {**os.environ, "HOME": str(home), "TERM": "dumb"}
    agent = Agent(["linphonec", "-c", str(rc), "-d", "6", "-l", str(log)],
                  tmp_path / "linphonec.out", env=env, cwd=tmp_path, use_pty=True)

    def report() -> str:
        debug = log.read_text("utf-8", "replace")[-8000:] if log.exists() else ""
        return agent.report() + f"\n--- {log.name} (tail) ---\n{debug}"

    with running(agent, 30):
        assert agent.wait_output("linphonec>", 10), report()
        time.sleep(1)  # let the core bring its transports up
        agent.send(f"call {conference_uri(conf)}")
        join = wait_event(cfg, "join", conf, 15, agent.alive)
        assert join is not None, "linphonec never joined" + report()
        assert join["user"] == USER and join["tls"] == "TLSv1.2", join
        assert agent.wait_output("connected", 5), report()
        time.sleep(2)
        assert find_event(cfg, "leave", conf) is None, "left early" + report()
        agent.send("terminate")
        leave = wait_event(cfg, "leave", conf, 10)
        assert leave is not None and leave["reason"] == "bye", "no BYE" + report()
        agent.send("quit")
        agent.wait_output("Terminating", 5)
    debug = log.read_text("utf-8", "replace") if log.exists() else ""
    assert "cname=contoso.example" in debug, report()  # verified against the tenant domain
    assert "algorithm=SHA-256" in debug, report()  # it answered the first (SHA-256) challenge
    print(f"linphonec: {linphone_version()}; negotiated {join['tls']}")
