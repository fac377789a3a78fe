"""The data channel (docs/protocol.md §4): a WSS socket per participant that pushes items and keys.

Every test runs against a real in-process WCS over real TLS. Every receive is bounded by a
timeout, so a server that forgets to send or to close fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType

from conferencing.app import WcsServer
from webconf.crypto.cobblestone import Decryptor
from webconf.deploy.config import Config
from webconf.events import Participant as Who
from webconf.events import ParticipantJoined

from .conftest import Participant, Wcs, running_wcs, wait_for

TIMEOUT = 3.0
ORGANIZER = "alice@contoso.example"


# -- helpers -------------------------------------------------------------------------------

def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def channel_url(wcs: Wcs, conf: str) -> str:
    base = wcs.url.replace("https://", "wss://", 1)
    return f"{base}/v1/conferences/{wcs.public_id(conf)}/channel"


async def connect(wcs: Wcs, who: Participant
                  ) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Open `who`'s channel and read its welcome."""
    ws = await asyncio.wait_for(
        wcs.http.ws_connect(channel_url(wcs, who.conference), headers=who.headers,
                            heartbeat=None),
        TIMEOUT)
    hello = await recv_json(ws)
    assert hello["type"] == "welcome"
    assert hello["conference"] == who.conference
    assert hello["participant"] == who.pid
    assert hello["role"] == who.role
    return ws, hello


async def recv_json(ws: aiohttp.ClientWebSocketResponse, timeout: float = TIMEOUT
                    ) -> dict[str, Any]:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type == WSMsgType.TEXT, (msg.type, msg.data, ws.close_code)
    data = json.loads(msg.data)
    assert isinstance(data, dict)
    return data


async def recv_type(ws: aiohttp.ClientWebSocketResponse, kind: str,
                    timeout: float = TIMEOUT) -> dict[str, Any]:
    """The next event of type `kind`, skipping others (e.g. roster changes)."""
    deadline = time.monotonic() + timeout
    while True:
        data = await recv_json(ws, max(0.01, deadline - time.monotonic()))
        if data["type"] == kind:
            return data


async def expect_close(ws: aiohttp.ClientWebSocketResponse, timeout: float = TIMEOUT,
                       *, skip_text: bool = False, clean: bool = True) -> int:
    """Wait for the server's close frame and return its code.

    With `clean`, the closing handshake must also complete, so that the client's own
    `close_code` is that code (not 1006, abnormal closure).
    """
    deadline = time.monotonic() + timeout
    while True:
        msg = await asyncio.wait_for(ws.receive(), max(0.01, deadline - time.monotonic()))
        if msg.type == WSMsgType.CLOSE:
            break
        assert msg.type == WSMsgType.TEXT and skip_text, (msg.type, msg.data, ws.close_code)
    assert ws.closed
    code = int(msg.data)
    if clean:
        assert ws.close_code == code, f"server sent {code}, client saw {ws.close_code}"
    return code


async def assert_alive(ws: aiohttp.ClientWebSocketResponse) -> None:
    """The socket is open and the server answers a ping (skipping queued events)."""
    assert not ws.closed
    await ws.send_json({"type": "ping"})
    await recv_type(ws, "pong")


async def assert_silent(ws: aiohttp.ClientWebSocketResponse, seconds: float = 0.2) -> None:
    with pytest.raises(TimeoutError):
        msg = await asyncio.wait_for(ws.receive(), seconds)
        raise AssertionError(f"unexpected message {msg}")


async def healthy(wcs: Wcs) -> None:
    async with wcs.http.get(f"{wcs.url}/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["status"] == "ok"


async def raw_upgrade(wcs: Wcs, conf: str, headers: dict[str, str] | None = None
                      ) -> tuple[int, dict[str, Any], Any]:
    """An upgrade request read as plain HTTP, to see a refusal's status and JSON body."""
    hdrs = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(), **(headers or {})}
    async with wcs.http.get(channel_url(wcs, conf).replace("wss://", "https://", 1),
                            headers=hdrs) as resp:
        return resp.status, await resp.json(), resp.headers


async def refused_upgrade(wcs: Wcs, who: Participant | None, conf: str) -> int:
    with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
        await asyncio.wait_for(
            wcs.http.ws_connect(channel_url(wcs, conf),
                                headers=who.headers if who else None), TIMEOUT)
    return exc.value.status


def decrypt(key_b64: str, context_b64: str, blob: bytes) -> bytes:
    dec = Decryptor(b64d(key_b64), b64d(context_b64))
    return dec.update(blob) + dec.finalize()


async def download(wcs: Wcs, who: Participant, url: str) -> bytes:
    async with wcs.http.get(url, headers=who.headers) as resp:
        assert resp.status == 200
        return await resp.read()


async def active_channels(wcs: Wcs) -> float:
    async with wcs.http.get(f"{wcs.url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("webconf_active_channels "):
            return float(line.split()[1])
    raise AssertionError("webconf_active_channels missing from /metrics")


def subscriptions(wcs: Wcs, who: Participant) -> int:
    assert wcs.server is not None and wcs.server.service is not None
    return wcs.server.service.events.count(who.conference, who.pid)


async def meeting(wcs: Wcs, conf: str, *others: str, role: str = "attendee"
                  ) -> list[Participant]:
    alice = await wcs.admit(conf, ORGANIZER)
    people = [alice]
    for user in others:
        people.append(await wcs.admit(conf, user, organizer=ORGANIZER, role=role))
    return people


# -- items and keys --------------------------------------------------------------------------

async def test_welcome_lists_every_item_with_a_working_key(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "W1", "bob@contoso.example")
    payloads = {f"deck{i}.pdf": os.urandom(20_000 + 17_000 * i) for i in range(3)}
    for name, data in payloads.items():
        status, body = await wcs.upload(alice, data, name=name)
        assert status == 201, body
    ws, hello = await connect(wcs, bob)
    try:
        items = hello["items"]
        assert sorted(e["item"]["name"] for e in items) == sorted(payloads)
        for entry in items:
            item = entry["item"]
            assert item["url"].endswith(
                f"/v1/conferences/{alice.conference}/items/{item['id']}/content")
            assert len(b64d(entry["key"])) == 32
            blob = await download(wcs, bob, item["url"])
            assert len(blob) == item["ciphertext_size"]
            assert decrypt(entry["key"], entry["context"], blob) == payloads[item["name"]]
            # The key pushed on the channel is the one the key endpoint serves.
            async with wcs.http.get(item["key_url"], headers=bob.headers) as resp:
                assert await resp.json() == {"key": entry["key"], "context": entry["context"]}
        await assert_alive(ws)
    finally:
        await ws.close()


async def test_empty_conference_welcome(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "W0")
    ws, hello = await connect(wcs, alice)
    assert hello["items"] == []
    await ws.close()


async def test_item_shared_reaches_every_participant(wcs: Wcs) -> None:
    people = await meeting(wcs, "S1", "bob@contoso.example", "carol@contoso.example")
    alice = people[0]
    sockets = [(await connect(wcs, p))[0] for p in people]
    try:
        data = os.urandom(50_000)
        status, body = await wcs.upload(alice, data, name="plan.pdf")
        assert status == 201
        for ws, who in zip(sockets, people, strict=True):
            event = await recv_type(ws, "item.shared")
            assert event["item"]["id"] == body["item"]["id"]
            assert event["item"]["name"] == "plan.pdf"
            assert event["item"]["url"] == body["item"]["url"]
            blob = await download(wcs, who, event["item"]["url"])
            assert decrypt(event["key"], event["context"], blob) == data
            assert data not in blob

        # A second item pushes a different key; the first key cannot open it.
        status, body2 = await wcs.upload(alice, b"second" * 1000, name="two.txt",
                                          content_type="text/plain")
        assert status == 201
        first_key = event["key"]
        for ws, who in zip(sockets, people, strict=True):
            event2 = await recv_type(ws, "item.shared")
            assert event2["item"]["id"] == body2["item"]["id"]
            assert event2["key"] != first_key
            blob = await download(wcs, who, event2["item"]["url"])
            assert decrypt(event2["key"], event2["context"], blob) == b"second" * 1000
    finally:
        for ws in sockets:
            await ws.close()


async def test_item_removed_after_delete(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "R1", "bob@contoso.example")
    _, body = await wcs.upload(alice, b"x" * 10_000)
    item_id = body["item"]["id"]
    ws_a, _ = await connect(wcs, alice)
    ws_b, hello = await connect(wcs, bob)
    assert [e["item"]["id"] for e in hello["items"]] == [item_id]
    try:
        async with wcs.http.delete(f"{wcs.items_url('R1')}/{item_id}",
                                   headers=alice.headers) as resp:
            assert resp.status == 204
        for ws in (ws_a, ws_b):
            event = await recv_type(ws, "item.removed")
            assert event["item"]["id"] == item_id
            assert "key" not in event
        # A later channel no longer lists it.
        ws_c, hello = await connect(wcs, bob)
        assert hello["items"] == []
        await ws_c.close()
    finally:
        await ws_a.close()
        await ws_b.close()


# -- roster ----------------------------------------------------------------------------------

async def test_participant_joined_and_left(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "P1")
    ws, _ = await connect(wcs, alice)
    try:
        bob = await wcs.admit("P1", "bob@contoso.example", organizer=ORGANIZER,
                              role="presenter")
        joined = await recv_json(ws)
        assert joined == {"type": "participant.joined", "participant": {
            "id": bob.pid, "user": "bob@contoso.example", "role": "presenter"}, "seq": 2}
        assert await wcs.revoke(bob) == 204
        left = await recv_json(ws)
        # seq 3 is bob's own `revoked`: addressed to bob's channels only.
        assert left == {"type": "participant.left", "participant": {
            "id": bob.pid, "user": "bob@contoso.example", "role": "presenter"}, "seq": 4}
        # Another conference's roster never shows up here.
        await wcs.admit("P2", "zed@contoso.example")
        await assert_silent(ws)
        await assert_alive(ws)
    finally:
        await ws.close()


async def test_a_burst_comes_batched_to_a_channel_that_asked(wcs: Wcs) -> None:
    """`?batch=1` (docs/protocol.md §4.4): the joins of one group commit are pending at once,
    so they come as JSON arrays, in seq order, nothing missed; a channel that did not ask
    gets the same events one object per frame."""
    (alice,) = await meeting(wcs, "B1")
    plain, hello = await connect(wcs, alice)
    batched = await asyncio.wait_for(wcs.http.ws_connect(
        channel_url(wcs, alice.conference) + "?batch=1", headers=alice.headers,
        heartbeat=None), TIMEOUT)
    try:
        assert (await recv_json(batched))["type"] == "welcome"
        users = [f"b{i}@contoso.example" for i in range(40)]
        joined = await asyncio.gather(*(wcs.admit("B1", u, organizer=ORGANIZER)
                                        for u in users))
        frames: list[Any] = []
        events: list[dict[str, Any]] = []
        while len(events) < len(users):
            msg = await asyncio.wait_for(batched.receive(), TIMEOUT)
            assert msg.type == WSMsgType.TEXT
            frames.append(json.loads(msg.data))
            events += frames[-1] if isinstance(frames[-1], list) else [frames[-1]]
        assert any(isinstance(f, list) and len(f) > 1 for f in frames)
        assert len(frames) < len(users)
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(hello["seq"] + 1, hello["seq"] + 1 + len(users)))
        assert {e["participant"]["id"] for e in events} == {p.pid for p in joined}
        singles = [await recv_json(plain) for _ in users]  # dicts only (recv_json asserts)
        assert [e["seq"] for e in singles] == seqs
        await assert_silent(batched)
    finally:
        await batched.close()
        await plain.close()


async def test_batch_takes_only_1(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "B2")
    for value in ("0", "2", "yes", "1&batch=1"):
        async with wcs.http.get(channel_url(wcs, alice.conference) + f"?batch={value}",
                                headers=alice.headers) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["code"] == "bad_request"


# -- revocation and the end of a conference -------------------------------------------------

async def test_revoked_socket_closed_within_a_second(wcs: Wcs) -> None:
    alice, bob, carol = await meeting(wcs, "V1", "bob@contoso.example",
                                      "carol@contoso.example")
    ws_a, _ = await connect(wcs, alice)
    ws_b, _ = await connect(wcs, bob)
    ws_b2, _ = await connect(wcs, bob)  # every channel of the participant goes
    ws_c, _ = await connect(wcs, carol)
    try:
        started = time.monotonic()
        assert await wcs.revoke(bob) == 204
        for ws in (ws_b, ws_b2):
            event = await recv_json(ws, timeout=1.0)
            assert event["type"] == "revoked"
            code = await expect_close(ws, timeout=1.0)
            assert code == 1008
        assert time.monotonic() - started < 1.0
        # The others stay connected, learn that bob left, and still get pushes.
        for ws in (ws_a, ws_c):
            left = await recv_type(ws, "participant.left")
            assert left["participant"]["id"] == bob.pid
            await assert_alive(ws)
        status, _ = await wcs.upload(alice, b"after bob left")
        assert status == 201
        for ws in (ws_a, ws_c):
            await recv_type(ws, "item.shared")
        await wait_for(lambda: subscriptions(wcs, bob) == 0)
        # Bob cannot come back with the revoked cookie.
        assert await refused_upgrade(wcs, bob, "V1") == 401
    finally:
        for ws in (ws_a, ws_b, ws_b2, ws_c):
            await ws.close()


@pytest.mark.parametrize("what", ["revoke", "end"])
async def test_revocation_racing_the_upgrade_is_not_missed(what: str, wcs: Wcs) -> None:
    """A revocation (or end) that lands after the upgrade authenticated but before the
    channel subscribed to events must still shut the participant out."""
    alice, bob = await meeting(wcs, f"RC{what}", "bob@contoso.example")
    service = wcs.server.service if wcs.server else None
    assert service is not None
    real = service.authenticate
    raced = False

    async def authenticate_then_revoke(token: str | None, conference_id: str) -> Any:
        nonlocal raced
        principal = await real(token, conference_id)
        if not raced:  # the revocation commits and publishes right after the check
            raced = True
            if what == "revoke":
                assert await service.revoke_participant(bob.conference, bob.pid)
            else:
                assert await service.end_conference(bob.conference)
        return principal

    service.authenticate = authenticate_then_revoke  # type: ignore[method-assign]
    try:
        try:
            ws = await asyncio.wait_for(wcs.http.ws_connect(
                channel_url(wcs, bob.conference), headers=bob.headers), TIMEOUT)
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 401  # refused before the upgrade: fine
        else:
            # Upgraded: then it must be closed promptly, without further pushes.
            code = await expect_close(ws, skip_text=True)
            assert code in (1000, 1008)
    finally:
        service.authenticate = real  # type: ignore[method-assign]
    assert raced
    await wait_for(lambda: subscriptions(wcs, bob) == 0)
    assert await active_channels(wcs) == 0


async def test_conference_ended_closes_every_socket(wcs: Wcs) -> None:
    people = await meeting(wcs, "E1", "bob@contoso.example", "carol@contoso.example")
    sockets = [(await connect(wcs, p))[0] for p in people]
    # Another conference's channel must not be touched.
    (zed,) = await meeting(wcs, "E2")
    other, _ = await connect(wcs, zed)
    try:
        assert await wcs.end("E1") == 204
        for ws in sockets:
            event = await recv_type(ws, "conference.ended")
            assert event == {"type": "conference.ended", "seq": 4}  # 3 joins, then the end
            code = await expect_close(ws)
            assert code == 1000
        for who in people:
            assert await refused_upgrade(wcs, who, "E1") == 401
        await assert_alive(other)
        await wait_for(lambda: all(subscriptions(wcs, p) == 0 for p in people))
        assert await active_channels(wcs) == 1
    finally:
        for ws in (*sockets, other):
            await ws.close()


async def test_expired_cookie_closes_channel(wcs: Wcs) -> None:
    assert wcs.server is not None and wcs.server.service is not None
    wcs.server.service.cookies.ttl_seconds = 2
    (alice,) = await meeting(wcs, "X1")
    ws, _ = await connect(wcs, alice)
    code = await expect_close(ws, timeout=4.0)
    assert code == 1008


# -- ping and abuse ----------------------------------------------------------------------------

async def test_ping_pong(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "G1")
    ws, _ = await connect(wcs, alice)
    try:
        for _ in range(5):
            await ws.send_str('{"type": "ping"}')
            assert await recv_json(ws) == {"type": "pong"}
        # Protocol-level pings are answered too.
        await ws.ping(b"hi")
        await assert_alive(ws)
    finally:
        await ws.close()


ABUSE: dict[str, tuple[str, Any, int]] = {
    "binary-frame": ("bytes", b'{"type": "ping"}', 1008),
    "invalid-json": ("str", '{"type": "ping"', 1008),
    "bom-and-nul": ("str", "\ufeff\x00", 1008),
    "json-array": ("str", '["ping"]', 1008),
    "json-string": ("str", '"ping"', 1008),
    "unknown-type": ("str", '{"type": "share", "item": 1}', 1008),
    "missing-type": ("str", '{"ping": true}', 1008),
    "oversized-frame": ("str", json.dumps({"type": "ping", "pad": "x" * 5000}), 1009),
    "oversized-binary": ("bytes", os.urandom(64 * 1024), 1009),
}


@pytest.mark.parametrize("case", list(ABUSE))
async def test_abuse_closes_socket_and_server_survives(case: str, wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "A1", "bob@contoso.example")
    kind, payload, expected = ABUSE[case]
    ws, _ = await connect(wcs, bob)
    watcher, _ = await connect(wcs, alice)
    try:
        if kind == "bytes":
            await ws.send_bytes(payload)
        else:
            await ws.send_str(payload)
        # After an oversized frame the stream is unusable, so the server sends its close
        # frame and drops the connection: only the close frame's code is meaningful.
        code = await expect_close(ws, clean=not case.startswith("oversized"))
        assert code == expected
        # The abuser's channel is gone server-side; everyone else is unaffected.
        await wait_for(lambda: subscriptions(wcs, bob) == 0)
        await assert_alive(watcher)
        await healthy(wcs)
        again, _ = await connect(wcs, bob)
        await assert_alive(again)
        await again.close()
    finally:
        await ws.close()
        await watcher.close()


async def test_frame_at_the_limit_is_not_oversized(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "A2")
    ws, _ = await connect(wcs, alice)
    limit = wcs.cfg.wcs.max_channel_message_bytes
    assert limit == 4096  # the default, which the oversized cases above exceed
    # A ping has no other field (§4.3): an unknown item id pads the message instead.
    msg = json.dumps({"type": "presentation.set", "item": "", "page": 1})
    msg = json.dumps({"type": "presentation.set", "item": "y" * (limit - len(msg)), "page": 1})
    assert len(msg) == limit
    await ws.send_str(msg)
    assert (await recv_json(ws))["code"] == "not_found"
    await ws.close()


async def test_compressed_oversized_message_closes_socket(wcs: Wcs) -> None:
    """permessage-deflate must not smuggle a message past the limit (a deflate bomb)."""
    (alice,) = await meeting(wcs, "A3")
    ws = await asyncio.wait_for(wcs.http.ws_connect(
        channel_url(wcs, "A3"), headers=alice.headers, compress=15), TIMEOUT)
    try:
        assert ws.compress == 15  # the server negotiated compression
        assert (await recv_json(ws))["type"] == "welcome"
        await ws.send_str(json.dumps({"type": "ping", "pad": "z" * 1_000_000}))
        assert await expect_close(ws, clean=False) == 1009
        await healthy(wcs)
    finally:
        await ws.close()


async def test_message_flood_closes_socket(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "F1")
    ws, _ = await connect(wcs, alice)
    try:
        for _ in range(30):
            await ws.send_str('{"type":"ping"}')
        pongs = 0
        deadline = time.monotonic() + TIMEOUT
        while True:
            msg = await asyncio.wait_for(ws.receive(), max(0.01, deadline - time.monotonic()))
            if msg.type != WSMsgType.TEXT:
                break
            assert json.loads(msg.data) == {"type": "pong"}
            pongs += 1
        assert msg.type == WSMsgType.CLOSE, msg
        assert msg.data == 1008 and ws.close_code == 1008
        assert pongs == 20  # the flood limit: 20 messages a second
        await wait_for(lambda: subscriptions(wcs, alice) == 0)
        await healthy(wcs)
        again, _ = await connect(wcs, alice)
        await assert_alive(again)
        await again.close()
    finally:
        await ws.close()


async def test_steady_pings_below_the_flood_limit(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "F2")
    ws, _ = await connect(wcs, alice)
    try:
        for _ in range(15):
            await ws.send_json({"type": "ping"})
            assert await recv_json(ws) == {"type": "pong"}
        await asyncio.sleep(1.1)  # a new window
        for _ in range(15):
            await ws.send_json({"type": "ping"})
            assert await recv_json(ws) == {"type": "pong"}
    finally:
        await ws.close()


async def test_slow_subscriber_is_cut_off(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "Q1")
    ws, _ = await connect(wcs, alice)
    assert wcs.server is not None and wcs.server.service is not None
    hub = wcs.server.service.events
    # Queue more events than the subscriber's queue holds before the pump can run.
    for i in range(hub.queue_length + 10):
        hub.deliver(alice.conference, 1000 + i, json.dumps(
            ParticipantJoined(Who(id=str(i), user="u", role="attendee")).to_json()))
    code = await expect_close(ws, skip_text=True)
    assert code == 1013
    await wait_for(lambda: subscriptions(wcs, alice) == 0)
    again, _ = await connect(wcs, alice)
    await assert_alive(again)
    await again.close()


# -- admission to the channel -----------------------------------------------------------------

async def test_too_many_channels_per_participant(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "C1", "bob@contoso.example")
    limit = wcs.cfg.wcs.max_channels_per_participant
    assert limit == 4
    sockets = [(await connect(wcs, bob))[0] for _ in range(limit)]
    try:
        assert await refused_upgrade(wcs, bob, "C1") == 429
        status, body, _ = await raw_upgrade(wcs, "C1", bob.headers)
        assert status == 429
        assert body["error"]["code"] == "too_many_requests"
        assert subscriptions(wcs, bob) == limit
        # The limit is per participant: alice still gets hers.
        ws_a, _ = await connect(wcs, alice)
        await ws_a.close()
        # Closing one frees a slot.
        await sockets.pop().close()
        await wait_for(lambda: subscriptions(wcs, bob) == limit - 1)
        sockets.append((await connect(wcs, bob))[0])
        for ws in sockets:
            await assert_alive(ws)
    finally:
        for ws in sockets:
            await ws.close()


async def test_concurrent_upgrades_respect_the_limit(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "C2")
    limit = wcs.cfg.wcs.max_channels_per_participant

    async def attempt() -> aiohttp.ClientWebSocketResponse | int:
        try:
            return await asyncio.wait_for(wcs.http.ws_connect(
                channel_url(wcs, "C2"), headers=alice.headers), TIMEOUT)
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status

    results = await asyncio.gather(*(attempt() for _ in range(2 * limit + 1)))
    sockets = [r for r in results if not isinstance(r, int)]
    try:
        assert sorted(r for r in results if isinstance(r, int)) == [429] * (limit + 1)
        assert len(sockets) == limit
        assert subscriptions(wcs, alice) == limit
        for ws in sockets:
            assert (await recv_json(ws))["type"] == "welcome"
    finally:
        for ws in sockets:
            await ws.close()


async def test_no_cookie_refused_before_upgrade(wcs: Wcs) -> None:
    (alice,) = await meeting(wcs, "N1")
    assert await refused_upgrade(wcs, None, "N1") == 401
    status, body, headers = await raw_upgrade(wcs, "N1")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert body["error"]["code"] == "unauthorized"
    status, body, headers = await raw_upgrade(wcs, "N1", {"Authorization": "Bearer nope"})
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    # Another conference's cookie: 403, also before the upgrade.
    (zed,) = await meeting(wcs, "N2")
    assert await refused_upgrade(wcs, zed, "N1") == 403
    # A browser cookie works for the upgrade.
    ws = await asyncio.wait_for(wcs.http.ws_connect(
        channel_url(wcs, "N1"), headers={"Cookie": f"webconf_auth={alice.cookie}"}), TIMEOUT)
    assert (await recv_json(ws))["type"] == "welcome"
    await ws.close()
    # A plain GET with a valid cookie is not an upgrade, and leaves no subscription behind.
    async with wcs.http.get(channel_url(wcs, "N1").replace("wss://", "https://", 1),
                            headers=alice.headers) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "bad_request"
    await wait_for(lambda: subscriptions(wcs, alice) == 0)
    assert await active_channels(wcs) == 0


async def test_active_channels_metric(wcs: Wcs) -> None:
    alice, bob = await meeting(wcs, "M1", "bob@contoso.example")
    assert await active_channels(wcs) == 0
    ws_a, _ = await connect(wcs, alice)
    ws_b, _ = await connect(wcs, bob)
    assert await active_channels(wcs) == 2
    await ws_a.close()
    await wait_for(lambda: subscriptions(wcs, alice) == 0)
    assert await active_channels(wcs) == 1
    # Server-side closes (revocation) count down too.
    await wcs.revoke(bob)
    await expect_close(ws_b, skip_text=True)
    await wait_for(lambda: subscriptions(wcs, bob) == 0)
    assert await active_channels(wcs) == 0
    # Refused upgrades never count.
    await refused_upgrade(wcs, bob, "M1")
    assert await active_channels(wcs) == 0


# -- shutdown ------------------------------------------------------------------------------------

async def test_server_shutdown_closes_sockets_with_1001(deployment: Config) -> None:
    cfg = deployment
    cfg.wcs.https_port = 0
    cfg.wcs.internal_port = 0
    cfg.wcs.shutdown_grace_seconds = 2.0
    server = WcsServer(cfg)
    await server.start()
    client = Wcs(cfg, server)
    stopped = False
    try:
        alice, bob = await meeting(client, "Z1", "bob@contoso.example")
        sockets = [(await connect(client, p))[0] for p in (alice, bob, bob)]
        started = time.monotonic()
        codes = await asyncio.wait_for(asyncio.gather(
            server.stop(), *(expect_close(ws) for ws in sockets)), 5.0)
        stopped = True
        assert codes[1:] == [1001, 1001, 1001]
        assert time.monotonic() - started < cfg.wcs.shutdown_grace_seconds
    finally:
        await client.close()
        if not stopped:
            await server.stop()


async def test_a_channel_closes_when_its_cookie_expires(deployment: Config) -> None:
    """The channel closes (1008, "cookie expired") at its cookie's `exp`, whatever it is
    waiting for; what came before that was delivered."""
    deployment.wcs.cookie_ttl_seconds = 3
    async with running_wcs(deployment) as wcs:
        alice = await wcs.admit("EXP1", ORGANIZER)
        ws, _ = await connect(wcs, alice)
        opened = time.monotonic()
        await wcs.admit("EXP1", "bob@contoso.example", organizer=ORGANIZER)
        joined = await recv_type(ws, "participant.joined")
        assert joined["participant"]["user"] == "bob@contoso.example"
        msg = await asyncio.wait_for(ws.receive(), 3 + TIMEOUT)
        while msg.type is WSMsgType.TEXT:  # anything else queued before the end
            msg = await asyncio.wait_for(ws.receive(), 3 + TIMEOUT)
        assert msg.type is WSMsgType.CLOSE, msg
        assert (ws.close_code, msg.extra) == (1008, "cookie expired")
        assert time.monotonic() - opened < 3 + 1.5
