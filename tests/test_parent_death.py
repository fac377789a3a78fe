"""Servers die with whoever started them (issue 9, item 6).

A test run killed from outside once left a `webconf serve` with its focus and WCS running,
holding their ports. Here a real parent process starts a deployment the way the tests,
the demo, the load tester and the benches do (`webconf.deploy.local`), gets SIGKILL, and
every server process must be gone within seconds with its ports free again. The same for a
supervisor killed alone: its focus and WCS follow it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from webconf.deploy.config import Config

from .conftest import ServeProcess

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="PR_SET_PDEATHSIG and /proc are Linux's")

ROOT = Path(__file__).resolve().parents[1]
GONE_WITHIN = 15.0
"""Seconds: SIGTERM reaches the supervisor, which stops an idle focus and WCS at once."""

# A parent that starts a deployment, reports it on stdout as one JSON line, then waits to
# be killed. MODE picks the path: the shared helper from asyncio (the load tester's), or
# `ServeProcess.start` from an `asyncio.to_thread` worker that then exits (the tests').
PARENT = textwrap.dedent("""
    import asyncio, json, sys, time
    from pathlib import Path
    from webconf.deploy.local import LocalDeployment, ServeProcess, create_deployment

    async def main(mode, work):
        if mode == "local":
            local = LocalDeployment(users=[("alice@contoso.example", "pw")])
            cfg = await local.astart()
            serve = local.serve
        else:
            cfg = create_deployment(Path(work) / "dep")
            serve = ServeProcess(cfg.base_dir)
            await asyncio.to_thread(serve.start)
        # The worker threads that asked for the fork end here: the server must not care.
        await asyncio.get_running_loop().shutdown_default_executor()
        await asyncio.sleep(1.0)
        assert serve.proc.poll() is None, "the server died with a worker thread"
        print(json.dumps({"supervisor": serve.pid, "ports": [
            cfg.focus.sip_port, cfg.wcs.https_port, cfg.wcs.internal_port]}), flush=True)
        time.sleep(600)

    asyncio.run(main(sys.argv[1], sys.argv[2]))
""")

# A pytest run whose fixture serves a deployment, like tests/test_serve.py's.
FIXTURE_TEST = textwrap.dedent("""
    import json, os, time
    from tests.conftest import backend, deployment, serve  # noqa: F401 - the fixtures

    def test_hangs(deployment, serve):
        serve.start()
        report = {"supervisor": serve.pid, "ports": [
            deployment.focus.sip_port, deployment.wcs.https_port, deployment.wcs.internal_port]}
        with open(os.environ["REPORT"], "w") as f:
            json.dump(report, f)
        time.sleep(600)
""")


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def running(pid: int) -> bool:
    """True while the process exists and is not a zombie (a reaper may be slow or absent)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def server_pids(supervisor: int) -> dict[str, int]:
    """The supervisor and its focus and WCS, by the module each child runs."""
    pids = {"supervisor": supervisor}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(pids) < 3:
        for child in children(supervisor):
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"conferencing" in cmdline:
                pids["wcs"] = child
            elif b"focus" in cmdline:
                pids["focus"] = child
        time.sleep(0.05)
    assert set(pids) == {"supervisor", "wcs", "focus"}, pids
    return pids


def assert_all_gone(pids: dict[str, int], ports: list[int]) -> None:
    deadline = time.monotonic() + GONE_WITHIN
    while time.monotonic() < deadline:
        alive = {name: pid for name, pid in pids.items() if running(pid)}
        busy = [port for port in ports if not port_free(port)]
        if not alive and not busy:
            return
        time.sleep(0.1)
    raise AssertionError(f"still running after {GONE_WITHIN} s: {alive}; ports in use: {busy}")


def kill_if_running(pids: dict[str, int]) -> None:
    """Clean up after a failed assertion: the whole point is to leave nothing behind."""
    for pid in pids.values():
        if running(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("mode", ["local", "to_thread"])
def test_servers_die_when_their_parent_is_killed(mode: str, tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, mode, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids: dict[str, int] = {}
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line, parent.stderr.read() if parent.stderr else ""
        report = json.loads(line)
        pids = server_pids(report["supervisor"])
        assert all(not port_free(port) for port in report["ports"])
        parent.kill()
        parent.wait(10)
        assert_all_gone(pids, report["ports"])
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)
        kill_if_running(pids)


def test_a_killed_pytest_run_leaves_no_server(tmp_path: Path) -> None:
    """The case of issue 9: `make test` killed while a fixture's server runs."""
    test_file = tmp_path / "test_hangs.py"
    test_file.write_text(FIXTURE_TEST)
    report_path = tmp_path / "report.json"
    env = {**os.environ, "REPORT": str(report_path)}
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), str(test_file)], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pids: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 120
        while not report_path.exists() or not report_path.read_text():
            assert run.poll() is None, "the pytest run ended before its server was up"
            assert time.monotonic() < deadline, "the fixture's server never came up"
            time.sleep(0.1)
        time.sleep(0.1)  # the report is written in one small write; let it land
        report = json.loads(report_path.read_text())
        pids = server_pids(report["supervisor"])
        run.kill()
        run.wait(10)
        assert_all_gone(pids, report["ports"])
    finally:
        if run.poll() is None:
            run.kill()
            run.wait(10)
        kill_if_running(pids)


def test_focus_and_wcs_die_with_a_killed_supervisor(deployment: Config,
                                                    serve: ServeProcess) -> None:
    serve.start()
    pids = server_pids(serve.pid)
    ports = [deployment.focus.sip_port, deployment.wcs.https_port, deployment.wcs.internal_port]
    try:
        os.kill(serve.pid, signal.SIGKILL)  # the supervisor alone, not its process group
        assert serve.proc is not None
        serve.proc.wait(10)
        assert_all_gone(pids, ports)
    finally:
        kill_if_running(pids)
