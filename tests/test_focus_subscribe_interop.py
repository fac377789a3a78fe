"""Interop: SIPp, a third-party SIP stack, subscribes to a conference's roster and reads
its NOTIFYs (docs/protocol.md §9.3). Debian's SIPp (`sip-tester`, installed by
scripts/system-deps.sh) is built without TLS, so it runs twice: on the focus's plain-TCP
listener (`focus.tcp_port`), and over real TLS to the focus's SIPS listener through socat,
which does the TLS (verifying the deployment's certificate) while SIPp speaks SIP. The
scenario is tests/agents/sipp_subscribe.xml: Digest (MD5, the only algorithm SIPp
computes), the full NOTIFY checked, then `Expires: 0` and the terminated NOTIFY."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from webconf.deploy.config import Config
from webconf.deploy.lifetime import die_with_parent
from webconf.deploy.local import free_port
from webconf.protocol import conference_uri

from .test_focus_bye import focus_events, sip_join
from .test_focus_subscribe_e2e import stack  # noqa: F401 - the fixture

SCENARIO = Path(__file__).resolve().parent / "agents" / "sipp_subscribe.xml"
pytestmark = pytest.mark.skipif(shutil.which("sipp") is None,
                                reason="sipp not installed (scripts/system-deps.sh: sip-tester)")


async def tls_relay(cfg: Config) -> tuple[int, subprocess.Popen[bytes]]:
    """socat: plain TCP on a loopback port in, TLS to the focus's SIPS listener out (the
    deployment's CA, its name checked, SNI sent), for one connection."""
    port = free_port()
    relay = subprocess.Popen(
        ["socat", "-d", "-d", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
         f"OPENSSL:127.0.0.1:{cfg.focus.sip_port},cafile={cfg.certs_dir / 'ca.pem'},"
         "verify=1,commonname=localhost"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent())
    for _ in range(100):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()  # socat serves one connection: that probe was it, start another
        await asyncio.to_thread(relay.wait, 5)
        relay = subprocess.Popen(relay.args, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 preexec_fn=die_with_parent())
        await asyncio.sleep(0.2)
        return port, relay
    relay.kill()
    raise AssertionError("socat did not listen")


def _relay_log(relay: subprocess.Popen[bytes]) -> bytes:
    relay.kill()
    out = relay.communicate(timeout=5)[1]
    return out or b""


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_sipp_subscribes_and_reads_notifies(stack: Config, tmp_path: Path,  # noqa: F811
                                                  transport: str) -> None:
    cfg = stack
    relay: subprocess.Popen[bytes] | None = None
    if transport == "tls":
        if shutil.which("socat") is None:
            pytest.skip("socat not installed (scripts/system-deps.sh installs it)")
        port, relay = await tls_relay(cfg)
    else:
        port = cfg.focus.tcp_port
    alice_conn, alice = await sip_join(cfg, "alice@contoso.example")
    auth_uri = conference_uri("alice@contoso.example", "E2E1").removeprefix("sip:")
    cmd = ["sipp", f"127.0.0.1:{port}", "-sf", str(SCENARIO),
           "-s", "bob", "-ap", "bob-pw", "-key", "domain", "contoso.example",
           "-key", "conf", "E2E1", "-auth_uri", auth_uri, "-t", "t1", "-i", "127.0.0.1",
           "-m", "1", "-nostdin", "-timeout", "30s", "-trace_err",
           "-error_file", str(tmp_path / "errors.log")]
    try:
        proc = await asyncio.to_thread(
            subprocess.run, cmd, cwd=tmp_path, capture_output=True, timeout=60,
            stdin=subprocess.DEVNULL, preexec_fn=die_with_parent())
        errors = (tmp_path / "errors.log").read_text() if (tmp_path / "errors.log").exists() \
            else ""
        relayed = b"" if relay is None else _relay_log(relay)
        assert proc.returncode == 0, (proc.returncode, errors[-2000:],
                                      proc.stderr.decode(errors="replace")[-2000:],
                                      relayed.decode(errors="replace")[-2000:])
        subscribed = [e for e in focus_events(cfg) if e.get("event") == "subscribe"]
        assert [(e["user"], e["transport"]) for e in subscribed][-1:] == [
            ("bob@contoso.example", "TLS" if transport == "tls" else "TCP")]
        await alice.leave()
    finally:
        await alice_conn.close()
        if relay is not None:
            relay.kill()
            relay.wait()
