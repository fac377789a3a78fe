"""The focus's persistent link: internal operations pipelined over one WebSocket (§7.3).

One HTTPS request per admit or revoke costs a request parse, a response and often a TLS
connection; a focus under a burst of joins would spend more on that than on the joins. So
each focus process keeps one WebSocket, `GET /internal/v1/link` on the internal listener
(the same client-certificate rule as every internal path: `api/peer.py`'s middleware runs
before the upgrade), and sends operations with ids, many in flight, several per frame:

- client -> WCS: text frames, each a JSON array of 1 to `MAX_OPS_PER_FRAME` operations
  `{"id": n, "op": "admit"|"revoke"|"heartbeat"|"release"|"watch"|"roster", ...fields}`;
- WCS -> client: text frames, each a JSON array of results `{"id": n, "status": s}` plus
  `"body"` (an admit's join body) or `"error": {"code", "message"}` exactly as the HTTP
  answer would carry them (`api/internal_ops.py` does the work for both), and notices
  without an id: `{"ended": <conference id>}` when a conference the link follows ended,
  `{"roster": <conference id>, "seq": n}` when its roster may have changed, and
  `{"left": {"conference", "participant"}}` when one of its participations ended.
  The link follows the conference of every admit and `roster` it carried and those a
  `watch` names (`{"op": "watch", "conferences": [ids]}`, 204; conferencing/endings.py).

Each operation runs as its own task, so concurrent admits reach the store together (which
commits them together); results leave as they complete, everything completed within one
loop turn in one frame. A bad operation (unknown `op`, a bad field) gets its own 400 result;
a frame that is not an array of objects with fresh integer ids is malformed and closes the
link (1008), as does a binary frame; aiohttp closes one over `MAX_FRAME_BYTES` (1009).
With `MAX_IN_FLIGHT` operations running, the link reads no further frame until there is
room for a whole one: backpressure through TCP, never an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from webconf.deploy.db import is_unavailable

from ..service import ConferenceService, ServiceError, valid_id
from . import internal_ops, strict_json
from .context import SERVICE
from .errors import STATUS_BY_CODE

__all__ = ["LINK_PATH", "MAX_FRAME_BYTES", "MAX_IN_FLIGHT", "MAX_OPS_PER_FRAME", "add_routes",
           "close_all"]

log = logging.getLogger("webconf.wcs.link")

LINK_PATH = "/internal/v1/link"
MAX_FRAME_BYTES = 256 * 1024
"""The largest frame the WCS reads (a bigger one closes the link with 1009)."""
MAX_OPS_PER_FRAME = 512
"""Operations in one client frame, and results in one WCS frame, at most."""
MAX_IN_FLIGHT = 4096
"""Operations of one link running at once, at most."""
MAX_WATCH = 8192
"""Conference ids in one `watch` operation, at most (the focus splits a longer list)."""
MAX_OP_ID = 2**53 - 1
"""Ids are integers 0 .. 2^53 - 1 (exact in every JSON implementation)."""
CLOSE_MALFORMED = WSCloseCode.POLICY_VIOLATION
HEARTBEAT_SECONDS = 30.0
"""WebSocket pings to the focus: a link to a focus that vanished ends within 1.5x this."""
SHUTDOWN_SECONDS = 5.0
"""At aiohttp's shutdown, how long the links get to finish their operations."""
LINKS: web.AppKey[set[_Link]] = web.AppKey("links", set)


class _Malformed(Exception):
    """The frame breaks the link's framing: close with 1008 and this reason."""


class _Link:
    """One open link: reads frames, runs their operations, writes the results."""

    def __init__(self, ws: web.WebSocketResponse, service: ConferenceService,
                 peer: str) -> None:
        self.ws = ws
        self.service = service
        self.peer = peer
        self.running: dict[int, asyncio.Task[None]] = {}
        """The operations in flight, by id."""
        self.results: list[dict[str, Any]] = []
        """Completed operations' results not yet written."""
        self.results_ready = asyncio.Event()
        self.room = asyncio.Event()
        """Set when a whole frame's operations fit under `MAX_IN_FLIGHT` again."""
        self.stopping = asyncio.Event()
        """Set by `close_all`: read no more, finish what runs, then close (1001)."""
        self.finishing = False
        self.closed = asyncio.Event()
        """Set once the link is closed and its operations are done."""
        self.ops = 0

    async def serve(self) -> None:
        writer = asyncio.create_task(self._write(), name="wcs-link-write")
        reader = asyncio.create_task(self._read(), name="wcs-link-read")
        stop = asyncio.create_task(self.stopping.wait())
        code: int | None = WSCloseCode.GOING_AWAY
        message = b"shutdown"
        try:
            await asyncio.wait({reader, stop}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done():
                try:
                    code, message = reader.result()
                except Exception:  # aiohttp's own failure: the socket is unusable
                    log.exception("link reader failed")
                    code = None
            else:  # shutdown: a frame is taken whole or not at all (`_accept` never awaits)
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            # What was accepted runs to completion (its writes are not cut halfway), and its
            # results still go out while the socket is open.
            while self.running:
                await asyncio.wait(list(self.running.values()))
        finally:
            stop.cancel()
            reader.cancel()
            try:
                self.finishing = True
                self.results_ready.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer
                if code is not None and not self.ws.closed:
                    await self.ws.close(code=code, message=message)
            finally:  # also when aiohttp cancels us at its shutdown
                writer.cancel()
                self.closed.set()
                log.info(json.dumps({"event": "link.closed", "peer": self.peer,
                                     "ops": self.ops, "code": self.ws.close_code}))

    # -- reading -----------------------------------------------------------------------------
    async def _read(self) -> tuple[int | None, bytes]:
        """Read and accept frames until the link must close: (close code, reason), code
        None when aiohttp closed it already (the peer left, or a frame was too large)."""
        while True:
            while len(self.running) + MAX_OPS_PER_FRAME > MAX_IN_FLIGHT:
                self.room.clear()
                await self.room.wait()
            msg = await self.ws.receive()
            if msg.type is WSMsgType.TEXT:
                try:
                    self._accept(msg.data)
                except _Malformed as exc:
                    return CLOSE_MALFORMED, str(exc).encode()
            elif msg.type is WSMsgType.BINARY:
                return CLOSE_MALFORMED, b"binary frames are not accepted"
            else:  # CLOSE, CLOSING, CLOSED, ERROR: aiohttp has closed (or is closing) it
                return None, b""

    def _accept(self, text: str) -> None:
        """Check a whole frame, then start each of its operations (no await: a frame is
        started completely or not at all)."""
        try:
            frame = strict_json.loads(text)
        except strict_json.JsonError as exc:
            raise _Malformed(f"frame is not acceptable JSON: {exc}") from None
        if not isinstance(frame, list) or not 1 <= len(frame) <= MAX_OPS_PER_FRAME:
            raise _Malformed(f"a frame is an array of 1 to {MAX_OPS_PER_FRAME} operations")
        ids: set[int] = set()
        for op in frame:
            op_id = op.get("id") if isinstance(op, dict) else None
            if type(op_id) is not int or not 0 <= op_id <= MAX_OP_ID:
                raise _Malformed("every operation is an object with an integer id")
            if op_id in ids or op_id in self.running:
                raise _Malformed("an operation id is already in flight")
            ids.add(op_id)
        for op in frame:
            self.running[op["id"]] = asyncio.create_task(self._run(op["id"], op))
        self.ops += len(frame)

    # -- running -----------------------------------------------------------------------------
    async def _run(self, op_id: int, op: dict[str, Any]) -> None:
        try:
            if op.get("op") == "watch":
                result = self._watch(op.get("conferences"))
            else:
                result = await execute(self.service, op)
                if op.get("op") in ("admit", "roster") and result["status"] in (200, 201):
                    self.service.endings.follow(self, result["body"]["conference"],
                                                roster=op.get("op") == "roster")
        finally:
            del self.running[op_id]
            if len(self.running) + MAX_OPS_PER_FRAME <= MAX_IN_FLIGHT:
                self.room.set()
        result["id"] = op_id
        self.results.append(result)
        self.results_ready.set()

    def _watch(self, conferences: object) -> dict[str, Any]:
        """Follow these conferences' ends (the focus's dialogs, sent when the link comes
        up): 204, or 400 for anything but a list of at most `MAX_WATCH` conference ids."""
        if not isinstance(conferences, list) or len(conferences) > MAX_WATCH or not all(
                isinstance(c, str) and valid_id(c) for c in conferences):
            return _error(400, "bad_request",
                          f"conferences must be a list of at most {MAX_WATCH} conference ids")
        for conference_id in conferences:
            self.service.endings.follow(self, conference_id)
        return {"status": 204}

    def conference_ended(self, conference_id: str) -> None:
        """A followed conference ended (conferencing/endings.py): tell the focus."""
        if not self.ws.closed:
            self.results.append({"ended": conference_id})
            self.results_ready.set()

    def roster_changed(self, conference_id: str, seq: int) -> None:
        """A followed conference's roster may have changed (docs/protocol.md §9.3)."""
        self._notice({"roster": conference_id, "seq": seq})

    def participant_left(self, conference_id: str, participant_id: str) -> None:
        """A participation of a followed conference ended: the focus BYEs its dialog."""
        self._notice({"left": {"conference": conference_id, "participant": participant_id}})

    def _notice(self, notice: dict[str, Any]) -> None:
        if not self.ws.closed:
            self.results.append(notice)
            self.results_ready.set()

    # -- writing -----------------------------------------------------------------------------
    async def _write(self) -> None:
        """Send the results that completed since the last frame, in frames of at most
        `MAX_OPS_PER_FRAME`; after `finishing`, once more and return."""
        while True:
            await self.results_ready.wait()
            self.results_ready.clear()
            while self.results:
                batch = self.results[:MAX_OPS_PER_FRAME]
                del self.results[:MAX_OPS_PER_FRAME]
                if self.ws.closed:  # the peer is gone: nobody left to tell
                    continue
                try:
                    await self.ws.send_str(json.dumps(batch, separators=(",", ":")))
                except (ConnectionError, RuntimeError):
                    continue  # closed while we wrote; the reader sees it too
            if self.finishing:
                return


async def execute(service: ConferenceService, op: dict[str, Any]) -> dict[str, Any]:
    """One operation's result, `{"status", "body"?|"error"?}`: what the HTTP route answers."""
    kind = op.get("op")
    try:
        if kind == "admit":
            req = internal_ops.admit_request(op.get("uri_id"), op)
            return {"status": 201, "body": await internal_ops.admit(service, req)}
        if kind == "revoke":
            await internal_ops.revoke(service, op.get("conference"), op.get("participant"))
        elif kind == "heartbeat":
            await internal_ops.heartbeat(service, op.get("name"))
        elif kind == "release":
            await internal_ops.release(service, op.get("name"))
        elif kind == "roster":  # the link's own: no HTTP route reads it
            return {"status": 200, "body": await internal_ops.roster(service, op)}
        else:
            raise ServiceError("bad_request",
                               "op must be admit, revoke, heartbeat, release or roster")
        return {"status": 204}
    except ServiceError as exc:
        return _error(STATUS_BY_CODE.get(exc.code, 500), exc.code, exc.message)
    except Exception as exc:
        if is_unavailable(exc):  # an outage: the engine logged it once; the focus retries
            return _error(503, "unavailable", "the database is unavailable, retry later")
        known = ("admit", "revoke", "heartbeat", "release", "roster")
        log.exception("unhandled error in link operation %s", kind if kind in known else "?")
        return _error(500, "internal", "internal server error")


def _error(status: int, code: str, message: str) -> dict[str, Any]:
    return {"status": status, "error": {"code": code, "message": message}}


async def link(request: web.Request) -> web.StreamResponse:
    """`GET /internal/v1/link`: upgrade, then serve operations until either side closes."""
    # aiohttp refuses a frame whose size is >= max_msg_size.
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES + 1, heartbeat=HEARTBEAT_SECONDS,
                               autoping=True, compress=False)
    if not ws.can_prepare(request).ok:
        raise ServiceError("bad_request", "expected a WebSocket upgrade")
    await ws.prepare(request)
    peer = str(request.remote)
    current = _Link(ws, request.app[SERVICE], peer)
    links = request.app[LINKS]
    links.add(current)
    log.info(json.dumps({"event": "link.open", "peer": peer}))
    try:
        await current.serve()
    finally:
        links.discard(current)
        current.service.endings.unfollow_all(current)
    return ws


def close_all(app: web.Application) -> None:
    """Make every open link of `app` stop reading, finish its operations, send their
    results and close (1001): call it when the WCS stops, before it drains."""
    for each in app.get(LINKS, ()):
        each.stopping.set()


async def _close_on_shutdown(app: web.Application) -> None:
    """aiohttp's shutdown: close the links and give them a moment to finish (after that,
    aiohttp cancels their handlers)."""
    close_all(app)
    closed = [each.closed.wait() for each in app.get(LINKS, ())]
    if closed:
        await asyncio.wait([asyncio.ensure_future(c) for c in closed],
                           timeout=SHUTDOWN_SECONDS)


def add_routes(app: web.Application) -> None:
    app[LINKS] = set()
    app.router.add_get(LINK_PATH, link)
    app.on_shutdown.append(_close_on_shutdown)
