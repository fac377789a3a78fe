"""`webconf serve` as a supervisor (issue 10, §8): a crashed server process is restarted on
the same ports and counted in /metrics, a crash loop ends `serve` with one line, and SIGTERM
stops the node within `wcs.shutdown_grace_seconds`, revoking open dialogs at the WCS first."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from clients.sip import ConferenceDialog, JoinResult, SipConnection
from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.deploy.local import add_users
from webconf.deploy.serve import STOP_MARGIN_SECONDS, read_restarts, state_path

from .conftest import ServeProcess

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="children are found through Linux's /proc")

USERS = {"alice@contoso.example": "alice-pw", "bob@contoso.example": "bob-pw"}
CONF = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:SUP1"
GRACE_SECONDS = 3.0


def child_pid(serve: ServeProcess, module: str) -> int:
    """The pid of the supervisor's child running `python -m <module>`."""
    children = Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()
    for pid in map(int, children):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        if module.encode() in argv and b"-m" in argv:
            return pid
    raise AssertionError(f"no {module} child of {serve.pid}")


async def wait_for_new_child(serve: ServeProcess, module: str, old_pid: int,
                             timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = child_pid(serve, module)
        except (AssertionError, OSError):
            pid = old_pid
        if pid != old_pid:
            return pid
        await asyncio.sleep(0.05)
    raise AssertionError(f"{module} was not restarted within {timeout} s")


async def http_get(cfg: Config, path: str, cookie: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {cookie}"} if cookie else {}
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg))) as http:
        async with http.get(f"{cfg.public_url}{path}", headers=headers) as resp:
            return resp.status, await resp.text()


async def wait_healthy(cfg: Config, timeout: float = 15.0) -> None:
    """Until the WCS answers /healthz on its configured port."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            status, _ = await http_get(cfg, "/healthz")
        except (aiohttp.ClientError, OSError):
            status = 0
        if status == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the WCS did not answer /healthz within {timeout} s")


async def join(cfg: Config, address: str) -> tuple[SipConnection, ConferenceDialog, JoinResult]:
    conn = await SipConnection.open("127.0.0.1", cfg.focus.sip_port,
                                    ssl_context=tls.client_context(cfg),
                                    server_hostname="contoso.example")
    dialog = ConferenceDialog(conn, CONF, address, USERS[address])
    return conn, dialog, await dialog.join()


def items_path(result: JoinResult) -> str:
    return f"/v1/conferences/{result.conference}/items"


def restarts_metric(text: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith("webconf_restarts{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('"')[1]] = float(value)
    return found


@pytest.fixture
async def users(deployment: Config) -> Config:
    await asyncio.to_thread(add_users, deployment.base_dir, USERS.items())
    return deployment


async def test_killed_children_are_restarted_on_their_ports(users: Config,
                                                            serve: ServeProcess) -> None:
    cfg = users
    await asyncio.to_thread(serve.start)
    status, text = await http_get(cfg, "/metrics")
    assert status == 200 and restarts_metric(text) == {"focus": 0, "wcs": 0}

    old_wcs = child_pid(serve, "conferencing")
    killed_at = time.monotonic()
    os.kill(old_wcs, signal.SIGKILL)
    await wait_for_new_child(serve, "conferencing", old_wcs)
    await wait_healthy(cfg)  # on the port of the config, as before
    assert time.monotonic() - killed_at < 10
    assert serve.proc is not None and serve.proc.poll() is None
    conn, _, result = await join(cfg, "alice@contoso.example")  # the focus reaches it again
    assert (await http_get(cfg, items_path(result), result.cookie))[0] == 200
    await conn.close()
    status, text = await http_get(cfg, "/metrics")
    assert restarts_metric(text) == {"focus": 0, "wcs": 1}

    old_focus = child_pid(serve, "focus")
    os.kill(old_focus, signal.SIGKILL)
    await wait_for_new_child(serve, "focus", old_focus)
    deadline = time.monotonic() + 15
    while True:  # the new focus is ready once it accepts a join on the same SIP port
        try:
            conn, _, result = await join(cfg, "bob@contoso.example")
            break
        except OSError:
            assert time.monotonic() < deadline, "the focus did not come back"
            await asyncio.sleep(0.1)
    assert result.role == "attendee"
    await conn.close()
    status, text = await http_get(cfg, "/metrics")
    assert restarts_metric(text) == {"focus": 1, "wcs": 1}
    assert read_restarts(cfg, serve.pid) == {"focus": 1, "wcs": 1}

    stderr = serve.stderr_text()
    assert "webconf: wcs exited with -9; restarting it in" in stderr
    assert "webconf: focus exited with -9; restarting it in" in stderr
    assert await asyncio.to_thread(serve.terminate) == 0
    assert not state_path(cfg).exists()


async def test_crash_loop_ends_serve_with_one_line(deployment: Config,
                                                   serve: ServeProcess) -> None:
    serve.args = ["--max-restarts", "2", "--restart-window", "60"]
    await asyncio.to_thread(serve.start)
    # A config broken after start: every new WCS dies reading it, at once.
    with open(deployment.base_dir / "webconf.toml", "a") as f:
        f.write("\nthis is = = not toml\n")
    os.kill(child_pid(serve, "conferencing"), signal.SIGKILL)
    assert serve.proc is not None
    code = await asyncio.to_thread(serve.proc.wait, 30)
    assert code == 1
    lines = serve.stderr_text().strip().splitlines()
    assert [line for line in lines if "crash loop" in line] == [lines[-1]]
    # A restarted WCS that cannot read its config says so in one line and exits 2 (like a
    # schema error), which is not a database outage: still a crash loop.
    assert lines[-1].startswith("webconf: wcs exited with 2 after 2 restarts within 60 s")
    assert str(deployment.log_dir / "wcs.log") in lines[-1]
    assert sum("restarting it in" in line for line in lines) == 2
    wcs_log = (deployment.log_dir / "wcs.log").read_text()
    assert "Traceback" not in wcs_log
    said = [line for line in wcs_log.splitlines() if line.startswith("wcs: ")]
    assert len(said) == 2 and all("webconf.toml" in line for line in said), said


async def test_sigterm_with_open_dialog_revokes_it_within_the_grace(users: Config,
                                                                    serve: ServeProcess) -> None:
    cfg = users
    serve.env["WEBCONF_WCS_SHUTDOWN_GRACE_SECONDS"] = str(GRACE_SECONDS)
    await asyncio.to_thread(serve.start)
    conn, _, result = await join(cfg, "alice@contoso.example")
    assert (await http_get(cfg, items_path(result), result.cookie))[0] == 200
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg))) as http:
        ws_url = result.webconf_url.replace("https", "wss") + \
            f"/v1/conferences/{result.conference}/channel"
        async with http.ws_connect(ws_url, headers={
                "Authorization": f"Bearer {result.cookie}"}) as ws:
            assert (await asyncio.wait_for(ws.receive_json(), 5))["type"] == "welcome"
            assert serve.proc is not None
            started = time.monotonic()
            serve.proc.send_signal(signal.SIGTERM)
            # The focus stops first, so the revocation reaches a WCS that still runs.
            assert (await asyncio.wait_for(ws.receive_json(), 10))["type"] == "revoked"
            closing = await asyncio.wait_for(ws.receive(), 10)  # answers the close frame
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            code = await asyncio.to_thread(serve.proc.wait, 30)
            elapsed = time.monotonic() - started
    await conn.close()
    assert code == 0
    assert elapsed < GRACE_SECONDS + STOP_MARGIN_SECONDS, (elapsed, serve.stderr_text())
    assert "did not stop" not in serve.stderr_text()

    async with ServeProcess(cfg.base_dir):  # the cookie stays refused after a restart
        assert (await http_get(cfg, items_path(result), result.cookie))[0] == 401


async def test_sigterm_right_after_every_bye_exits_promptly(users: Config,
                                                            serve: ServeProcess) -> None:
    cfg = users
    await asyncio.to_thread(serve.start)  # the default grace (10 s): it must not wait for it
    joined = [await join(cfg, address) for address in USERS]
    for _, dialog, _ in joined:
        assert await dialog.leave() == 200
    assert serve.proc is not None
    started = time.monotonic()
    serve.proc.send_signal(signal.SIGTERM)  # while the BYEs' revocations may be in flight
    code = await asyncio.to_thread(serve.proc.wait, 30)
    elapsed = time.monotonic() - started
    for conn, _, _ in joined:
        await conn.close()
    assert code == 0
    assert elapsed < 3.0, elapsed
    # Both BYEs' revocations reached the WCS in time (over the internal link or HTTP):
    # their cookies are refused once the node is back.
    async with ServeProcess(cfg.base_dir):
        for _, _, result in joined:
            assert (await http_get(cfg, items_path(result), result.cookie))[0] == 401


async def test_sigterm_with_a_channel_that_never_closes_still_ends_in_time(
        users: Config, serve: ServeProcess) -> None:
    """A client that never answers the close frame holds its channel in the WCS's drain:
    the drain ends at what the node's stop left of the grace, not a full grace later."""
    cfg = users
    serve.env["WEBCONF_WCS_SHUTDOWN_GRACE_SECONDS"] = str(GRACE_SECONDS)
    await asyncio.to_thread(serve.start)
    conn, _, result = await join(cfg, "alice@contoso.example")
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg))) as http:
        ws_url = result.webconf_url.replace("https", "wss") + \
            f"/v1/conferences/{result.conference}/channel"
        async with http.ws_connect(ws_url, autoclose=False, headers={
                "Authorization": f"Bearer {result.cookie}"}) as ws:
            assert (await asyncio.wait_for(ws.receive_json(), 5))["type"] == "welcome"
            assert serve.proc is not None
            started = time.monotonic()
            serve.proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(serve.proc.wait, 30)
            elapsed = time.monotonic() - started
    await conn.close()
    assert code == 0
    # Within the node's budget; the last half second is the supervisor's own exit.
    assert elapsed < GRACE_SECONDS + STOP_MARGIN_SECONDS + 0.5, (elapsed, serve.stderr_text())
