"""`webconf demo` itself, as CI runs it: a whole meeting, verified, exit 0."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from clients.meeting import FocusAddress, MeetingClient

from .test_web_cobblestone import CHROMIUM, WEB, browser_tools


def test_demo_prints_a_verified_meeting() -> None:
    proc = subprocess.run([sys.executable, "-m", "webconf", "demo", "--big-mib", "20"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "verified: 20/20 downloads identical" in out
    assert "6 participants joined over SIP" in out
    assert "BYE -> {200}" in out
    # The presentation: every page turned, each turn reaching every attendee.
    for page in range(1, 7):
        assert f"page {page}/6: every attendee on page {page}" in out
    assert "6 pages turned, every attendee on the same page after each turn" in out
    assert "eyJ" not in out  # no cookie ever printed


def test_demo_keep_leaves_the_meeting_open_for_a_browser(tmp_path: Path) -> None:
    """`webconf demo --keep`: after the verified script, the meeting stays open; the printed
    URL serves the page, the printed newcomer's login joins over SIP as an attendee and sees
    the organizer's slides turn, and so does headless chromium with the printed pins
    (web/test/newcomer.mjs, when node and chromium are installed); SIGINT then ends it
    cleanly (exit 0) and the directory is kept."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "webconf", "demo", "--big-mib", "20", "--attendees", "1",
         "--keep", "--turn-seconds", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    printed: dict[str, str] = {}
    work: Path | None = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # up to the last of the printed lines (or the end)
            seen.append(line)
            key, _, value = line.strip().partition(": ")
            if key in ("url", "user", "password", "conference", "ca", "chromium"):
                printed[key] = value
            if "webconf serve is up: focus sips:" in line:
                printed["focus"] = line.rsplit("sips:", 1)[1].strip()
            if "turning a page every" in line:
                break
        assert {"url", "user", "password", "conference", "ca", "focus"} <= printed.keys(), \
            "".join(seen)
        assert printed["user"] == "guest@contoso.example"
        assert "--ignore-certificate-errors-spki-list=" in printed["chromium"]
        ca = Path(printed["ca"])
        work = ca.parents[2]
        context = ssl.create_default_context(cafile=str(ca))
        with urllib.request.urlopen(printed["url"], context=context, timeout=30) as resp:
            assert resp.status == 200
            assert b'id="conference"' in resp.read()
        pages = asyncio.run(_newcomer_sees_slides_turn(printed, ca))
        assert len(pages) >= 2
        if shutil.which("node") and Path(CHROMIUM).exists():  # the README's way: chromium
            seen_in_browser = _newcomer_in_chromium(printed, tmp_path / "screenshots")
            assert seen_in_browser["role"] == "attendee" and seen_in_browser["left"] is True
            assert len(set(seen_in_browser["pages"])) == 3
            assert "alice@contoso.example is presenting" in seen_in_browser["presenting"]
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(seen) + rest
        assert "the organizer leaves" in rest and f"kept {work}" in rest.replace("\n", "")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _newcomer_in_chromium(printed: dict[str, str], shots: Path) -> dict[str, Any]:
    """Open the printed URL in headless chromium with the printed SPKI pins (the printed
    `chromium` line's), join with the printed login and watch three pages go by."""
    node = browser_tools()
    assert (WEB / "dist" / "index.html").is_file(), "web/dist is missing: run `make web`"
    pins = printed["chromium"].split("--ignore-certificate-errors-spki-list=", 1)[1].split()[0]
    run = subprocess.run([
        node, str(WEB / "test" / "newcomer.mjs"), "--url", printed["url"], "--spki", pins,
        "--user", printed["user"], "--password", printed["password"],
        "--conference", printed["conference"], "--shots", str(shots), "--chromium", CHROMIUM],
        capture_output=True, text=True, timeout=180, check=False)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result (exit {run.returncode}): {run.stderr[-3000:]}"
    found: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in found, f"{found['error']}\n{found['console']}\nscreenshots: {shots}"
    return found


async def _newcomer_sees_slides_turn(printed: dict[str, str], ca: Path) -> set[int]:
    """Join as the printed newcomer; the pages the presentation showed, once two differ."""
    host, port = printed["focus"].rsplit(":", 1)
    client = MeetingClient(printed["conference"], printed["user"], printed["password"],
                           focus=FocusAddress(host, int(port)), ca_pem=ca)
    try:
        await client.join()
        assert client.role == "attendee"
        roster = await client.load_roster()
        assert "alice@contoso.example" in {m.user for m in roster.values()}
        await client.open_channel()
        pages: set[int] = set()

        async def watch() -> None:
            async for _event in client.events():
                if client.view is not None:
                    pages.add(client.view[1])
                if len(pages) >= 2:
                    return

        await asyncio.wait_for(watch(), 60)
        assert await client.leave() == 200
        return pages
    finally:
        await client.close()
