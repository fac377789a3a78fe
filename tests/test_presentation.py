"""Presentation state (docs/protocol.md §9.1): set over HTTP or the channel, pushed to every
participant, carried in a late joiner's welcome, refused when out of range, unknown or not
a presenter's; strict channel messages; PDF page counts sealed at rest.

Real in-process WCS over real TLS, on every store backend.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfWriter
from sqlalchemy import select, update

from conferencing import presenting
from conferencing.pdfpages import SealedReader, count_pages_sync, is_pdf
from conferencing.store.schema import items, participants, presentations
from webconf.crypto.cobblestone import encrypt, item_context

from .conftest import Participant, Wcs
from .test_channel import (
    ORGANIZER,
    assert_alive,
    connect,
    expect_close,
    meeting,
    recv_json,
    recv_type,
)

BOB = "bob@contoso.example"
CAROL = "carol@contoso.example"


def make_pdf(pages: int) -> bytes:
    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=200, height=200)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def presentation_url(wcs: Wcs, who: Participant) -> str:
    return f"{wcs.url}/v1/conferences/{who.conference}/presentation"


async def put(wcs: Wcs, who: Participant, body: Any) -> tuple[int, dict[str, Any]]:
    async with wcs.http.put(presentation_url(wcs, who), json=body,
                            headers=who.headers) as resp:
        return resp.status, await resp.json()


async def share_pdf(wcs: Wcs, who: Participant, pages: int) -> dict[str, Any]:
    status, body = await wcs.upload(who, make_pdf(pages), name="deck.pdf")
    assert status == 201, body
    item: dict[str, Any] = body["item"]
    return item


async def test_http_set_reaches_everyone_and_a_late_joiner(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "P1", BOB)
    item = await share_pdf(wcs, alice, 5)
    assert item["pages"] == 5
    ws_a, hello = await connect(wcs, alice)
    ws_b, _ = await connect(wcs, bob)
    assert hello["presentation"] is None
    try:
        status, state = await put(wcs, alice, {"item": item["id"], "page": 3})
        assert status == 200, state
        assert state["item"] == item["id"] and state["page"] == 3
        assert state["presenter"] == alice.pid and state["seq"] > 0
        for ws in (ws_a, ws_b):
            event = await recv_type(ws, "presentation.changed")
            assert event == {"type": "presentation.changed", **state}
        carol = await wcs.admit("P1", CAROL, organizer=ORGANIZER)
        ws_c, late = await connect(wcs, carol)
        assert late["presentation"] == state
        await ws_c.close()
        # Stopping: item null; everyone hears it, and the next welcome carries null.
        status, stopped = await put(wcs, alice, {"item": None})
        assert status == 200 and stopped["item"] is None and stopped["page"] is None
        assert (await recv_type(ws_b, "presentation.changed"))["item"] is None
        ws_c, late = await connect(wcs, carol)
        assert late["presentation"] is None
        await ws_c.close()
    finally:
        await ws_a.close()
        await ws_b.close()


async def test_channel_set_reaches_everyone(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "P2", BOB, role="presenter")
    item = await share_pdf(wcs, alice, 4)
    ws_a, _ = await connect(wcs, alice)
    ws_b, _ = await connect(wcs, bob)
    try:
        await ws_b.send_json({"type": "presentation.set", "item": item["id"], "page": 4})
        for ws in (ws_a, ws_b):
            event = await recv_type(ws, "presentation.changed")
            assert (event["item"], event["page"], event["presenter"]) == (item["id"], 4, bob.pid)
        # Out of range, unknown item: an error frame, and the channel stays open.
        await ws_b.send_json({"type": "presentation.set", "item": item["id"], "page": 5})
        error = await recv_type(ws_b, "error")
        assert error["code"] == "page_out_of_range" and error["request"] == "presentation.set"
        await ws_b.send_json({"type": "presentation.set", "item": "nope", "page": 1})
        assert (await recv_type(ws_b, "error"))["code"] == "not_found"
        await assert_alive(ws_b)
        await ws_b.send_json({"type": "presentation.set", "item": None})
        assert (await recv_type(ws_a, "presentation.changed"))["item"] is None
    finally:
        await ws_a.close()
        await ws_b.close()


async def test_bad_requests_over_http(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "P3", BOB)
    item = await share_pdf(wcs, alice, 2)
    status, photo = await wcs.upload(alice, b"\x89PNG fake", name="photo.png",
                                     content_type="image/png")
    assert status == 201 and "pages" not in photo["item"]
    for body, code in (({"item": item["id"], "page": 3}, "page_out_of_range"),
                       ({"item": item["id"], "page": 0}, "page_out_of_range"),
                       ({"item": photo["item"]["id"], "page": 2}, "page_out_of_range"),
                       ({"item": "unknown", "page": 1}, "not_found"),
                       ({"item": item["id"], "page": "1"}, "bad_request"),
                       ({"item": item["id"], "page": True}, "bad_request"),
                       ({"item": item["id"]}, "bad_request"),
                       ({"item": item["id"], "page": 1, "extra": 1}, "bad_request"),
                       ({"item": None, "page": 1}, "bad_request"),
                       ([1], "bad_request")):
        status, answer = await put(wcs, alice, body)
        assert answer["error"]["code"] == code, (body, answer)
        assert status == {"page_out_of_range": 400, "not_found": 404,
                          "bad_request": 400}[code]
    # An item without a page count has one page.
    status, _ = await put(wcs, alice, {"item": photo["item"]["id"], "page": 1})
    assert status == 200
    # An attendee is refused, whatever the item (nothing is told about it).
    for body in ({"item": item["id"], "page": 1}, {"item": "unknown", "page": 1},
                 {"item": None}):
        status, answer = await put(wcs, bob, body)
        assert status == 403 and answer["error"]["code"] == "forbidden"
    async with wcs.http.put(presentation_url(wcs, alice), data=b"x" * 2000,
                            headers={**alice.headers, "Content-Type": "application/json"}
                            ) as resp:
        assert resp.status == 413
    async with wcs.http.put(presentation_url(wcs, alice), json={"item": None}) as resp:
        assert resp.status == 401


async def test_the_role_is_read_from_the_store_at_each_request(wcs: Wcs) -> None:
    """A role changed mid-meeting counts at the next request with the same cookie."""
    alice, bob = await meeting(wcs, "P4", BOB)
    item = await share_pdf(wcs, alice, 3)
    ws_b, _ = await connect(wcs, bob)
    try:
        await ws_b.send_json({"type": "presentation.set", "item": item["id"], "page": 2})
        assert (await recv_type(ws_b, "error"))["code"] == "forbidden"
        assert wcs.server is not None and wcs.server.service is not None
        store = wcs.server.service.store
        async with store.engine.begin() as conn:  # what the organizer's role change does
            await conn.execute(update(participants).where(participants.c.id == bob.pid)
                               .values(role="presenter"))
        await ws_b.send_json({"type": "presentation.set", "item": item["id"], "page": 2})
        assert (await recv_type(ws_b, "presentation.changed"))["page"] == 2
        status, _ = await put(wcs, bob, {"item": item["id"], "page": 3})
        assert status == 200
        async with store.engine.begin() as conn:
            await conn.execute(update(participants).where(participants.c.id == bob.pid)
                               .values(role="attendee"))
        status, _ = await put(wcs, bob, {"item": item["id"], "page": 1})
        assert status == 403
    finally:
        await ws_b.close()


@pytest.mark.parametrize("frame, code", [
    ('{"type": "presentation.set", "item": "x", "page": "1"}', 1008),
    ('{"type": "presentation.set", "item": "x", "page": 1, "more": 1}', 1008),
    ('{"type": "presentation.set", "page": 1}', 1008),
    ('{"type": "presentation.set", "item": 5, "page": 1}', 1008),
    ('{"type": "ping", "extra": true}', 1008),
    ('{"type": "presentation.changed", "item": null}', 1008),
    ('{"type": "presentation.set", "item": "' + "x" * 5000 + '", "page": 1}', 1009),
], ids=["page-type", "extra-field", "no-item", "item-type", "ping-extra", "server-type",
        "oversized"])
async def test_malformed_channel_messages_close_the_channel(wcs: Wcs, frame: str,
                                                            code: int) -> None:
    (alice,) = await meeting(wcs, "P5")
    ws, _ = await connect(wcs, alice)
    try:
        await ws.send_str(frame)
        assert await expect_close(ws, clean=code != 1009, skip_text=True) == code
    finally:
        await ws.close()


async def test_presentation_changes_are_rate_limited(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "P6", BOB)
    item = await share_pdf(wcs, alice, 50)
    ws_a, _ = await connect(wcs, alice)
    try:
        sent = presenting.RATE_BURST + 3
        for page in range(1, sent + 1):
            await ws_a.send_json({"type": "presentation.set", "item": item["id"],
                                  "page": page})
        seen: dict[str, int] = {}
        while sum(seen.values()) < sent:
            msg = await recv_json(ws_a)
            seen[msg["type"]] = seen.get(msg["type"], 0) + 1
            if msg["type"] == "error":
                assert msg["code"] == "too_many_requests"
        # At most the burst plus what refilled meanwhile got through; the rest was refused.
        assert seen.get("error", 0) >= 1 and seen.get("presentation.changed", 0) >= (
            presenting.RATE_BURST)
        await assert_alive(ws_a)
        # Per participant: the HTTP path spends the same bucket.
        status, answer = await put(wcs, alice, {"item": item["id"], "page": 1})
        assert status in (200, 429)
        if status == 429:
            assert answer["error"]["code"] == "too_many_requests"
    finally:
        await ws_a.close()


async def test_pages_are_counted_and_sealed_at_rest(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "P7")
    item = await share_pdf(wcs, alice, 7)
    assert item["pages"] == 7
    status, broken = await wcs.upload(alice, b"%PDF-1.7\n garbage", name="broken.pdf")
    assert status == 201 and "pages" not in broken["item"]  # shared, but not counted
    assert wcs.server is not None and wcs.server.service is not None
    async with wcs.server.service.store.engine.connect() as conn:
        row = (await conn.execute(select(items).where(items.c.id == item["id"]))).one()
    sealed = row._mapping["sealed_pages"]
    assert isinstance(sealed, bytes) and len(sealed) > 16 and b"7" != sealed
    assert all(value not in (7, "7", b"7") for value in row._mapping.values())
    async with wcs.http.get(wcs.items_url("P7"), headers=alice.headers) as resp:
        listed = {i["id"]: i for i in (await resp.json())["items"]}
    assert listed[item["id"]]["pages"] == 7 and "pages" not in listed[broken["item"]["id"]]
    # The share holds ciphertext only: no PDF header anywhere under it.
    share_root = wcs.server.service.share.root
    for path in share_root.rglob("*"):
        if path.is_file():
            assert b"%PDF" not in path.read_bytes()


async def test_deleted_item_ends_the_presentation(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "P8")
    item = await share_pdf(wcs, alice, 2)
    status, _ = await put(wcs, alice, {"item": item["id"], "page": 2})
    assert status == 200
    async with wcs.http.delete(f"{wcs.items_url('P8')}/{item['id']}",
                               headers=alice.headers) as resp:
        assert resp.status == 204
    ws, hello = await connect(wcs, alice)
    await ws.close()
    assert hello["presentation"] is None
    assert wcs.server is not None and wcs.server.service is not None
    async with wcs.server.service.store.engine.connect() as conn:
        assert (await conn.execute(select(presentations))).first() is not None  # stale row


def test_what_counts_as_a_pdf() -> None:
    assert is_pdf("a.PDF", "application/octet-stream")
    assert is_pdf("slides", "application/pdf; charset=binary")
    assert not is_pdf("a.png", "image/png")


async def test_attendee_channel_refused_politely(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "P9", BOB)
    item = await share_pdf(wcs, alice, 1)
    ws_b, _ = await connect(wcs, bob)
    try:
        await ws_b.send_str(json.dumps({"type": "presentation.set", "item": item["id"],
                                        "page": 1}))
        error = await recv_type(ws_b, "error")
        assert error["code"] == "forbidden"
        await assert_alive(ws_b)
    finally:
        await ws_b.close()


# -- the page count's reader (conferencing/pdfpages.py) -----------------------------------------

def sealed(tmp_path: Path, plaintext: bytes) -> tuple[Path, bytes, bytes]:
    key, context = os.urandom(32), item_context("contoso.example", "C1", "it1")
    path = tmp_path / "blob"
    path.write_bytes(encrypt(key, context, plaintext))
    return path, key, context


def test_sealed_reader_is_a_seekable_view_of_the_plaintext(tmp_path: Path) -> None:
    plaintext = os.urandom(3 * 16384 + 123)
    path, key, context = sealed(tmp_path, plaintext)
    with SealedReader(path, key, context, deadline=time.monotonic() + 10) as reader:
        assert reader.seek(0, io.SEEK_END) == len(plaintext)
        for offset, length in ((0, 10), (16380, 10), (len(plaintext) - 5, 100), (40000, 9000)):
            reader.seek(offset)
            assert reader.read(length) == plaintext[offset:offset + length]


def test_page_count_bounds(tmp_path: Path) -> None:
    path, key, context = sealed(tmp_path, make_pdf(30))
    assert count_pages_sync(path, key, context) == 30
    assert count_pages_sync(path, key, context, max_bytes=2000) is None  # read budget
    assert count_pages_sync(path, key, context, deadline_seconds=-1.0) is None  # deadline
    blob = bytearray(path.read_bytes())
    blob[-40] ^= 1  # a chunk that fails its tag: no count, never unverified bytes
    path.write_bytes(bytes(blob))
    assert count_pages_sync(path, key, context) is None
    path, key, context = sealed(tmp_path, b"%PDF-1.4\n" + os.urandom(50_000))
    assert count_pages_sync(path, key, context) is None
