"""The web page in a real browser against a real deployment (docs/protocol.md §10).

`webconf serve` runs the focus (with its SIP-over-WebSocket listener) and the WCS (serving
web/dist); an organizer joins over SIP/TLS (the CLI clients' stack) and uploads two images,
a PDF and an item whose blob is then altered; then two headless Debian chromium browsers at
once (playwright-core, `web/test/join.mjs`) open the page, fail once with a wrong password,
join as attendees over WSS, decrypt each item with WebCrypto and report its SHA-256 (the
altered one: "integrity check failed"), show an image; one turns a PDF page and sees an
item the organizer shares while it is open (a channel push) and leaves (its cookie is then
revoked); the other is revoked at the WCS while open and says "you were removed". A third
browser then sees the network drop (the WCS killed; `webconf serve` restarts it) and its
channel reconnect and resume (`resumed`) after its last `seq`. The wrong password and an
unknown conference each show a clear message.
The deployment's CA is trusted by an SPKI pin list of the WCS's and the focus's keys.
Screenshots go to the test's temp dir (always the joined page; on failure the page as it
was). Skipped, saying why, only without node or chromium.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import struct
import subprocess
import zlib
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pypdf import PdfReader

from clients.demodeck import slides_pdf
from clients.sip import ConferenceDialog, SipConnection
from focus.directory import Directory
from webconf.deploy import tls
from webconf.deploy.config import Config

from .conftest import ServeProcess
from .test_focus_e2e import USERS, add_users
from .test_web_cobblestone import CHROMIUM, WEB, browser_tools

CONF = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:WEB1"
PASSWORDS = {**USERS, "carol@contoso.example": "carol-pw", "dave@contoso.example": "dave-pw"}


def wcs_pid(serve: ServeProcess) -> int:
    """The pid of the supervisor's `python -m conferencing` child (the WCS)."""
    children = Path(f"/proc/{serve.pid}/task/{serve.pid}/children").read_text().split()
    for pid in map(int, children):
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"-m" in argv and b"conferencing" in argv:
            return pid
    raise AssertionError(f"no WCS child of {serve.pid}")


def png(width: int, height: int, seed: int) -> bytes:
    """A small RGB PNG (a gradient), made without an imaging library."""
    rows = b"".join(
        b"\x00" + bytes(v for x in range(width)
                        for v in ((x * 255 // width + seed * 70) % 256, y * 255 // height, 160))
        for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


async def organizer_dialog(deployment: Config) -> tuple[SipConnection, ConferenceDialog]:
    """alice's SIP/TLS connection to the focus and her dialog with the conference (not yet
    joined)."""
    conn = await SipConnection.open("127.0.0.1", deployment.focus.sip_port,
                                    ssl_context=tls.client_context(deployment),
                                    server_hostname="contoso.example")
    return conn, ConferenceDialog(conn, CONF, "alice@contoso.example",
                                  USERS["alice@contoso.example"])


def spki_pin(cert_path: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


async def cookie_status(cfg: Config, conference: str, cookie: str) -> int:
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg))) as http:
        async with http.get(f"{cfg.public_url}/v1/conferences/{conference}/items",
                            headers={"Authorization": f"Bearer {cookie}"}) as resp:
            return resp.status


async def test_attendee_joins_decrypts_and_leaves_in_chromium(
        deployment: Config, serve: ServeProcess, tmp_path: Path) -> None:
    node = browser_tools()
    assert (WEB / "dist" / "index.html").is_file(), "web/dist is missing: run `make web`"
    await add_users(deployment)
    directory = await Directory.for_deployment(deployment)
    try:
        for user in ("carol@contoso.example", "dave@contoso.example"):
            await directory.add_user(user, PASSWORDS[user])
    finally:
        await directory.close()
    serve.env["WEBCONF_FOCUS_LEAVE_GRACE_SECONDS"] = "1"
    await asyncio.to_thread(serve.start)
    conn, organizer = await organizer_dialog(deployment)
    joined = await organizer.join()
    images = {f"picture-{i}.png": png(96 + 32 * i, 64, i) for i in range(2)}
    pdf = slides_pdf(3)
    assert len(PdfReader(io.BytesIO(pdf)).pages) == 3
    uploads = [(name, data, "image/png") for name, data in images.items()]
    uploads.append(("quarterly-review.pdf", pdf, "application/pdf"))
    uploads.append(("tampered.png", png(80, 40, 7), "image/png"))  # its blob is altered below
    shas = {}
    ids = []
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(deployment))) as http:
        for name, data, content_type in uploads:
            before = set(deployment.share_dir.rglob("*"))
            async with http.post(
                    f"{joined.webconf_url}/v1/conferences/{joined.conference}/items", data=data,
                    headers={"Authorization": f"Bearer {joined.cookie}", "X-Item-Name": name,
                             "Content-Type": content_type}) as resp:
                assert resp.status == 201, await resp.text()
                ids.append((await resp.json())["item"]["id"])
                shas[ids[-1]] = hashlib.sha256(data).hexdigest()
            if name == "tampered.png":  # one byte of its only chunk: its tag fails
                [blob] = [p for p in set(deployment.share_dir.rglob("*")) - before
                          if p.is_file()]
                raw = bytearray(blob.read_bytes())
                raw[200] ^= 1
                blob.write_bytes(bytes(raw))
    pushed = png(64, 64, 3)  # shared by the organizer while the page is open
    pins = ",".join(spki_pin(deployment.certs_dir / name) for name in ("wcs.pem", "focus.pem"))
    shots = tmp_path / "screenshots"

    def page(user: str, *extra: str) -> dict[str, Any]:
        """One browser (web/test/join.mjs) as `user`; its JSON report."""
        run = subprocess.run([
            node, str(WEB / "test" / "join.mjs"), "--url", f"{deployment.public_url}/",
            "--user", user, "--password", PASSWORDS[user], "--conference", CONF,
            "--items", str(len(uploads) - 1), "--spki", pins, "--image", ids[0],
            "--shots", str(shots / user), "--chromium", CHROMIUM, *extra],
            capture_output=True, text=True, timeout=240, check=False,
            env={**os.environ, "NODE_EXTRA_CA_CERTS": str(deployment.certs_dir / "ca.pem")})
        lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
        assert lines, f"no result (exit {run.returncode}): {run.stderr[-3000:]}"
        found: dict[str, Any] = json.loads(lines[-1])
        assert "error" not in found, (f"{found['error']}\nconsole: {found['console'][-20:]}\n"
                                      f"screenshots: {shots / user}")
        return found

    # Two browsers at once; bob also turns PDF pages and sees the organizer's push.
    report, other = await asyncio.gather(
        asyncio.to_thread(page, "bob@contoso.example", "--pdf", ids[2],
                          "--share", base64.b64encode(pushed).decode(),
                          "--api-base", f"{joined.webconf_url}/v1/conferences/{joined.conference}",
                          "--organizer-cookie", joined.cookie),
        asyncio.to_thread(page, "carol@contoso.example", "--revoke-via", deployment.internal_url,
                          "--client-cert", str(deployment.certs_dir / "focus-client.pem"),
                          "--client-key", str(deployment.certs_dir / "focus-client.key"),
                          "--ca", str(deployment.certs_dir / "ca.pem")))
    assert "Wrong SIP address or password" in report["wrongPassword"]["error"]
    assert report["wrongPassword"]["status"] == "not joined"
    assert "no such meeting" in report["unknownConference"]
    assert report["status"] == "joined"
    tampered = ids.pop()
    del shas[tampered]
    decrypted = {item["id"]: item["sha256"] for item in report["items"] if item["sha256"]}
    assert decrypted == shas
    [failed] = [item for item in report["items"] if item["id"] == tampered]
    assert failed["state"] == "failed" and "integrity check failed" in failed["text"]
    assert report["slide"]["page"] == "1" and report["slide"]["width"] in (96, 128)
    assert "connect-src 'self'" in report["csp"]
    assert report["pdf"] == {"pages": "2 / 3", "page": "2"}
    assert report["channel"] == "open"  # the data channel, with the browser cookie
    assert report["pushedSha256"] == hashlib.sha256(pushed).hexdigest()
    assert report["left"] is True and (shots / "bob@contoso.example" / "joined.png").is_file()
    # The second browser decrypted the same items (and the push, if it came before it left).
    theirs = {item["id"]: item["sha256"] for item in other["items"] if item["sha256"]}
    assert theirs.items() >= shas.items() and len(theirs) - len(shas) in (0, 1)
    # ... and, revoked at the WCS while it was open, said "you were removed" and stopped.
    assert other["channel"] == "open" and other["revokeStatus"] == 204
    assert other["removed"] is True
    cookie = report["cookie"]
    assert cookie != joined.cookie
    for _ in range(50):  # BYE answered, then the revocation reaches the WCS
        if await cookie_status(deployment, joined.conference, cookie) == 401:
            break
        await asyncio.sleep(0.1)
    assert await cookie_status(deployment, joined.conference, cookie) == 401
    assert await cookie_status(deployment, joined.conference, joined.cookie) == 200
    # The network drops (the WCS dies; `webconf serve` restarts it): a third browser's
    # channel reconnects and resumes after the last seq it saw.
    dave = page("dave@contoso.example", "--kill-wcs", str(wcs_pid(serve)))
    assert dave["channel"] == "open" and dave["resumed"] is not None and dave["left"] is True
    assert int(dave["resumed"]) >= 1
    await organizer.leave()
    await conn.close()
    print(f"screenshots: {shots}")


async def test_browsers_follow_the_presenter_and_upload(
        deployment: Config, serve: ServeProcess, tmp_path: Path) -> None:
    """Presenting in the browser (docs/protocol.md §9, §10.2; web/test/present.mjs): the
    organizer, in over SIP/TLS, shares a PDF and presents page 1; two browsers join and list
    the organizer in their roster at once and show page 1 from their `welcome`; one stops
    following. The organizer's own browser page turns pages with #next: the follower follows,
    the one browsing does not until it follows again. The organizer promotes the browsing one
    to presenter (its tools appear, the roster says so), uploads a file with #upload and drops
    another on #drop, and the follower decrypts both to the right SHA-256.
    With WEBCONF_README_SHOT=<png> the follower's page is saved there (docs/browser.png)."""
    node = browser_tools()
    assert (WEB / "dist" / "index.html").is_file(), "web/dist is missing: run `make web`"
    await add_users(deployment)
    directory = await Directory.for_deployment(deployment)
    try:
        await directory.add_user("carol@contoso.example", PASSWORDS["carol@contoso.example"])
    finally:
        await directory.close()
    await asyncio.to_thread(serve.start)
    conn, organizer = await organizer_dialog(deployment)
    joined = await organizer.join()
    api = f"{joined.webconf_url}/v1/conferences/{joined.conference}"
    auth = {"Authorization": f"Bearer {joined.cookie}"}
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(deployment))) as http:
        async with http.post(f"{api}/items", data=slides_pdf(3), headers={
                **auth, "X-Item-Name": "Q4%20roadmap.pdf",
                "Content-Type": "application/pdf"}) as resp:
            assert resp.status == 201, await resp.text()
            deck = (await resp.json())["item"]
        assert deck["pages"] == 3
        async with http.put(f"{api}/presentation", json={"item": deck["id"], "page": 1},
                            headers=auth) as resp:
            assert resp.status == 200, await resp.text()
    picked = b"speaker notes\n" * 300
    dropped = os.urandom(150_000)
    (tmp_path / "notes.txt").write_bytes(picked)
    (tmp_path / "dropped.bin").write_bytes(dropped)
    pins = ",".join(spki_pin(deployment.certs_dir / name) for name in ("wcs.pem", "focus.pem"))
    shots = tmp_path / "screenshots"
    readme_shot = os.environ.get("WEBCONF_README_SHOT")
    run = await asyncio.to_thread(subprocess.run, [
        node, str(WEB / "test" / "present.mjs"), "--url", f"{deployment.public_url}/",
        "--spki", pins, "--conference", CONF, "--chromium", CHROMIUM, "--shots", str(shots),
        "--organizer", f"alice@contoso.example:{USERS['alice@contoso.example']}",
        "--follower", f"bob@contoso.example:{USERS['bob@contoso.example']}",
        "--browser", f"carol@contoso.example:{PASSWORDS['carol@contoso.example']}",
        "--api-base", api, "--upload-file", str(tmp_path / "notes.txt"),
        "--drop-file", str(tmp_path / "dropped.bin"),
        *(("--readme-shot", readme_shot) if readme_shot else ())],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NODE_EXTRA_CA_CERTS": str(deployment.certs_dir / "ca.pem")})
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result (exit {run.returncode}): {run.stderr[-3000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in report, (f"{report['error']}\nconsole: {report['console'][-20:]}\n"
                                   f"screenshots: {shots}")
    # The roster at join already lists the organizer who was in before, with roles.
    at_join = {(p["user"], p["role"]) for p in report["rosterAtJoin"]}
    assert ("alice@contoso.example", "organizer") in at_join
    assert ("bob@contoso.example", "attendee") in at_join
    assert report["rosterAfterJoin"] == 4 and report["rosterAfterLeave"] == 3  # kept live
    assert len(report["channelUrls"]) >= 3  # each page's data channel takes batch frames
    assert all(url.endswith("batch=1") for url in report["channelUrls"])
    assert report["welcomePage"] == ["1", "1"]
    assert report["followerRole"] == "attendee" and report["toolsHiddenForAttendee"] is True
    assert report["presenterRole"] == "organizer"
    # Following moves with the presenter; browsing stays; following again jumps.
    assert report["afterFirstTurn"] == {"presenter": "2", "follower": "2", "browsing": "1"}
    assert report["afterSecondTurn"] == {"follower": "3", "browsing": "1"}
    assert report["afterFollowAgain"] == "3"
    assert report["patchStatus"] == 200 and report["promoted"] is True
    # Uploads by the presenter page arrive, decrypted, with the right SHA-256.
    assert report["progress"] == 100
    assert report["uploadedSha256"] == hashlib.sha256(picked).hexdigest()
    assert report["droppedSha256"] == hashlib.sha256(dropped).hexdigest()
    assert report["droppedOnPresenter"] == report["droppedSha256"]
    assert report["left"] is True
    await organizer.leave()
    await conn.close()
    print(f"screenshots: {shots}")
