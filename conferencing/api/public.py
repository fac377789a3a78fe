"""Public HTTPS API (docs/protocol.md §4): items, keys, ciphertext downloads, health, metrics.

Handlers parse HTTP, call the service, and shape the response. Downloads stream the blob
in ~1 MiB chunks through a `StreamResponse` (FileResponse measured 8x slower over TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from urllib.parse import unquote

from aiohttp import web

from webconf.deploy.config import WcsSection

from ..downloads import check_download, record_download
from ..metrics import PROMETHEUS_CONTENT_TYPE
from ..service import BlobRef, Principal, ServiceError, b64url
from ..store import ItemRow
from . import document as decrypting
from . import participants, presentation
from .channel import channel
from .context import (
    AUTH_COOKIE,
    METRICS,
    SERVICE,
    authenticate,
    authenticate_download,
    authenticate_item,
    bearer_token,
)
from .errors import json_error
from .ranges import etag_matches, parse_range, requested_span

__all__ = ["AUTH_COOKIE", "METRICS", "SERVICE", "UploadPace", "add_routes", "authenticate",
           "bearer_token", "load_openapi", "parse_range"]

READ_SIZE = 64 * 1024
BODY_IDLE_SECONDS = 60.0
"""An upload whose body stalls this long (no bytes at all) is refused with 408; its pace
(`UploadPace`) may refuse it sooner."""


@dataclass(frozen=True)
class UploadPace:
    """How long an upload's body may take (docs/protocol.md §4.1): a body that trickles in
    would otherwise hold its connection, its temp file and its cookie's rights for as long
    as it likes, and outlive a revocation it learns of only at the end.

    After `grace_seconds` the body must average `min_bytes_per_second` (each byte received
    buys 1/rate more seconds, as Apache's mod_reqtimeout MinRate does), and all of it must
    arrive within `deadline_seconds` whatever the rate."""

    started: float
    """The loop time the handler began reading the body."""
    deadline_seconds: float
    min_bytes_per_second: int
    grace_seconds: float

    @classmethod
    def of(cls, wcs: WcsSection, started: float) -> UploadPace:
        return cls(started, wcs.upload_deadline_seconds, wcs.upload_min_bytes_per_second,
                   wcs.upload_rate_grace_seconds)

    def deadline(self, received: int) -> float:
        """The loop time by which the body must go on past `received` bytes."""
        allowed = self.deadline_seconds
        if self.min_bytes_per_second > 0:
            allowed = min(allowed, self.grace_seconds + received / self.min_bytes_per_second)
        return self.started + allowed


async def upload_item(request: web.Request) -> web.Response:
    who = await authenticate(request)
    service = request.app[SERVICE]
    limit = service.cfg.wcs.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise ServiceError("too_large", f"upload exceeds {limit} bytes")
    raw_name = request.headers.get("X-Item-Name")
    if raw_name is None:
        raise ServiceError("bad_request", "X-Item-Name header is required")
    try:
        name = unquote(raw_name, errors="strict")
    except UnicodeDecodeError:
        raise ServiceError("bad_request", "X-Item-Name must be percent-encoded UTF-8") from None
    content_type = request.headers.get("Content-Type", "application/octet-stream")
    sha256 = request.headers.get("X-Content-SHA256")
    metrics = request.app[METRICS]
    pace = UploadPace.of(service.cfg.wcs, asyncio.get_running_loop().time())

    async def body() -> AsyncIterator[bytes]:
        received = 0
        while True:
            allowed = pace.deadline(received) - asyncio.get_running_loop().time()
            try:
                if allowed <= 0:
                    raise TimeoutError
                async with asyncio.timeout(min(BODY_IDLE_SECONDS, allowed)):
                    chunk = await request.content.read(READ_SIZE)
            except TimeoutError:
                message = "upload body stalled" if allowed > BODY_IDLE_SECONDS else (
                    "upload too slow or past its deadline")
                raise ServiceError("request_timeout", message) from None
            if not chunk:
                return
            received += len(chunk)
            metrics.bytes_in.inc(len(chunk))
            yield chunk

    item = await service.share_item(who, name=name, content_type=content_type, body=body(),
                                     max_bytes=limit, sha256=sha256)
    metrics.items_shared.inc()
    return web.json_response({"item": item}, status=201, headers={"Location": item["url"]})


async def list_items(request: web.Request) -> web.Response:
    who = await authenticate(request)
    items = await request.app[SERVICE].list_items(who)
    return web.json_response({"conference": who.conference_id, "items": items})


async def item_key(request: web.Request) -> web.Response:
    _, row = await authenticate_item(request)
    key = await request.app[SERVICE].item_key(row)
    return web.json_response(
        {"key": b64url(key.dek), "context": b64url(key.context)},
        headers={"Cache-Control": "no-store"})


async def delete_item(request: web.Request) -> web.Response:
    who = await authenticate(request)
    await request.app[SERVICE].delete_item(who, request.match_info["item"])
    return web.Response(status=204)


async def end_conference(request: web.Request) -> web.Response:
    """`DELETE /v1/conferences/{conf}`: the organizer ends it for everyone (§8.6)."""
    who = await authenticate(request)
    await request.app[SERVICE].end_by_organizer(who)
    return web.Response(status=204)


async def item_content(request: web.Request) -> web.StreamResponse:
    who, row, switches = await authenticate_download(request)
    check_download(who, switches, "content")
    service = request.app[SERVICE]
    blob = await service.item_blob(row)
    try:
        return await _send_content(request, who, row, blob)
    finally:
        os.close(blob.fd)  # read-only: no flush to wait for


async def _send_content(request: web.Request, who: Principal, row: ItemRow,
                        blob: BlobRef) -> web.StreamResponse:
    service = request.app[SERVICE]
    headers = {
        "ETag": blob.etag,
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
        "Cache-Control": "private, no-cache",
        "X-Content-Type-Options": "nosniff",
    }
    if etag_matches(request.headers.get("If-None-Match"), blob.etag):
        return web.Response(status=304, headers=headers)
    try:
        span = requested_span(request.headers.get("Range"), request.headers.get("If-Range"),
                              blob.etag, blob.size)
    except ServiceError as exc:
        return json_error(416, exc.message, headers={
            "Content-Range": f"bytes */{blob.size}", "ETag": blob.etag,
            "Accept-Ranges": "bytes"})
    start, end = span if span is not None else (0, blob.size)
    resp = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
    resp.content_length = end - start
    if span is not None:
        resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{blob.size}"
    await resp.prepare(request)
    if request.method == "HEAD" or end == start:
        await resp.write_eof()
        return resp
    chunk_size = service.cfg.wcs.download_chunk_bytes
    sent = 0
    try:
        async with contextlib.aclosing(service.share.stream(
                blob.blob_id, start, end - start, chunk_size, fd=blob.fd)) as chunks:
            async for chunk in chunks:
                await resp.write(chunk)
                sent += len(chunk)
                del chunk  # let the share reuse the buffer (it never refills an exported one)
    finally:
        request.app[METRICS].bytes_out.inc(sent)
        record_download(service.audit, who, row, sent, "content")
    await resp.write_eof()
    return resp


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def load_openapi() -> bytes:
    """The OpenAPI 3.1 document of this API, as shipped in the package (api/openapi.json)."""
    return resources.files("conferencing.api").joinpath("openapi.json").read_bytes()


async def metrics_endpoint(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    resp = web.Response(body=metrics.render())
    resp.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
    return resp


def add_routes(app: web.Application) -> None:
    """The public API's routes, the data channel's included."""
    base = "/v1/conferences/{conf}"
    app.router.add_delete(base, end_conference)
    app.router.add_post(f"{base}/items", upload_item)
    app.router.add_get(f"{base}/items", list_items)
    app.router.add_get(f"{base}/items/{{item}}/key", item_key)
    app.router.add_get(f"{base}/items/{{item}}/content", item_content)
    app.router.add_delete(f"{base}/items/{{item}}", delete_item)
    app.router.add_get(f"{base}/channel", channel)
    decrypting.add_routes(app)
    participants.add_routes(app)
    presentation.add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_endpoint)

    document = load_openapi()  # once, at startup

    async def openapi(request: web.Request) -> web.Response:
        return web.Response(body=document, content_type="application/json")

    app.router.add_get("/openapi.json", openapi)
