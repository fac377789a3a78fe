"""Client of the WCS public API (docs/protocol.md §4): items over HTTPS, events over WSS.

Only the public wire protocol is used, so anything here a third-party client could do too.
`WcsSession` holds one pooled aiohttp session and the participant's cookie (from the SIP
200 OK); `Channel` is the data channel with keep-alives, reconnects and de-duplication.

Channel plan: one socket at a time. A drop other than a final one (revoked, conference
ended, our own close) is followed by reconnect attempts spaced by `Backoff` (0.2 s doubling
to 10 s, equal jitter) until one succeeds or the WCS answers 401/403 (the cookie is no
longer good). A reconnect's `welcome` is not passed on as such: it is diffed against the
items the consumer has already seen, and only the difference is emitted, as synthetic
`item.shared`/`item.removed` events, so the consumer sees every item once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import mimetypes
import os
import re
import ssl
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiofiles
import aiohttp
from aiohttp import WSMsgType

from webconf.events import (
    ConferenceEnded,
    EventError,
    ItemRemoved,
    ItemShared,
    Ping,
    Pong,
    Resumed,
    Revoked,
    Welcome,
    event_seq,
    parse_event,
)
from webconf.protocol import valid_id
from webconf.retry import Backoff

READ_SIZE = 1024 * 1024
"""Upload read size and download chunk size: big enough that per-chunk overhead vanishes."""
PING_INTERVAL = 20.0
CONNECT_TIMEOUT = 15.0
MAX_CHANNEL_MESSAGE = 16 * 1024 * 1024
"""A welcome lists every item with its key; leave room for large conferences."""
HANDSHAKE_CODES = {401: "unauthorized", 403: "forbidden", 404: "not_found",
                   429: "too_many_requests", 503: "unavailable"}
"""A refused upgrade's body is not readable through aiohttp; name its status instead."""
PING_FRAME = json.dumps(Ping().to_json(), separators=(",", ":"))
"""The keep-alive frame, `{"type":"ping"}`."""
COMPRESSION_TYPES = {"gzip": "application/gzip", "bzip2": "application/x-bzip2",
                     "xz": "application/x-xz", "br": "application/x-brotli",
                     "compress": "application/x-compress"}

Progress = Callable[[int, int | None], None]
"""`progress(bytes_done, total)`; total is None when the size is not known in advance."""


class WcsError(Exception):
    """The WCS refused a request (`status` >= 400, `code`/`message` from its JSON error body),
    or it could not be reached (`status` 0, `code` "network")."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


class WcsAuthError(WcsError):
    """401: the cookie is missing, expired, revoked, or its conference has ended."""


def client_ssl_context(ca_pem: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A verifying TLS context; trust only the deployment's CA when one is given."""
    ctx = ssl.create_default_context(cafile=os.fspath(ca_pem) if ca_pem is not None else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def guess_content_type(name: str) -> str:
    """Content type from the name; a compressed file is its compression, not its contents."""
    kind, encoding = mimetypes.guess_type(name, strict=False)
    if encoding is not None:
        return COMPRESSION_TYPES.get(encoding, "application/octet-stream")
    return kind or "application/octet-stream"


async def raise_for_error(resp: aiohttp.ClientResponse) -> None:
    """Turn an error response into WcsError, reading the `{"error": {...}}` body if any."""
    if resp.status < 400:
        return
    code, message = "error", resp.reason or ""
    try:
        body = json.loads(await resp.read())
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code", code))
            message = str(error.get("message", message))
    except (ValueError, aiohttp.ClientError, UnicodeDecodeError):
        pass
    cls = WcsAuthError if resp.status == 401 else WcsError
    raise cls(resp.status, code, message)


def _check_id(item_id: str) -> str:
    if not valid_id(item_id):
        raise ValueError(f"invalid item id {item_id!r}")
    return item_id


class WcsSession:
    """One participant's view of one conference on one WCS, over a pooled HTTPS session.

    Pass `session` to share a pool between many participants (load tests); it is then not
    closed by `close()`. The TLS context is given per request so a shared pool works too.
    """

    def __init__(self, webconf_url: str, conference: str, cookie: str, *,
                 ssl: ssl.SSLContext, session: aiohttp.ClientSession | None = None) -> None:
        parts = urlsplit(webconf_url)
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError(f"webconf_url must be an https:// URL, got {webconf_url!r}")
        self.webconf_url = webconf_url.rstrip("/")
        self.conference = _check_id(conference)
        self.cookie = cookie
        self.ssl = ssl
        self._session = session
        self._owns_session = session is None
        self.base_url = f"{self.webconf_url}/v1/conferences/{quote(conference, safe='')}"

    @property
    def http(self) -> aiohttp.ClientSession:
        """The pooled session, created on first use (inside the running loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self.ssl, limit=32),
                timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT,
                                              sock_read=300))
        return self._session

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cookie}"}

    @property
    def channel_url(self) -> str:
        return "wss://" + self.base_url.removeprefix("https://") + "/channel"

    async def close(self) -> None:
        # A shared pool belongs to its owner: keep the reference so later use does not
        # silently create a private session that nobody closes.
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> WcsSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def check_url(self, url: str) -> str:
        """Refuse to send the cookie anywhere but this conference's items on this WCS."""
        ours, theirs = urlsplit(self.base_url), urlsplit(url)
        if (theirs.scheme, theirs.netloc.lower()) != (ours.scheme, ours.netloc.lower()) or (
                not theirs.path.startswith(ours.path + "/items/")):
            raise WcsError(0, "foreign_url", f"refusing to send the cookie to {url!r}")
        return url

    @contextlib.asynccontextmanager
    async def request(self, method: str, url: str, **kwargs: Any
                      ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A request with the cookie; error statuses and transport failures raise WcsError."""
        headers = {**kwargs.pop("headers", {}), **self.auth_headers}
        kwargs.setdefault("allow_redirects", False)  # the cookie follows no redirect
        try:
            async with self.http.request(method, url, headers=headers, ssl=self.ssl,
                                         **kwargs) as resp:
                await raise_for_error(resp)
                yield resp
        except aiohttp.ClientError as exc:
            raise WcsError(0, "network", f"{method} {url}: {type(exc).__name__}: {exc}"
                           ) from exc

    async def _json(self, method: str, url: str, **kwargs: Any) -> Any:
        async with self.request(method, url, **kwargs) as resp:
            if resp.status == 204:
                return None
            try:
                return await resp.json(content_type=None)
            except ValueError as exc:
                raise WcsError(resp.status, "bad_response", "response is not JSON") from exc

    # -- items ---------------------------------------------------------------------------
    async def upload(self, path_or_stream: str | os.PathLike[str] | AsyncIterable[bytes], *,
                     name: str, content_type: str | None = None,
                     progress: Progress | None = None, sha256: bool | str = True,
                     size: int | None = None) -> dict[str, Any]:
        """Share a file (streamed from disk) or an async byte stream; return the item.

        For a file, `sha256=True` hashes it in a first streaming pass and sends
        `X-Content-SHA256`; the upload pass hashes again and aborts the request before its
        last byte if the file changed in between, so the WCS never commits a wrong digest.
        A stream cannot be read twice: pass its hex digest as `sha256` to have it sent (and
        checked the same way), and its `size` for a Content-Length (else it is chunked).
        """
        content_type = content_type or guess_content_type(name)
        headers = {"X-Item-Name": quote(name, safe=""), "Content-Type": content_type}
        expected: str | None = sha256 if isinstance(sha256, str) else None
        if isinstance(path_or_stream, (str, os.PathLike)):
            path = Path(path_or_stream)
            size = path.stat().st_size
            if sha256 is True:
                expected = await asyncio.to_thread(_sha256_file, path)
            body: AsyncIterable[bytes] = _read_file(path, size)
        else:
            body = path_or_stream
        if expected is not None:
            if not re.fullmatch(r"[0-9a-f]{64}", expected):
                raise ValueError("sha256 must be 64 lowercase hex digits")
            headers["X-Content-SHA256"] = expected
        if size is not None:
            headers["Content-Length"] = str(size)
        aborted: list[Exception] = []
        data = _metered(body, size, expected, progress, aborted)
        try:
            result = await self._json("POST", f"{self.base_url}/items", data=data,
                                      headers=headers)
        except WcsError:
            if aborted:  # our own check stopped the body: that is the news, not the socket
                raise aborted[0] from None
            raise
        return dict(result["item"])

    async def end_conference(self) -> None:
        """End the conference for everyone (organizer only; docs/protocol.md §8.6)."""
        await self._json("DELETE", self.base_url)

    async def update_conference(self, **settings: bool) -> dict[str, Any]:
        """Change the conference's settings (`downloads`, `locked`; organizer only,
        docs/protocol.md §8.3, §9.2); returns every setting as it now is."""
        return dict(await self._json("PATCH", self.base_url, json=settings))

    async def participants(self) -> dict[str, Any]:
        """The roster: `{"conference", "seq", "locked", "participants": [...]}` (§9.2)."""
        return dict(await self._json("GET", f"{self.base_url}/participants"))

    async def set_role(self, participant_id: str, role: str) -> dict[str, Any]:
        """Give a participant another role (organizer only, §9.2); returns its entry."""
        return dict(await self._json(
            "PATCH", f"{self.base_url}/participants/{_check_id(participant_id)}",
            json={"role": role}))

    async def eject(self, participant_id: str) -> None:
        """Eject a participant (organizer only, §9.2)."""
        await self._json("DELETE",
                         f"{self.base_url}/participants/{_check_id(participant_id)}")

    async def list_items(self) -> list[dict[str, Any]]:
        body = await self._json("GET", f"{self.base_url}/items")
        return list(body["items"])

    async def item_key(self, item_id: str) -> tuple[bytes, bytes]:
        """The item's Cobblestone key (DEK) and context, base64url-decoded."""
        body = await self._json("GET", f"{self.base_url}/items/{_check_id(item_id)}/key")
        return b64url_decode(body["key"]), b64url_decode(body["context"])

    async def delete(self, item_id: str) -> None:
        await self._json("DELETE", f"{self.base_url}/items/{_check_id(item_id)}")

    async def set_presentation(self, item_id: str | None, page: int | None = None
                               ) -> dict[str, Any]:
        """Show `item_id` at `page` (None: stop presenting); the new state
        (docs/protocol.md §9.1)."""
        body = {"item": None} if item_id is None else {"item": _check_id(item_id),
                                                       "page": page}
        state = await self._json("PUT", f"{self.base_url}/presentation", json=body)
        return dict(state)


def _sha256_file(path: Path) -> str:
    """The file's hex SHA-256, run whole in one worker thread (`asyncio.to_thread`, not
    aiofiles: that would hop to a thread per read and hash each MiB in the event loop)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


async def _read_file(path: Path, size: int) -> AsyncIterator[bytes]:
    """`size` bytes of the file in 1 MiB reads off the loop; a file that shrank is an error."""
    async with aiofiles.open(path, "rb") as f:
        left = size
        while left > 0:
            chunk = await f.read(min(READ_SIZE, left))
            if not chunk:
                raise OSError(f"{path} shrank during the upload")
            left -= len(chunk)
            yield chunk


async def _metered(body: AsyncIterable[bytes], size: int | None, expected_sha256: str | None,
                   progress: Progress | None, aborted: list[Exception]
                   ) -> AsyncIterator[bytes]:
    """Count, check and report the body as aiohttp pulls it.

    The digest and size checks run before the last chunk is handed over, so a mismatch
    aborts the request and the WCS discards the partial upload. aiohttp reports a failing
    body as a connection error, so the real one is also left in `aborted`.
    """
    try:
        async for chunk in _checked(body, size, expected_sha256, progress):
            yield chunk
    except Exception as exc:
        aborted.append(exc)
        raise


async def _checked(body: AsyncIterable[bytes], size: int | None, expected_sha256: str | None,
                   progress: Progress | None) -> AsyncIterator[bytes]:
    digest = hashlib.sha256() if expected_sha256 is not None else None
    sent = 0
    if progress is not None:
        progress(0, size)
    pending: bytes | None = None
    async for chunk in body:
        if not chunk:
            continue
        if pending is not None:
            yield pending
            sent += len(pending)
            if progress is not None:
                progress(sent, size)
        if size is not None and sent + len(chunk) > size:
            raise ValueError(f"stream is longer than its declared size {size}")
        if digest is not None:
            digest.update(chunk)
        pending = bytes(chunk)
    total = sent + (len(pending) if pending is not None else 0)
    if size is not None and total != size:
        raise ValueError(f"stream ended after {total} of {size} bytes")
    if digest is not None and digest.hexdigest() != expected_sha256:
        raise ValueError("content changed during the upload: sha256 does not match")
    if pending is not None:
        yield pending
        sent += len(pending)
        if progress is not None:
            progress(sent, size)


# -- data channel -----------------------------------------------------------------------------

def final_close_reason(code: int | None, reason: str) -> str | None:
    """The channel's end reason for a close the WCS means as final, else None (reconnect)."""
    if code == 1008 and reason == "revoked":
        return "revoked"
    if code == 1000 and reason == "conference ended":
        return "conference.ended"
    return None


class Channel:
    """The data channel: yields events until the participant is revoked or the meeting ends.

    `end_reason` is None while running, then "revoked", "conference.ended", "unauthorized"
    (a reconnect was refused: the cookie is no longer valid) or "closed" (`close()`).
    A reconnect resumes after the last `seq` seen (`?after=`, docs/protocol.md §4.3): the
    stream continues with a `{"type": "channel.reconnected", "resumed": true}` event and
    then every event missed meanwhile, as sent. When the WCS can no longer replay them it
    sends a full welcome instead, and the stream continues with `channel.reconnected`
    (`"resumed": false`) and synthetic `item.shared`/`item.removed` events (marked
    `"synthetic": true`) for what changed meanwhile. No event is passed on twice (by seq,
    and items by id). `pong` replies to our keep-alives are not passed on.
    """

    def __init__(self, session: WcsSession, *, ping_interval: float = PING_INTERVAL,
                 backoff: Backoff | None = None, stable_after: float = 10.0) -> None:
        self.session = session
        self.ping_interval = ping_interval
        self.backoff = backoff or Backoff()
        self.stable_after = stable_after
        """A connection that lived this long resets the backoff; flapping ones do not."""
        self.end_reason: str | None = None
        self.reconnects = 0
        self.welcome: dict[str, Any] = {}
        self.seq: int | None = None
        """The seq of the newest event seen (None before the welcome): where to resume."""
        self._seen: set[str] = set()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._opened_at = 0.0
        self._final_hint: str | None = None
        self._closing = asyncio.Event()
        self._iterating = False

    @classmethod
    async def connect(cls, session: WcsSession, *, ping_interval: float = PING_INTERVAL,
                      backoff: Backoff | None = None, stable_after: float = 10.0) -> Channel:
        """Open the channel and read its welcome; a refused first connect raises WcsError."""
        channel = cls(session, ping_interval=ping_interval, backoff=backoff,
                      stable_after=stable_after)
        channel.welcome = await channel._open()
        channel._seen = {_item_id(entry) for entry in channel.welcome.get("items", [])}
        channel.seq = event_seq(channel.welcome) or 0
        return channel

    async def _open(self) -> dict[str, Any]:
        """One connect attempt: handshake, then the welcome (or `resumed`) frame."""
        url = self.session.channel_url + "?batch=1"  # bursts come as arrays (§4.4)
        if self.seq is not None:
            url += f"&after={self.seq}"
        try:
            ws = await asyncio.wait_for(self.session.http.ws_connect(
                url, headers=self.session.auth_headers,
                ssl=self.session.ssl, heartbeat=None, autoping=True,
                max_msg_size=MAX_CHANNEL_MESSAGE), CONNECT_TIMEOUT)
        except aiohttp.WSServerHandshakeError as exc:
            cls = WcsAuthError if exc.status == 401 else WcsError
            code = HANDSHAKE_CODES.get(exc.status, "handshake")
            raise cls(exc.status, code, f"channel refused: {exc.message}") from exc
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise WcsError(0, "network", f"channel connect failed: {exc!r}") from exc
        try:
            msg = await ws.receive(timeout=CONNECT_TIMEOUT)
            hello = json.loads(msg.data) if msg.type == WSMsgType.TEXT else None
        except (TimeoutError, ValueError) as exc:
            await ws.close()
            raise WcsError(0, "network", f"channel opened without a welcome: {exc!r}") from exc
        except BaseException:
            await ws.close()
            raise
        if not isinstance(hello, dict) or not _is_hello(hello, resuming=self.seq is not None):
            await ws.close()
            raise WcsError(0, "network", f"channel opened without a welcome ({msg.type!r})")
        self._ws = ws
        self._opened_at = time.monotonic()
        self._pinger = asyncio.create_task(self._ping(ws))
        return hello

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Application keep-alives: NATs and load balancers drop silent sockets."""
        with contextlib.suppress(ConnectionError, RuntimeError):
            while not ws.closed:
                await asyncio.sleep(self.ping_interval)
                await ws.send_str(PING_FRAME)

    async def _drop(self) -> None:
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
            self._pinger = None
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None

    async def _reconnect(self) -> dict[str, Any] | None:
        """Retry with backoff until a welcome arrives; None when the channel is over."""
        if time.monotonic() - self._opened_at >= self.stable_after:
            self.backoff.reset()
        while not self._closing.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.backoff.next_delay())
                break
            try:
                welcome = await self._open()
            except WcsError as exc:
                if exc.status in (401, 403):
                    self.end_reason = "unauthorized"
                    return None
                if exc.status == 400:
                    self.seq = None  # a seq this conference never had: start afresh
                continue
            if not self._closing.is_set():
                return welcome
            await self._drop()  # close() ran while we were connecting
        self.end_reason = "closed"
        return None

    def _diff(self, welcome: dict[str, Any]) -> list[dict[str, Any]]:
        """Synthetic events turning what the consumer saw into what the new welcome lists;
        after a `resumed` hello only the reconnect marker (the missed events follow)."""
        if welcome.get("type") == Resumed.TYPE:
            return [{"type": "channel.reconnected", "reconnects": self.reconnects,
                     "resumed": True}]
        self.seq = event_seq(welcome) or 0
        entries = {_item_id(entry): entry for entry in welcome.get("items", [])}
        out: list[dict[str, Any]] = [{"type": "channel.reconnected",
                                      "reconnects": self.reconnects, "resumed": False}]
        for item_id in sorted(self._seen - entries.keys()):
            out.append({"type": "item.removed", "item": {"id": item_id}, "synthetic": True})
        for item_id, entry in entries.items():
            if item_id not in self._seen:
                out.append({"type": "item.shared", **entry, "synthetic": True})
        self._seen = set(entries)
        shown = welcome.get("presentation")  # docs/protocol.md §9.1
        if isinstance(shown, dict):
            out.append({"type": "presentation.changed", **shown, "synthetic": True})
        else:
            out.append({"type": "presentation.changed", "item": None, "page": None,
                        "presenter": "", "seq": self.seq, "synthetic": True})
        return out

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """The welcome, then every event, across reconnects, until the channel ends."""
        if self._iterating:
            raise RuntimeError("Channel.events() may be iterated only once")
        self._iterating = True
        try:
            yield self.welcome
            while self.end_reason is None:
                ws = self._ws
                if ws is None:
                    welcome = await self._reconnect()
                    if welcome is None:
                        return
                    self.reconnects += 1
                    for event in self._diff(welcome):
                        yield event
                    continue
                try:
                    msg = await ws.receive(timeout=self.ping_interval * 2.5)
                except TimeoutError:
                    msg = None  # not even a pong: the path is dead
                if msg is not None and msg.type == WSMsgType.TEXT:
                    for accepted in self._accept_frame(msg.data):
                        yield accepted
                    continue
                if msg is not None and msg.type in (WSMsgType.BINARY, WSMsgType.PING,
                                                    WSMsgType.PONG):
                    continue
                reason = msg.extra if msg is not None and msg.type == WSMsgType.CLOSE else ""
                final = final_close_reason(ws.close_code, str(reason or "")) or self._final_hint
                await self._drop()
                if self._closing.is_set():
                    self.end_reason = "closed"
                elif final is not None:
                    self.end_reason = final
        finally:
            if self.end_reason is None:
                self.end_reason = "closed"
            await self._drop()

    def _accept_frame(self, text: str) -> list[dict[str, Any]]:
        """The events of one frame to pass on: one event, or a batch (a JSON array of
        events in seq order, docs/protocol.md §4.4), each through `_accept`."""
        try:
            data = json.loads(text)
        except ValueError:
            return []
        events = data if isinstance(data, list) else [data]
        return [e for e in map(self._accept, events) if e is not None]

    def _accept(self, data: object) -> dict[str, Any] | None:
        """Check one event and apply de-duplication; None means nothing to pass on.

        Decisions are made on the typed event (`webconf.events`); the consumer still gets
        the event's JSON object, as sent. What is not a well-formed event is dropped.
        """
        try:
            event = parse_event(data)
        except EventError:
            return None
        if isinstance(event, Pong):
            return None
        assert isinstance(data, dict)  # parse_event accepted it
        seq = event_seq(data)
        if seq is not None:
            if self.seq is not None and seq <= self.seq:
                return None  # replayed and also pushed: passed on once
            self.seq = seq
        if isinstance(event, ItemShared):
            if event.entry.item_id in self._seen:
                return None
            self._seen.add(event.entry.item_id)
        elif isinstance(event, ItemRemoved):
            self._seen.discard(event.item_id)
        elif isinstance(event, (Revoked, ConferenceEnded)):
            # The close that follows is final even if its frame gets lost (1006).
            self._final_hint = event.TYPE
        return data

    async def send(self, message: dict[str, Any]) -> None:
        """Send one client message (`presentation.set`, docs/protocol.md §9.1)."""
        ws = self._ws
        if ws is None or ws.closed:
            raise WcsError(0, "network", "the data channel is not connected")
        try:
            await ws.send_str(json.dumps(message, separators=(",", ":")))
        except (ConnectionError, RuntimeError) as exc:
            raise WcsError(0, "network", f"channel send failed: {exc!r}") from exc

    async def close(self) -> None:
        """Close the socket; a running `events()` ends with end_reason "closed"."""
        self._closing.set()
        if self.end_reason is None and not self._iterating:
            self.end_reason = "closed"
        await self._drop()

    async def __aenter__(self) -> Channel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _is_hello(data: dict[str, Any], *, resuming: bool) -> bool:
    """True for a well-formed `welcome`, or when `resuming`, `resumed` (docs/protocol.md §4)."""
    try:
        event = parse_event(data)
    except EventError:
        return False
    return isinstance(event, Welcome) or (resuming and isinstance(event, Resumed))


def _item_id(entry: dict[str, Any]) -> str:
    item = entry.get("item")
    return str(item.get("id")) if isinstance(item, dict) else ""
