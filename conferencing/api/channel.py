"""The data channel: a WebSocket per participant that pushes items and their keys.

Server -> client (JSON text frames): `welcome` (every current item with its key, and the
presentation), then `item.shared`, `item.removed`, `participant.joined`,
`participant.left`, `presentation.changed`, `revoked`, `conference.ended`, `pong` replies
and `error` frames. Client -> server: `{"type": "ping"}` and `presentation.set`
(docs/protocol.md §4.3). A protocol violation closes the socket: binary frames, invalid JSON
(nesting over 4 levels and lone surrogates included), an unknown type, a missing, extra or
mistyped field, or a message flood get 1008 (policy violation); an oversized frame gets
1009 (aiohttp enforces `max_msg_size`). A well-formed request the service refuses (not a
presenter, unknown item, page out of range, rate-limited) gets an `error` frame with the
HTTP API's code, and the channel stays open. A browser's upgrade carrying
the `webconf_auth` cookie must come from one of our own origins (`context.authenticate`).
A revoked or ended participant gets its final event and then a close; a cookie that
expires closes the channel at `exp`.

The channel's role is the one in force (docs/protocol.md §9.2): read when it opens, then
moved by its participant's `participant.role_changed` (`Subscription.role`); a check of
anything the client sends uses `current_principal`.

Every event carries its `seq` in the conference's event log (docs/protocol.md §4.3), and
the welcome the seq its item list reflects. `?after=N` resumes a channel: while the log
still holds every event after N, a `resumed` frame and those events replace the welcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time

from aiohttp import WSCloseCode, WSMsgType, web

from webconf.deploy.db import is_unavailable
from webconf.events import ErrorFrame, Ping, Pong, PresentationSet, Resumed, Welcome

from ..events import Subscription
from ..presenting import parse_set, presenting
from ..service import Principal, ServiceError
from . import strict_json
from .context import CHANNELS, METRICS, SERVICE, authenticate

__all__ = ["CHANNELS", "CLOSE_REVOKED", "channel", "current_principal"]

FLOOD_WINDOW_SECONDS = 1.0
FLOOD_MAX_MESSAGES = 20
CLOSE_REVOKED = WSCloseCode.POLICY_VIOLATION
COOKIE_EXPIRED = "cookie expired"
"""The subscription's close reason when its cookie's `exp` passed (`_pump_events`)."""
CHANNEL_MAX_DEPTH = 4
"""A ping is one flat object; anything nested deeper is abuse."""
MAX_SEQ_DIGITS = 18
BATCH_MAX_EVENTS = 256
BATCH_MAX_CHARS = 1024 * 1024
"""A batched frame (`?batch=1`, docs/protocol.md §4.4) holds at most this many events and,
past its first event, this many characters."""

log = logging.getLogger("webconf.wcs.channel")


def current_principal(who: Principal, sub: Subscription) -> Principal:
    """The channel's participant with the role in force now (docs/protocol.md §9.2): what
    any check of a client's channel message must use, not the role at open time."""
    if not sub.role or sub.role == who.role:
        return who
    return Principal(dataclasses.replace(who.claims, role=sub.role))


def _after(request: web.Request) -> int | None:
    """The `after` query parameter: None, or a non-negative integer (else a 400)."""
    raw = request.query.getall("after", [])
    if not raw:
        return None
    if len(raw) > 1 or not raw[0].isascii() or not raw[0].isdigit() or (
            len(raw[0]) > MAX_SEQ_DIGITS):
        raise ServiceError("bad_request", "after must be one non-negative integer")
    return int(raw[0])


def _batched(request: web.Request) -> bool:
    """The `batch` query parameter: absent, or `1` (else a 400)."""
    raw = request.query.getall("batch", [])
    if not raw:
        return False
    if raw != ["1"]:
        raise ServiceError("bad_request", "batch must be 1")
    return True


async def channel(request: web.Request) -> web.StreamResponse:
    after = _after(request)
    batched = _batched(request)
    who = await authenticate(request)
    service = request.app[SERVICE]
    cfg = service.cfg.wcs
    if service.events.count(who.conference_id, who.participant_id) >= (
            cfg.max_channels_per_participant):
        raise ServiceError("too_many_requests", "too many data channels for this participant")
    # aiohttp refuses a frame whose size is >= max_msg_size; the setting is the largest
    # message a client may send.
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=cfg.max_channel_message_bytes + 1,
                               autoping=True)
    if not ws.can_prepare(request).ok:
        raise ServiceError("bad_request", "expected a WebSocket upgrade")
    # Subscribe before reading the item list (or the log) so no event can fall between.
    sub = await service.feed.subscribe(who.conference_id, who.participant_id)
    try:
        # The check above ran before an await: concurrent upgrades may all have passed it.
        if service.events.count(who.conference_id, who.participant_id) > (
                cfg.max_channels_per_participant):
            raise ServiceError("too_many_requests",
                               "too many data channels for this participant")
        # A revocation or end that committed while we authenticated was delivered before
        # this subscription existed; check again now that none can be missed. The role
        # read then is in force from here on; later changes reach `sub.role` through the
        # log (EventHub.follow_role, docs/protocol.md §9.2).
        who = await authenticate(request)
        sub.role = who.role
        replay = False
        if after is not None:
            last, replay = await service.store.log_holds(who.conference_id, after)
            if after > last:
                raise ServiceError("bad_request", "after is beyond the conference's last event")
    except BaseException:
        sub.unsubscribe()
        raise
    metrics = request.app[METRICS]
    request.app[CHANNELS].add(ws)
    metrics.active_channels.inc()
    try:
        await ws.prepare(request)
        if replay and after is not None:
            ended = await _replay(ws, sub, request, who, after)
        else:
            # The seq first, then the items: an event in between is then both in the list
            # and pushed (the client de-duplicates by item id), never in neither.
            seq = (await service.store.last_seqs([who.conference_id])).get(
                who.conference_id, 0)
            items = await service.items_with_keys(who)
            shown = await presenting(service).current(who.conference_id)
            sub.cursor = max(sub.cursor, seq)
            await ws.send_str(json.dumps(Welcome(
                conference=who.conference_id, participant=who.participant_id, role=who.role,
                items=tuple(items), seq=seq, presentation=shown).to_json()))
            ended = None
        if ended is not None:
            await ws.close(code=ended[0], message=ended[1])
        else:
            await _serve(ws, sub, who.claims.expires_at, request, who, batched)
    finally:
        sub.unsubscribe()
        request.app[CHANNELS].discard(ws)
        metrics.active_channels.dec()
        if not ws.closed:
            await ws.close()
    return ws


async def _replay(ws: web.WebSocketResponse, sub: Subscription, request: web.Request,
                  who: Principal, after: int) -> tuple[int, bytes] | None:
    """Send `resumed` and the logged events after `after` (this participant's and the
    conference's); the close to make if one of them was final for us, else None."""
    service = request.app[SERVICE]
    await ws.send_str(json.dumps(Resumed(
        conference=who.conference_id, participant=who.participant_id, role=who.role,
        seq=after).to_json()))
    cursor = after
    while True:
        rows = await service.store.events_after(who.conference_id, cursor)
        for row in rows:
            cursor = row.seq
            if row.participant_id not in (None, who.participant_id):
                continue
            message = await service.render_event(row)
            if message is not None:
                await ws.send_str(message)
            sub.cursor = max(sub.cursor, row.seq)
            if row.final:
                return _final_close(row.type)
        if not rows:
            return None


def _final_close(event_type: str) -> tuple[int, bytes]:
    if event_type == "conference.ended":
        return WSCloseCode.OK, b"conference ended"
    return CLOSE_REVOKED, b"revoked"


async def _serve(ws: web.WebSocketResponse, sub: Subscription, expires_at: int,
                 request: web.Request, who: Principal, batched: bool) -> None:
    """Read the client and pump events until either ends; close as the pump decides.

    The pump's close happens here, once the reader task is gone: closing from one task while
    another waits in `receive()` makes aiohttp drop the connection right after our close
    frame, so clients see 1006 (abnormal closure) instead of 1008/1000/1001.
    """
    lock = asyncio.Lock()
    reader = asyncio.create_task(_read_client(ws, lock, request, who))
    pump = asyncio.create_task(_pump_events(ws, sub, lock, expires_at, batched))
    try:
        await asyncio.wait({reader, pump}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (reader, pump):
            task.cancel()
        await asyncio.gather(reader, pump, return_exceptions=True)
    if pump.cancelled() or pump.exception() is not None:
        return
    code, reason = pump.result()
    if not ws.closed:
        with contextlib.suppress(ConnectionError):
            await ws.close(code=code, message=reason)


async def _pump_events(ws: web.WebSocketResponse, sub: Subscription, lock: asyncio.Lock,
                       expires_at: int, batched: bool) -> tuple[int, bytes]:
    """Send events until the subscription ends; return the close code and reason.

    Whatever is pending when the pump wakes is sent together: with `batched`, several
    events go as one frame, a JSON array (docs/protocol.md §4.4), so a burst (a thousand
    joins to a large meeting) costs each channel one frame per wake-up instead of one per
    event; otherwise as consecutive frames."""
    timeout = expires_at - time.time()
    if timeout <= 0:
        return CLOSE_REVOKED, b"cookie expired"
    # One timer for the channel's life, not one per wake-up (an asyncio.timeout around
    # each wait cost ~14 us per frame, on every channel of a burst).
    expiry = asyncio.get_running_loop().call_later(timeout, sub.end, COOKIE_EXPIRED)
    try:
        while True:
            messages = await sub.next_batch(BATCH_MAX_EVENTS, BATCH_MAX_CHARS)
            if messages is None:
                reason = sub.close_reason
                if reason == COOKIE_EXPIRED:
                    return CLOSE_REVOKED, b"cookie expired"
                if reason in ("conference.ended", "revoked"):
                    return _final_close(reason)
                if sub.overflowed:
                    return WSCloseCode.TRY_AGAIN_LATER, b"too slow"
                return WSCloseCode.GOING_AWAY, b"server shutting down"
            async with lock:
                if sub.close_reason == COOKIE_EXPIRED:  # expired while we waited for the lock
                    return CLOSE_REVOKED, b"cookie expired"
                if batched and len(messages) > 1:
                    await ws.send_str(f"[{','.join(messages)}]")
                else:
                    for message in messages:
                        await ws.send_str(message)
    finally:
        expiry.cancel()


async def _read_client(ws: web.WebSocketResponse, lock: asyncio.Lock, request: web.Request,
                       who: Principal) -> None:
    window_start = time.monotonic()
    count = 0
    async for msg in ws:
        now = time.monotonic()
        if now - window_start > FLOOD_WINDOW_SECONDS:
            window_start, count = now, 0
        count += 1
        if count > FLOOD_MAX_MESSAGES:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"message flood")
            return
        if msg.type == WSMsgType.TEXT:
            try:
                data = strict_json.loads(msg.data, max_depth=CHANNEL_MAX_DEPTH)
            except strict_json.JsonError:
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"invalid JSON")
                return
            kind = data.get("type") if isinstance(data, dict) else None
            reply: dict[str, object] | None
            if kind == Ping.TYPE and isinstance(data, dict) and len(data) == 1:
                reply = Pong().to_json()
            elif kind == PresentationSet.TYPE:
                try:
                    wanted = parse_set(data, channel=True)
                except ServiceError:
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION,
                                   message=b"malformed presentation.set")
                    return
                reply = await _present(request, who, wanted)
                if reply is None:
                    continue  # the presentation.changed event is the answer
            else:
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unknown message")
                return
            async with lock:
                await ws.send_str(json.dumps(reply))
        elif msg.type == WSMsgType.BINARY:
            await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"binary frames refused")
            return
        elif msg.type == WSMsgType.ERROR:
            return


async def _present(request: web.Request, who: Principal,
                   wanted: PresentationSet) -> dict[str, object] | None:
    """Apply a `presentation.set`; None when done (everyone, this channel included, gets
    the event), else the `error` frame to send (docs/protocol.md §4.3)."""
    try:
        await presenting(request.app[SERVICE]).set(who, wanted)
    except ServiceError as exc:
        return ErrorFrame(exc.code, exc.message, PresentationSet.TYPE).to_json()
    except Exception as exc:
        if not is_unavailable(exc):
            log.exception("presentation.set failed")
            return ErrorFrame("internal", "internal error", PresentationSet.TYPE).to_json()
        return ErrorFrame("unavailable", "the database is unavailable, retry later",
                          PresentationSet.TYPE).to_json()
    return None
