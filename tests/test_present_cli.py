"""Presenting from the clients (docs/protocol.md §9.1): `MeetingClient.set_page`/`follow`,
`webconf present` turning a PDF's pages, and `webconf join` printing each turn, as real
subprocesses against a real `webconf serve`."""

from __future__ import annotations

import argparse
import asyncio
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pypdf import PdfWriter

from clients.meeting import FocusAddress, MeetingClient
from clients.present import parse_interval, parse_pages
from clients.wcs import WcsError
from webconf.deploy.config import Config

from .test_cli import ROOT, Follow, _env, assert_no_secrets, cli_args, run, serving_stack, uri
from .test_focus_e2e import USERS

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    yield from serving_stack(tmp_path_factory, "present")


def pdf_file(folder: Path, pages: int, name: str = "deck.pdf") -> Path:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=320, height=240)
    out = io.BytesIO()
    writer.write(out)
    path = folder / name
    path.write_bytes(out.getvalue())
    return path


def client(cfg: Config, conf: str, address: str) -> MeetingClient:
    return MeetingClient(uri(conf), address, USERS[address],
                         focus=FocusAddress("127.0.0.1", cfg.focus.sip_port),
                         ca_pem=cfg.certs_dir / "ca.pem")


def test_parse_pages_and_interval() -> None:
    assert parse_pages("1-5") == (1, 5) and parse_pages("3") == (3, 3)
    assert parse_interval("2s") == 2.0 and parse_interval("500ms") == 0.5
    assert parse_interval("1.5") == 1.5 and parse_interval("1m") == 60.0
    for bad in ("0", "5-2", "a-b", "-1"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_pages(bad)
    for bad in ("fast", "10ms", "0s", "-1s"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_interval(bad)


async def test_meeting_client_sets_follows_and_browses(stack: Config, tmp_path: Path) -> None:
    alice, bob = client(stack, "PR1", ALICE), client(stack, "PR1", BOB)
    try:
        await alice.join()
        await bob.join()
        item = await alice.share(pdf_file(tmp_path, 4))
        assert item["pages"] == 4
        await bob.open_channel()
        turns: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()

        async def watch() -> None:
            async for event in bob.events():
                if event["type"] == "presentation.changed":
                    await turns.put(bob.presentation and (bob.presentation.item,
                                                          bob.presentation.page))

        watcher = asyncio.create_task(watch())
        state = await alice.set_page(item["id"], 2)
        assert state is not None and state["page"] == 2 and state["presenter"]
        assert await asyncio.wait_for(turns.get(), 10) == (item["id"], 2)
        assert bob.view == (item["id"], 2)
        bob.follow(False)  # browse on one's own: the presenter's turns no longer move us
        bob.browse(item["id"], 4)
        await alice.set_page(item["id"], 3, via_channel=True)
        assert await asyncio.wait_for(turns.get(), 10) == (item["id"], 3)
        assert bob.presentation is not None and bob.presentation.page == 3
        assert bob.view == (item["id"], 4)
        bob.follow(True)
        assert bob.view == (item["id"], 3)
        # A late joiner lands on the current page: `webconf join` prints it from its welcome.
        late = await asyncio.to_thread(run, stack, "join", "PR1", BOB, "--duration", "1")
        assert late.returncode == 0, late.stderr
        assert any(line.startswith("presentation deck.pdf page 3 (item ")
                   for line in late.stdout.splitlines()), late.stdout
        with pytest.raises(WcsError) as refused:  # attendees do not turn pages
            await bob.set_page(item["id"], 1)
        assert refused.value.status == 403
        with pytest.raises(WcsError) as out_of_range:
            await alice.set_page(item["id"], 5)
        assert out_of_range.value.status == 400 and out_of_range.value.code == (
            "page_out_of_range")
        await alice.set_page(None)
        assert await asyncio.wait_for(turns.get(), 10) is None
        assert bob.view is None
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
    finally:
        for who in (alice, bob):
            await who.leave()
            await who.close()


def test_present_turns_pages_and_join_prints_them(stack: Config, tmp_path: Path) -> None:
    deck = pdf_file(tmp_path, 5)
    # alice opens the conference first (bob, an attendee, cannot create it).
    opened = run(stack, "join", "PR2", ALICE, "--duration", "0.5")
    assert opened.returncode == 0, opened.stderr
    bob = Follow(cli_args(stack, "join", "PR2", BOB, "--duration", "60"), _env(BOB, None))
    try:
        bob.wait_for(r"^joined PR2 as attendee")
        proc = run(stack, "present", "PR2", ALICE, str(deck), "--pages", "2-4",
                   "--interval", "0.3s", timeout=60)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("joined PR2 as organizer")
        assert any(line.startswith("shared deck.pdf -> item ") and line.endswith("5 pages")
                   for line in lines), lines
        assert [line.split(" (")[0] for line in lines if line.startswith("page ")] == [
            "page 2/5", "page 3/5", "page 4/5"]
        assert lines[-2:] == ["presentation stopped", "left"]
        for page in (2, 3, 4):
            bob.wait_for(rf"^presentation deck\.pdf page {page} \(item ")
        bob.wait_for(r"^presentation stopped$")
        # A page range past the PDF's end: a usage error once the page count is known.
        proc = run(stack, "present", "PR2", ALICE, str(deck), "--pages", "9", timeout=60)
        assert proc.returncode == 2 and "deck.pdf has 5 pages" in proc.stderr
    finally:
        bob.proc.terminate()
        bob.finish()
    assert_no_secrets("\n".join(bob.lines))


def test_present_with_a_deployment_directory(stack: Config, tmp_path: Path) -> None:
    deck = pdf_file(tmp_path, 2)
    proc = subprocess.run(
        [sys.executable, "-m", "webconf", "present", str(stack.base_dir), str(deck),
         "--user", ALICE, "--interval", "200ms", "--conference", "PR3"],
        capture_output=True, text=True, env=_env(ALICE, None), cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "page 1/2" in proc.stdout and "page 2/2" in proc.stdout
    assert proc.stdout.startswith("joined PR3 as organizer")


def test_present_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "webconf", "present", "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 0 and "DIR-or-URI" in proc.stdout and "--interval" in proc.stdout
