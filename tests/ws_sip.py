"""A SIP-over-WebSocket connection (RFC 7118) for tests: what a browser's SIP stack does.

`WsSipConnection` has the interface `clients.sip.ConferenceDialog` uses of a
`SipConnection` (send, register, response, via, ...), so the same dialog code joins over
WSS: one SIP message per WebSocket text message, Via `SIP/2.0/WSS <random>.invalid`, as
SIP.js and JsSIP write it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import ssl

import aiohttp

from clients.sip import SipError
from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.sip.message import Request, Response, parse_message, response_bytes


def wss_url(cfg: Config) -> str:
    return f"wss://127.0.0.1:{cfg.focus.wss_port}/"


class WsSipConnection:
    """One WebSocket to the focus, responses matched by Call-ID."""

    transport = "WSS"

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse,
                 timeout: float) -> None:
        self.session = session
        self.ws = ws
        self.timeout = timeout
        self.local_host = secrets.token_hex(6) + ".invalid"  # RFC 7118 §5.2
        self.local_port = 0
        self._responses: dict[str, asyncio.Queue[Response]] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self.frames: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()
        """Every message that is not a response to a registered call (for the tests)."""
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, cfg: Config, *, origin: str | None = None,
                   protocols: tuple[str, ...] = ("sip",), timeout: float = 10.0,
                   ssl_context: ssl.SSLContext | None = None,
                   max_msg_size: int = 4 * 1024 * 1024,
                   local_addr: tuple[str, int] | None = None) -> WsSipConnection:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=ssl_context or tls.client_context(cfg), local_addr=local_addr))
        headers = {} if origin is None else {"Origin": origin}
        try:
            ws = await session.ws_connect(wss_url(cfg), protocols=protocols, headers=headers,
                                          timeout=aiohttp.ClientWSTimeout(ws_close=timeout),
                                          max_msg_size=max_msg_size, autoping=True)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws, timeout)

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                data = msg.data.encode() if isinstance(msg.data, str) else msg.data
                try:
                    parsed = parse_message(data)
                except Exception:  # noqa: BLE001 - not SIP (a CRLF pong): for the test
                    self.frames.put_nowait(msg)
                    continue
                if isinstance(parsed, Response):
                    queue = self._responses.get(parsed.headers.get("Call-ID") or "")
                    if queue is not None:
                        queue.put_nowait(parsed)
                        continue
                elif isinstance(parsed, Request) and parsed.method == "BYE":
                    ended = self._ended.get(parsed.headers.get("Call-ID") or "")
                    await self.ws.send_str(response_bytes(
                        parsed, 481 if ended is None else 200).decode())
                    if ended is not None:
                        ended.set()
                    continue
            self.frames.put_nowait(msg)
        for queue in self._responses.values():
            queue.put_nowait(Response(0, "WebSocket closed"))
        self.frames.put_nowait(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSED, None, None))

    def send(self, data: bytes) -> None:
        asyncio.get_running_loop().create_task(self.ws.send_str(data.decode()))

    async def send_frame(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self.ws.send_str(data)
        else:
            await self.ws.send_bytes(data)

    def register(self, call_id: str) -> asyncio.Event:
        self._responses.setdefault(call_id, asyncio.Queue())
        return self._ended.setdefault(call_id, asyncio.Event())

    def unregister(self, call_id: str) -> None:
        self._responses.pop(call_id, None)
        self._ended.pop(call_id, None)

    async def response(self, call_id: str, *, final: bool = True) -> Response:
        queue = self._responses[call_id]
        while True:
            item = await asyncio.wait_for(queue.get(), self.timeout)
            if item.status == 0:
                raise SipError(0, item.reason)
            if final and item.status < 200:
                continue
            return item

    async def next_frame(self, timeout: float | None = None) -> aiohttp.WSMessage:
        return await asyncio.wait_for(self.frames.get(), timeout or self.timeout)

    def via(self, branch: str) -> str:
        return f"SIP/2.0/WSS {self.local_host};branch={branch}"

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        await self.session.close()
