"""Decks in, slides out (docs/protocol.md §9.4): a shared `.pptx`/`.odp` becomes a derived
PDF item, converted by the real LibreOffice in its sandbox, or an `item.conversion` failure.

Everything is real: an in-process WCS over TLS, the real `soffice` and `unshare`, the
decks of tests/vectors/decks/ (their README says how they were made). The tests that run
LibreOffice are marked `slow` (a conversion takes a second or two); they skip only when
`soffice` is not installed (`scripts/system-deps.sh` installs it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pypdf
import pytest
from aiohttp import WSMsgType

from conferencing import soffice
from conferencing.convert import probe_sandbox
from conferencing.store import Store
from webconf.crypto.cobblestone import Decryptor
from webconf.deploy.config import Config, ConfigError, load_config

from .conftest import VECTORS, Participant, Wcs, running_wcs, wait_for

DECKS = VECTORS / "decks"
ORGANIZER = "alice@contoso.example"
CONVERSION_WAIT = 90.0
"""How long a test waits for a conversion's event: LibreOffice on a loaded 2-core CI box."""
needs_soffice = pytest.mark.skipif(shutil.which("soffice") is None,
                                   reason="LibreOffice (soffice) is not installed: "
                                          "scripts/system-deps.sh installs libreoffice-impress")
slow = [needs_soffice, pytest.mark.slow]


# -- helpers ------------------------------------------------------------------------------------

def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def open_channel(wcs: Wcs, who: Participant) -> aiohttp.ClientWebSocketResponse:
    url = wcs.url.replace("https://", "wss://", 1)
    ws = await wcs.http.ws_connect(f"{url}/v1/conferences/{who.conference}/channel",
                                   headers=who.headers, heartbeat=None)
    welcome = await next_event(ws, 10.0)
    assert welcome["type"] == "welcome"
    return ws


async def next_event(ws: aiohttp.ClientWebSocketResponse,
                     timeout: float = CONVERSION_WAIT) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == WSMsgType.TEXT, (msg.type, msg.data)
    data: dict[str, Any] = json.loads(msg.data)
    return data


async def events_of(ws: aiohttp.ClientWebSocketResponse, count: int,
                    types: tuple[str, ...] = ("item.shared", "item.conversion", "item.removed"),
                    ) -> list[dict[str, Any]]:
    """The next `count` events of these types (others, such as joins, skipped)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + CONVERSION_WAIT
    while len(out) < count:
        data = await next_event(ws, max(0.1, deadline - time.monotonic()))
        if data["type"] in types:
            out.append(data)
    return out


async def upload(wcs: Wcs, who: Participant, deck: str, *, name: str | None = None,
                 content_type: str = soffice.PPTX_TYPE) -> dict[str, Any]:
    status, body = await wcs.upload(who, (DECKS / deck).read_bytes(), name=name or deck,
                                    content_type=content_type)
    assert status == 201, body
    item: dict[str, Any] = body["item"]
    return item


async def plaintext_of(wcs: Wcs, who: Participant, shared: dict[str, Any]) -> bytes:
    """An `item.shared`'s content, fetched as ciphertext and decrypted with its pushed key."""
    async with wcs.http.get(shared["item"]["url"], headers=who.headers) as resp:
        assert resp.status == 200
        blob = await resp.read()
    dec = Decryptor(b64d(shared["key"]), b64d(shared["context"]))
    return dec.update(blob) + dec.finalize()


async def items(wcs: Wcs, who: Participant) -> list[dict[str, Any]]:
    async with wcs.http.get(f"{wcs.url}/v1/conferences/{who.conference}/items",
                            headers=who.headers) as resp:
        assert resp.status == 200
        listed: list[dict[str, Any]] = (await resp.json())["items"]
        return listed


async def metric(wcs: Wcs, line_start: str) -> float:
    async with wcs.http.get(f"{wcs.url}/metrics") as resp:
        text = await resp.text()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(line_start))


def job_dirs(cfg: Config) -> list[Path]:
    root = cfg.var_dir / "convert"
    return list(root.iterdir()) if root.exists() else []


def converter_processes(cfg: Config) -> list[int]:
    """Processes whose command line names this deployment's job directories."""
    marker = str(cfg.var_dir / "convert").encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


async def no_plaintext_left(cfg: Config) -> None:
    """Every job directory removed and every LibreOffice process gone (bounded wait: the
    event can overtake the last removal by a moment)."""
    await wait_for(lambda: not job_dirs(cfg) and not converter_processes(cfg), 15.0)


@contextlib.asynccontextmanager
async def tuned(cfg: Config, **settings: Any) -> AsyncIterator[Wcs]:
    """A WCS of `cfg` with these `wcs.*` settings changed."""
    for key, value in settings.items():
        assert hasattr(cfg.wcs, key), key
        setattr(cfg.wcs, key, value)
    async with running_wcs(cfg) as client:
        yield client


# -- conversions --------------------------------------------------------------------------------

@pytest.mark.slow
@needs_soffice
async def test_a_pptx_becomes_a_derived_pdf_with_a_fresh_key(wcs: Wcs) -> None:
    alice = await wcs.admit("DECK1", ORGANIZER)
    bob = await wcs.admit("DECK1", "bob@contoso.example", organizer=ORGANIZER)
    ws = await open_channel(wcs, bob)
    deck = await upload(wcs, alice, "three-slides.pptx")
    assert "derived_from" not in deck
    original, derived = await events_of(ws, 2)
    assert original["type"] == "item.shared" and original["item"]["id"] == deck["id"]
    assert derived["type"] == "item.shared", derived
    pdf_item = derived["item"]
    assert pdf_item["derived_from"] == deck["id"]
    assert pdf_item["name"] == "three-slides.pdf"
    assert pdf_item["content_type"] == "application/pdf"
    assert pdf_item["presenter"] == deck["presenter"]
    assert derived["key"] != original["key"]  # its own fresh key
    assert derived["context"] != original["context"]
    pdf = await plaintext_of(wcs, bob, derived)
    assert pdf.startswith(b"%PDF-")
    assert len(pypdf.PdfReader(io.BytesIO(pdf)).pages) == 3
    assert pdf_item["pages"] == 3 and "pages" not in deck  # counted at its commit (§9.1)
    assert pdf_item["size"] == len(pdf)
    assert len(pdf_item["sha256"]) == 64
    # The deck stays as it was: both are listed, the PDF after its deck.
    listed = await items(wcs, bob)
    assert [i["id"] for i in listed] == [deck["id"], pdf_item["id"]]
    assert listed[1]["derived_from"] == deck["id"] and "derived_from" not in listed[0]
    assert await plaintext_of(wcs, bob, original) == (DECKS / "three-slides.pptx").read_bytes()
    await no_plaintext_left(wcs.cfg)
    assert await metric(wcs, 'webconf_conversions_total{outcome="converted"}') == 1
    assert await metric(wcs, "webconf_conversion_seconds_count") == 1
    await ws.close()


@pytest.mark.slow
@pytest.mark.sqlite_only
@needs_soffice
async def test_an_odp_known_by_its_name_alone_converts(wcs: Wcs) -> None:
    alice = await wcs.admit("DECK2", ORGANIZER)
    ws = await open_channel(wcs, alice)
    deck = await upload(wcs, alice, "two-slides.odp", name="Quarterly review.ODP",
                        content_type="application/octet-stream")
    _, derived = await events_of(ws, 2)
    assert derived["item"]["derived_from"] == deck["id"]
    assert derived["item"]["name"] == "Quarterly review.pdf"
    pdf = await plaintext_of(wcs, alice, derived)
    assert len(pypdf.PdfReader(io.BytesIO(pdf)).pages) == 2
    assert derived["item"]["pages"] == 2
    await no_plaintext_left(wcs.cfg)
    await ws.close()


@pytest.mark.slow
@needs_soffice
async def test_a_corrupt_pptx_stays_shared_and_the_server_goes_on(wcs: Wcs) -> None:
    alice = await wcs.admit("DECK3", ORGANIZER)
    ws = await open_channel(wcs, alice)
    deck = await upload(wcs, alice, "corrupt.pptx", name="broken.pptx")
    shared, failed = await events_of(ws, 2)
    assert shared["item"]["id"] == deck["id"]
    assert failed == {"type": "item.conversion", "item": deck["id"], "status": "failed",
                      "error": soffice.UNREADABLE, "seq": shared["seq"] + 1}
    assert [i["id"] for i in await items(wcs, alice)] == [deck["id"]]
    assert await plaintext_of(wcs, alice, shared) == (DECKS / "corrupt.pptx").read_bytes()
    await no_plaintext_left(wcs.cfg)
    async with wcs.http.get(f"{wcs.url}/healthz") as resp:
        assert resp.status == 200
    assert await metric(wcs, 'webconf_conversions_total{outcome="unreadable"}') == 1
    # The worker is still there for the next deck.
    good = await upload(wcs, alice, "three-slides.pptx")
    _, derived = await events_of(ws, 2)
    assert derived["item"]["derived_from"] == good["id"]
    await ws.close()


@pytest.mark.slow
@pytest.mark.sqlite_only
@needs_soffice
async def test_a_conversion_past_its_timeout_is_killed_and_cleaned_up(deployment: Config) -> None:
    async with tuned(deployment, convert_timeout_seconds=0.2) as wcs:
        alice = await wcs.admit("DECK4", ORGANIZER)
        ws = await open_channel(wcs, alice)
        deck = await upload(wcs, alice, "three-slides.pptx")
        _, failed = await events_of(ws, 2)
        assert failed["type"] == "item.conversion" and failed["item"] == deck["id"]
        assert failed["error"] == soffice.timed_out(0.2) == "the conversion timed out after 0.2 s"
        await no_plaintext_left(wcs.cfg)
        assert [i["id"] for i in await items(wcs, alice)] == [deck["id"]]
        assert await metric(wcs, 'webconf_conversions_total{outcome="timeout"}') == 1
        await ws.close()


@pytest.mark.slow
@pytest.mark.sqlite_only
@needs_soffice
async def test_the_memory_cap_holds(deployment: Config) -> None:
    """LibreOffice needs about 500 MiB of address space: under 300 MiB it fails, so the
    cap is applied to it."""
    async with tuned(deployment, convert_memory_bytes=300 * 1024**2) as wcs:
        alice = await wcs.admit("DECK5", ORGANIZER)
        ws = await open_channel(wcs, alice)
        deck = await upload(wcs, alice, "three-slides.pptx")
        _, failed = await events_of(ws, 2)
        assert failed == {"type": "item.conversion", "item": deck["id"], "status": "failed",
                          "error": soffice.CRASHED, "seq": failed["seq"]}
        await no_plaintext_left(wcs.cfg)
        await ws.close()


@pytest.mark.slow
@pytest.mark.sqlite_only
@needs_soffice
async def test_a_full_queue_refuses_the_next_deck(deployment: Config) -> None:
    async with tuned(deployment, convert_queue_length=0, convert_concurrency=1) as wcs:
        alice = await wcs.admit("DECK6", ORGANIZER)
        ws = await open_channel(wcs, alice)
        first = await upload(wcs, alice, "three-slides.pptx")
        await wait_for(lambda: bool(job_dirs(wcs.cfg)), 30.0)  # the only worker is busy now
        second = await upload(wcs, alice, "two-slides.odp", content_type=soffice.ODP_TYPE)
        events = await events_of(ws, 4)
        failed = [e for e in events if e["type"] == "item.conversion"]
        assert failed == [{"type": "item.conversion", "item": second["id"], "status": "failed",
                           "error": soffice.QUEUE_FULL, "seq": failed[0]["seq"]}]
        derived = [e["item"] for e in events if e["type"] == "item.shared"
                   and "derived_from" in e["item"]]
        assert [d["derived_from"] for d in derived] == [first["id"]]
        await no_plaintext_left(wcs.cfg)
        assert await metric(wcs, 'webconf_conversions_total{outcome="queue_full"}') == 1
        await ws.close()


@pytest.mark.slow
@needs_soffice
async def test_deleting_a_deck_deletes_its_pdf(wcs: Wcs) -> None:
    alice = await wcs.admit("DECK7", ORGANIZER)
    ws = await open_channel(wcs, alice)
    deck = await upload(wcs, alice, "three-slides.pptx")
    _, derived = await events_of(ws, 2)
    pdf_id = derived["item"]["id"]
    async with wcs.http.delete(f"{wcs.url}/v1/conferences/{alice.conference}/items/"
                               f"{deck['id']}", headers=alice.headers) as resp:
        assert resp.status == 204
    removed = await events_of(ws, 2)
    assert [e["item"]["id"] for e in removed] == [deck["id"], pdf_id]
    assert await items(wcs, alice) == []
    async with wcs.http.get(derived["item"]["key_url"], headers=alice.headers) as resp:
        assert resp.status == 404
    await no_plaintext_left(wcs.cfg)
    await ws.close()


@pytest.mark.slow
@needs_soffice
async def test_a_deck_deleted_while_it_converts_leaves_nothing(wcs: Wcs) -> None:
    alice = await wcs.admit("DECK11", ORGANIZER)
    ws = await open_channel(wcs, alice)
    deck = await upload(wcs, alice, "three-slides.pptx")
    await wait_for(lambda: bool(converter_processes(wcs.cfg)), 30.0)
    async with wcs.http.delete(f"{wcs.url}/v1/conferences/{alice.conference}/items/"
                               f"{deck['id']}", headers=alice.headers) as resp:
        assert resp.status == 204
    await no_plaintext_left(wcs.cfg)
    # The PDF's commit found its deck gone (or, had LibreOffice been quicker than the
    # delete, the PDF went with its deck): nothing is left, and nothing failed.
    assert await items(wcs, alice) == []
    assert await metric(wcs, 'webconf_conversions_total{outcome="converted"}') + await metric(
        wcs, 'webconf_conversions_total{outcome="dropped"}') == 1
    await ws.send_json({"type": "ping"})
    seen = []
    while (event := await next_event(ws, 10.0))["type"] != "pong":
        seen.append(event["type"])
    assert "item.conversion" not in seen
    await ws.close()


@pytest.mark.slow
@pytest.mark.sqlite_only
@needs_soffice
async def test_the_pdf_is_shared_after_its_presenter_left(wcs: Wcs) -> None:
    alice = await wcs.admit("DECK12", ORGANIZER)
    carol = await wcs.admit("DECK12", "carol@contoso.example", organizer=ORGANIZER,
                            role="presenter")
    ws = await open_channel(wcs, alice)
    deck = await upload(wcs, carol, "three-slides.pptx")
    assert await wcs.revoke(carol) == 204
    events = await events_of(ws, 2, types=("item.shared",))
    assert events[1]["item"]["derived_from"] == deck["id"]
    assert events[1]["item"]["presenter"] == "sip:carol@contoso.example"
    await ws.close()


@pytest.mark.slow
@pytest.mark.sqlite_only
@needs_soffice
async def test_stopping_the_wcs_kills_a_running_conversion(deployment: Config) -> None:
    async with tuned(deployment, convert_timeout_seconds=600.0) as wcs:
        alice = await wcs.admit("DECK8", ORGANIZER)
        deck = await upload(wcs, alice, "three-slides.pptx")
        await wait_for(lambda: bool(converter_processes(deployment)), 30.0)
        assert job_dirs(deployment)
    # Stopped: LibreOffice killed, its directory gone, the presenter told (in the log,
    # which a resuming channel replays).
    assert not converter_processes(deployment)
    assert not job_dirs(deployment)
    store = await Store.open(deployment.store_url, create=False)
    try:
        logged = [json.loads(row.payload) for row in await store.events_after(
            alice.conference, 0) if row.type == "item.conversion"]
    finally:
        await store.close()
    assert logged == [{"type": "item.conversion", "item": deck["id"], "status": "failed",
                       "error": soffice.INTERRUPTED}]


@pytest.mark.slow
@needs_soffice
def test_webconf_serve_converts_a_deck_shared_from_the_cli(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The real node (`webconf serve`: the WCS in its own process, on its production event
    loop): `webconf share` a deck, then `webconf fetch` gets its PDF too."""
    from .test_cli import run, serving_stack, shared_items

    with contextlib.contextmanager(serving_stack)(tmp_path_factory, "decks") as cfg:
        shared = run(cfg, "share", "DECKCLI", ORGANIZER, str(DECKS / "three-slides.pptx"))
        assert shared.returncode == 0, shared.stderr
        assert set(shared_items(shared.stdout)) == {"three-slides.pptx"}
        out = tmp_path / "fetched"
        deadline = time.monotonic() + CONVERSION_WAIT
        while not (out / "three-slides.pdf").exists():
            assert time.monotonic() < deadline, "no PDF was shared"
            fetched = run(cfg, "fetch", "DECKCLI", ORGANIZER, "--save", str(out))
            assert fetched.returncode == 0, fetched.stderr
        pdf = (out / "three-slides.pdf").read_bytes()
        assert len(pypdf.PdfReader(io.BytesIO(pdf)).pages) == 3
        asyncio.run(no_plaintext_left(cfg))


@pytest.mark.slow
@needs_soffice
def test_a_killed_wcs_takes_libreoffice_along_and_its_restart_sweeps_the_plaintext(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """SIGKILL of the WCS mid-conversion: LibreOffice dies with it (PR_SET_PDEATHSIG and
    the PID namespace), and the WCS that `webconf serve` starts again removes the job
    directory the dead one left."""
    from .test_cli import run, serving_stack

    with contextlib.contextmanager(serving_stack)(tmp_path_factory, "deckkill") as cfg:
        shared = run(cfg, "share", "DECKKILL", ORGANIZER, str(DECKS / "three-slides.pptx"))
        assert shared.returncode == 0, shared.stderr
        deadline = time.monotonic() + CONVERSION_WAIT
        while not (found := converter_processes(cfg)):
            assert time.monotonic() < deadline, "LibreOffice never started"
            time.sleep(0.01)
        for pid in found:  # freeze the conversion: it cannot finish before the kill
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        parents = {pid: _ppid(pid) for pid in found}
        (wcs_pid,) = {ppid for ppid in parents.values() if ppid not in parents}
        assert b"conferencing" in Path(f"/proc/{wcs_pid}/cmdline").read_bytes()
        assert job_dirs(cfg)
        os.kill(wcs_pid, signal.SIGKILL)
        asyncio.run(wait_for(lambda: not converter_processes(cfg) and not job_dirs(cfg),
                             CONVERSION_WAIT))
        assert '"event": "convert.sweep", "removed": 1' in (cfg.log_dir / "wcs.log").read_text()


def _ppid(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[1])


async def test_start_sweeps_a_crashed_wcs_leftovers(deployment: Config) -> None:
    root = deployment.var_dir / "convert"
    dead = root / "job-999999999-0123abcd"  # above pid_max: no such process
    (dead / "profile").mkdir(parents=True)
    (dead / "deck.pptx").write_bytes(b"plaintext of a crashed conversion")
    async with running_wcs(deployment):
        assert not dead.exists()


@pytest.mark.sqlite_only
async def test_without_libreoffice_a_deck_is_told_so(deployment: Config) -> None:
    async with tuned(deployment, convert_soffice="no-such-soffice-here") as wcs:
        alice = await wcs.admit("DECK9", ORGANIZER)
        ws = await open_channel(wcs, alice)
        deck = await upload(wcs, alice, "three-slides.pptx")
        _, failed = await events_of(ws, 2)
        assert failed["item"] == deck["id"] and failed["error"] == soffice.UNAVAILABLE
        await ws.close()


@pytest.mark.sqlite_only
async def test_conversion_turned_off_says_nothing(deployment: Config) -> None:
    async with tuned(deployment, convert_decks=False) as wcs:
        alice = await wcs.admit("DECK13", ORGANIZER)
        ws = await open_channel(wcs, alice)
        await upload(wcs, alice, "three-slides.pptx")
        assert (await next_event(ws, 10.0))["type"] == "item.shared"
        await ws.send_json({"type": "ping"})
        assert (await next_event(ws, 10.0))["type"] == "pong"
        assert await metric(wcs, "webconf_conversions_total") == 0
        await ws.close()


@pytest.mark.sqlite_only
@pytest.mark.parametrize("setting", ["CONVERT_CONCURRENCY=0", "CONVERT_TIMEOUT_SECONDS=0",
                                     "CONVERT_QUEUE_LENGTH=-1", "CONVERT_MEMORY_BYTES=0"])
def test_bad_converter_settings_are_refused(deployment: Config, setting: str) -> None:
    key, value = setting.split("=")
    with pytest.raises(ConfigError, match="wcs.convert_"):
        load_config(deployment.base_dir, env={f"WEBCONF_WCS_{key}": value})


@pytest.mark.sqlite_only
async def test_other_items_are_not_converted(wcs: Wcs) -> None:
    alice = await wcs.admit("DECK10", ORGANIZER)
    await upload(wcs, alice, "three-slides.fodp", content_type="application/xml")
    await upload(wcs, alice, "corrupt.pptx", name="notes.pdf", content_type="application/pdf")
    await asyncio.sleep(0)  # a deck would have been queued synchronously by the upload
    assert await metric(wcs, "webconf_conversions_total") == 0
    assert not job_dirs(wcs.cfg)


# -- the sandbox --------------------------------------------------------------------------------

async def test_the_sandbox_has_no_network(wcs: Wcs) -> None:
    """What LibreOffice runs inside cannot reach even the WCS on loopback."""
    mode = await probe_sandbox(shutil.which("unshare"), allow_network=False)
    if mode is None:
        pytest.skip("no network namespace here (unshare -n / -rn): conversion is off")
    host, port = wcs.cfg.server.host, wcs.server.https_port if wcs.server else 0
    probe = (f"import socket\ntry:\n socket.create_connection(({host!r}, {port}), 5)\n"
             f"except OSError:\n raise SystemExit(3)\n")
    outside = await asyncio.create_subprocess_exec(sys.executable, "-c", probe)
    assert await outside.wait() == 0  # the probe works where there is a network
    inside = await asyncio.create_subprocess_exec(
        *soffice.sandbox_prefix(mode), sys.executable, "-c", probe)
    assert await inside.wait() == 3


# -- the pure part ------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "content_type", "kind"), [
    ("a.pptx", "application/octet-stream", "pptx"),
    ("A.PPTX", "", "pptx"),
    ("x.odp", "application/octet-stream", "odp"),
    ("x", soffice.PPTX_TYPE, "pptx"),
    ("x.pdf", soffice.ODP_TYPE + "; charset=binary", "odp"),
    ("x.pptx", soffice.ODP_TYPE, "odp"),  # the content type wins
    ("x.ppt", "application/vnd.ms-powerpoint", None),
    (".pptx", "application/octet-stream", None),
    ("slides.pdf", "application/pdf", None),
    ("pptx", "text/plain", None),
])
def test_deck_kind(name: str, content_type: str, kind: str | None) -> None:
    assert soffice.deck_kind(name, content_type) == kind


def test_pdf_name() -> None:
    assert soffice.pdf_name("Q3 review.pptx", 1024) == "Q3 review.pdf"
    assert soffice.pdf_name("deck.v2.ODP", 1024) == "deck.v2.pdf"
    assert soffice.pdf_name("no suffix", 1024) == "no suffix.pdf"
    long = "é" * 600 + ".pptx"
    name = soffice.pdf_name(long, 1024)
    assert name.endswith(".pdf") and len(name.encode()) <= 1024
    assert soffice.pdf_name("x" * 2000, 1024) == "x" * 1020 + ".pdf"


def test_command_line() -> None:
    job = soffice.Job(Path("/var/convert/job-1-ab"), "pptx")
    argv = soffice.command("/usr/bin/soffice", job, "user", "/usr/bin/unshare")
    assert argv[:7] == ["/usr/bin/unshare", "--map-root-user", "--net", "--pid", "--fork",
                        "--kill-child", "--"]
    assert "-env:UserInstallation=file:///var/convert/job-1-ab/profile" in argv
    assert "--infilter=Impress MS PowerPoint 2007 XML" in argv
    assert argv[-1] == "/var/convert/job-1-ab/deck.pptx"
    assert soffice.command("soffice", job, "none")[0] == "soffice"
    env = soffice.environment(job)
    assert env["TMPDIR"] == env["HOME"] == str(job.directory)
    assert not set(env) & {k for k in os.environ if "KEY" in k or "PASS" in k}
