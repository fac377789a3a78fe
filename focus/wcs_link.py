"""The focus's end of its persistent link to the WCS (docs/protocol.md §7.3).

One WebSocket per focus process to `GET /internal/v1/link` on the WCS's internal listener,
over the same mTLS as the HTTP calls. `call` gives an operation an id and queues it; one
writer sends everything queued in one frame per loop turn (at most `MAX_OPS_PER_FRAME`
operations and `MAX_FRAME_BYTES` per frame), and the reader hands each result to the call
that waits for its id, so many joins share a frame and none waits for another's answer.

`WcsLink` keeps the link open: it reconnects with backoff whenever it drops, and logs the
start and the end of an outage once each. It never delays an operation: while the link is
down (or not yet up) `call` raises `LinkDown` at once and the caller sends the operation
over HTTP instead. An operation that was queued but never sent when the link dropped gets
`LinkDown` too; one that was sent and not answered gets `LinkLost` (it may or may not have
happened, as with an HTTP request whose connection broke).

The WCS also sends notices without an id: `{"ended": <conference id>}` when a conference
this focus follows has ended (docs/protocol.md §7.3): `on_ended` gets the id, and the focus
sends BYE on that conference's dialogs; `{"roster": <id>, "seq": n}` (`on_roster`: read
the roster again for the subscriptions, docs/protocol.md §9.3) and `{"left": {"conference",
"participant"}}` (`on_left`: BYE that participant's dialog, if held here). `on_up` runs
each time the link comes up, so the focus can (re)send its `watch` of the conferences it
has dialogs or subscriptions in.

Secrecy: results carry cookies; nothing here logs a frame, a result or an operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp

from webconf.retry import Backoff

__all__ = ["LINK_PATH", "LinkDown", "LinkLost", "WcsLink"]

log = logging.getLogger("webconf.focus.link")

LINK_PATH = "/internal/v1/link"
MAX_FRAME_BYTES = 256 * 1024
"""The WCS reads frames up to this size (docs/protocol.md §7.3)."""
MAX_OPS_PER_FRAME = 512
MAX_RESULT_FRAME_BYTES = 8 * 1024 * 1024
"""The largest results frame we accept (512 join bodies are well under 1 MiB)."""
HEARTBEAT_SECONDS = 15.0
"""Ping the WCS when it has sent nothing for this long; no pong within half: link down."""
CLOSE_SECONDS = 2.0
"""How long a close waits for the WCS's closing handshake."""
EXPIRY_STEP = 0.05
"""A call's timeout fires at most this late (the link checks its deadlines in steps)."""
STABLE_SECONDS = 10.0
"""A link that stayed up this long resets the reconnect backoff."""


class LinkDown(Exception):
    """The link is not up, or the operation never left: send it over HTTP instead."""


class LinkLost(Exception):
    """The link closed after the operation was sent and before its result came."""


class WcsLink:
    """The persistent link of one focus process; `start()` it, `close()` it on shutdown."""

    def __init__(self, url: str, ssl_context: ssl.SSLContext, *, timeout: float,
                 reconnect: Backoff | None = None,
                 on_ended: Callable[[str], None] | None = None,
                 on_up: Callable[[], None] | None = None,
                 on_roster: Callable[[str, int], None] | None = None,
                 on_left: Callable[[str, str], None] | None = None) -> None:
        self.url = url
        self.on_ended = on_ended
        """Told the id of each conference the WCS says has ended."""
        self.on_roster = on_roster
        """Told (conference, seq) of each roster change notice."""
        self.on_left = on_left
        """Told (conference, participant) of each participation that ended."""
        self.on_up = on_up
        """Called each time the link comes up."""
        self._ssl = ssl_context
        self._timeout = timeout
        """Bounds each connection attempt, TLS handshake and upgrade included."""
        self._backoff = reconnect or Backoff(initial=0.1, maximum=5.0)
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        """Operations waiting for their result, by id (queued or sent)."""
        self._queue: deque[tuple[int, str]] = deque()
        """Encoded operations not yet sent, oldest first."""
        self._wake = asyncio.Event()
        self._tried = asyncio.Event()
        """Set once the first connection attempt has ended, either way."""
        self._next_id = 0
        self._deadlines: list[tuple[float, int]] = []
        """(deadline, id) of every call, a heap (`_expire_at`)."""
        self._sweep: asyncio.TimerHandle | None = None
        self._down_since: float | None = None
        self.opened = 0
        """How many times the link came up (one WCS `link.open` each)."""

    @property
    def up(self) -> bool:
        return self._ws is not None and not self._ws.closed

    async def start(self, wait: float) -> None:
        """Start keeping the link; return once the first attempt ended, or after `wait`."""
        if self._task is None:
            self._task = asyncio.create_task(self._keep(), name="focus-wcs-link")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._tried.wait()

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._deadlines.clear()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, op: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Send `op` (without its id) and return its result, `{"id", "status", ...}`.

        Raises `LinkDown` (not sent: use HTTP), `LinkLost` (sent, no answer) or
        `TimeoutError` (no answer within `timeout`)."""
        if not self.up:
            raise LinkDown("the link is down")
        op_id = self._next_id
        self._next_id += 1
        data = json.dumps({"id": op_id, **op}, separators=(",", ":"))
        if len(data) + 2 > MAX_FRAME_BYTES:
            raise LinkDown("operation too large for a frame")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._pending[op_id] = future
        self._queue.append((op_id, data))
        self._wake.set()
        self._expire_at(loop, loop.time() + timeout, op_id)
        try:
            return await future
        finally:
            self._pending.pop(op_id, None)  # a late result finds no one and is dropped

    def _expire_at(self, loop: asyncio.AbstractEventLoop, deadline: float, op_id: int) -> None:
        """Fail `op_id` with TimeoutError at `deadline` unless answered by then.

        One timer for the whole link, at its earliest deadline (then at most every
        `EXPIRY_STEP`), instead of one per call: under uvloop a timer started and stopped
        per operation (`asyncio.timeout`) cost ~14 us, a tenth of a join's link work.
        Answered operations leave their deadline in the heap until it passes (they are no
        longer pending then: nothing happens); the heap holds calls/s x timeout at most."""
        heapq.heappush(self._deadlines, (deadline, op_id))
        if self._sweep is None or deadline < self._sweep.when():
            if self._sweep is not None:
                self._sweep.cancel()
            self._sweep = loop.call_at(deadline, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._sweep = None
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, op_id = heapq.heappop(deadlines)
            future = self._pending.get(op_id)
            if future is not None and not future.done():
                future.set_exception(TimeoutError())
        if deadlines:  # answered calls' deadlines pass too: wake at most every EXPIRY_STEP
            self._sweep = loop.call_at(max(deadlines[0][0], now + EXPIRY_STEP), self._expire,
                                       loop)

    # -- the connection ----------------------------------------------------------------------
    async def _keep(self) -> None:
        while True:
            try:
                ws = await self._connect()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._went_down(f"{type(exc).__name__}: {exc}")
                self._tried.set()
                await asyncio.sleep(self._backoff.next_delay())
                continue
            self._came_up(ws)
            self._tried.set()
            since = time.monotonic()
            writer = asyncio.create_task(self._write(ws), name="focus-wcs-link-write")
            try:
                await self._read(ws)
            finally:
                self._ws = None
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writer  # its failure, if any, is the link's: it closed
                self._fail_waiting()
                if not ws.closed:
                    with contextlib.suppress(Exception):
                        await ws.close()
            self._went_down(f"closed by the WCS ({ws.close_code})")
            if time.monotonic() - since >= STABLE_SECONDS:
                self._backoff.reset()
            await asyncio.sleep(self._backoff.next_delay())

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=1),
                headers={"User-Agent": "webconf-focus"})
        async with asyncio.timeout(self._timeout):
            return await self._session.ws_connect(
                self.url, heartbeat=HEARTBEAT_SECONDS, autoping=True, compress=0,
                max_msg_size=MAX_RESULT_FRAME_BYTES,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=CLOSE_SECONDS))

    def _came_up(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.opened += 1
        event: dict[str, Any] = {"event": "wcs_link.up", "url": self.url, "opened": self.opened}
        if self._down_since is not None:
            event["outage_seconds"] = round(time.monotonic() - self._down_since, 3)
            self._down_since = None
        log.info(json.dumps(event))
        if self.on_up is not None:
            self.on_up()

    def _went_down(self, reason: str) -> None:
        """Log the start of an outage once (the reason names no secret: no frame in it)."""
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(json.dumps({"event": "wcs_link.down", "url": self.url,
                                    "reason": reason[:200]}))

    def _fail_waiting(self) -> None:
        """The link is gone: what never left goes over HTTP, what left is lost."""
        unsent = {op_id for op_id, _ in self._queue}
        self._queue.clear()
        for op_id, future in list(self._pending.items()):
            if not future.done():
                future.set_exception(LinkDown("the link dropped") if op_id in unsent
                                     else LinkLost("the link dropped before the answer"))
        self._pending.clear()

    # -- frames ------------------------------------------------------------------------------
    async def _write(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send what is queued: every loop turn's operations together, frames bounded."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                parts: list[str] = []
                size = 2
                while self._queue and len(parts) < MAX_OPS_PER_FRAME:
                    op_id, data = self._queue[0]
                    if op_id not in self._pending:  # timed out before it left
                        self._queue.popleft()
                        continue
                    if parts and size + len(data) + 1 > MAX_FRAME_BYTES:
                        break
                    self._queue.popleft()
                    parts.append(data)
                    size += len(data) + 1
                if parts:
                    try:
                        await ws.send_str(f"[{','.join(parts)}]")
                    except (ConnectionError, aiohttp.ClientError, RuntimeError):
                        await ws.close()  # the reader sees the close and ends the link
                        return

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Hand each result to its call, until the link closes or the WCS misbehaves."""
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                return
            try:
                results = json.loads(msg.data)
            except ValueError:
                return
            if not isinstance(results, list):
                return
            for result in results:
                op_id = result.get("id") if isinstance(result, dict) else None
                if type(op_id) is not int:
                    if isinstance(result, dict):
                        self._notice(result)
                    continue
                future = self._pending.pop(op_id, None)
                if future is not None and not future.done():
                    future.set_result(result)

    def _notice(self, notice: dict[str, Any]) -> None:
        """An element without an id: an end, a roster change or a participation's end."""
        ended, roster, left = notice.get("ended"), notice.get("roster"), notice.get("left")
        if isinstance(ended, str) and self.on_ended is not None:
            self.on_ended(ended)
        elif isinstance(roster, str) and type(notice.get("seq")) is int and (
                self.on_roster is not None):
            self.on_roster(roster, notice["seq"])
        elif isinstance(left, dict) and self.on_left is not None:
            conference, participant = left.get("conference"), left.get("participant")
            if isinstance(conference, str) and isinstance(participant, str):
                self.on_left(conference, participant)
