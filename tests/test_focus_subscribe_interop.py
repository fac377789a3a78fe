"""Interop: SIPp, a third-party SIP stack, subscribes to a conference's roster and reads
its NOTIFYs (docs/protocol.md §9.3). Debian's SIPp (`sip-tester`, installed by
scripts/system-deps.sh) has no TLS, so it talks to the focus's plain-TCP listener
(`focus.tcp_port`); the scenario is tests/agents/sipp_subscribe.xml: Digest (MD5, the only
algorithm SIPp computes), the full NOTIFY checked, then `Expires: 0` and the terminated
NOTIFY."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import pytest

from webconf.deploy.config import Config
from webconf.deploy.lifetime import die_with_parent
from webconf.protocol import conference_uri

from .test_focus_bye import focus_events, sip_join
from .test_focus_subscribe_e2e import stack  # noqa: F401 - the fixture

SCENARIO = Path(__file__).resolve().parent / "agents" / "sipp_subscribe.xml"
pytestmark = pytest.mark.skipif(shutil.which("sipp") is None,
                                reason="sipp not installed (scripts/system-deps.sh: sip-tester)")


async def test_sipp_subscribes_and_reads_notifies(stack: Config, tmp_path: Path) -> None:  # noqa: F811
    cfg = stack
    alice_conn, alice = await sip_join(cfg, "alice@contoso.example")
    auth_uri = conference_uri("alice@contoso.example", "E2E1").removeprefix("sip:")
    cmd = ["sipp", f"127.0.0.1:{cfg.focus.tcp_port}", "-sf", str(SCENARIO),
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
        assert proc.returncode == 0, (proc.returncode, errors[-2000:],
                                      proc.stderr.decode(errors="replace")[-2000:])
        subscribed = [e for e in focus_events(cfg) if e.get("event") == "subscribe"]
        assert [e["user"] for e in subscribed] == ["bob@contoso.example"]
        await alice.leave()
    finally:
        await alice_conn.close()
