"""The decrypting download and the conference's settings (docs/protocol.md §8.3):
`GET /v1/conferences/{conf}/items/{item}/document` and `PATCH /v1/conferences/{conf}`.

`/document` is the SharePoint path, for browsers' plain links and simple clients: the
item's plaintext, decrypted inside the WCS (conferencing/document.py) and streamed with a
fixed `Content-Length`. Everything that can be checked before the status line is (the
cookie, the switches, the validators, the range, the blob's size and key commitment), and
a failure there is a plain JSON error. A chunk failing its tag later cuts the response:
the verified bytes before it are flushed, then the connection is closed without the rest,
so the client sees fewer bytes than `Content-Length` promised (an error in every HTTP
client) and never an unverified byte.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

from aiohttp import web

from ..conference_settings import parse_conference_changes, require_organizer, update_conference
from ..document import Document, DocumentCorrupt, open_document, plaintext
from ..downloads import check_download, record_download, report_tampered
from ..service import Principal, ServiceError
from ..share import ShareError
from ..store import ItemRow
from .context import METRICS, SERVICE, authenticate, authenticate_download, json_body
from .errors import json_error
from .ranges import etag_matches, requested_span

"""A conference's settings fit in far less."""
FALLBACK_NAME_CHARS = 150
_ATTR_CHARS = "!#$&+-.^_`|~"
"""RFC 8187 attr-char besides ALPHA / DIGIT: what `filename*` leaves unencoded."""


def content_disposition(name: str) -> str:
    """`attachment` with the item's name as RFC 8187 `filename*` (UTF-8, percent-encoded)
    and an ASCII `filename` for old clients (RFC 6266 §4.3). Path separators become `_`
    in both, so no client is asked to save outside its folder; quotes, controls and
    non-ASCII never reach the header unencoded."""
    flat = name.replace("/", "_").replace("\\", "_")
    ascii_name = unicodedata.normalize("NFKD", flat).encode("ascii", "ignore").decode()
    fallback = "".join(c if (c.isalnum() or c in " ._-()+,") else "_" for c in ascii_name)
    fallback = fallback.strip(" .")[:FALLBACK_NAME_CHARS] or "download"
    encoded = quote(flat, safe=_ATTR_CHARS, encoding="utf-8", errors="strict")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


async def item_document(request: web.Request) -> web.StreamResponse:
    who, row, switches = await authenticate_download(request)
    check_download(who, switches, "document")
    service = request.app[SERVICE]
    metrics = request.app[METRICS]
    key = await service.item_key(row)
    name, content_type = service.item_name_and_type(row, key)
    etag = service.etags.document_etag(row.blob_id)
    size = row.plaintext_size
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Type": content_type,
        "Content-Disposition": content_disposition(name),
        "Cache-Control": "private, no-store",
        "X-Content-Type-Options": "nosniff",
    }
    if etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    try:
        span = requested_span(request.headers.get("Range"), request.headers.get("If-Range"),
                              etag, size)
    except ServiceError as exc:
        return json_error(416, exc.message, headers={
            "Content-Range": f"bytes */{size}", "ETag": etag, "Accept-Ranges": "bytes"})
    start, end = span if span is not None else (0, size)
    resp = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
    resp.content_length = end - start
    if span is not None:
        resp.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    if request.method == "HEAD":
        await resp.prepare(request)
        await resp.write_eof()
        return resp
    try:
        doc = await open_document(service.share, row.blob_id, key.dek, key.context,
                                  row.ciphertext_size)
    except ShareError:
        raise ServiceError("not_found", "item content missing from the share") from None
    except DocumentCorrupt as exc:
        report_tampered(metrics, who, row, exc.kind, exc.chunk, 0)
        raise ServiceError("internal", "the item's content failed verification") from None
    try:
        return await _send_plaintext(request, resp, who, row, doc, start, end)
    finally:
        doc.close()


async def _send_plaintext(request: web.Request, resp: web.StreamResponse, who: Principal,
                          row: ItemRow, doc: Document, start: int,
                          end: int) -> web.StreamResponse:
    """Send `[start, end)` of the verified plaintext; a chunk failing its tag cuts the
    response after the verified bytes before it."""
    metrics = request.app[METRICS]
    service = request.app[SERVICE]
    await resp.prepare(request)
    sent = 0
    try:
        async for view in plaintext(service.share, doc, start, end):
            await resp.write(view)
            sent += len(view)
            del view  # the buffer is reused once no one holds a view of it
    except DocumentCorrupt as exc:
        report_tampered(metrics, who, row, exc.kind, exc.chunk, sent)
        request.protocol.force_close()  # flushes what was written, then closes: cut short
        return resp
    finally:
        metrics.bytes_out.inc(sent)
        record_download(service.audit, who, row, sent, "document")
    await resp.write_eof()
    return resp


async def update_conference_settings(request: web.Request) -> web.Response:
    who = await authenticate(request)
    require_organizer(who)  # before the body: others learn nothing from their input
    body = await json_body(request)
    settings = await update_conference(request.app[SERVICE], who,
                                       parse_conference_changes(body))
    return web.json_response(settings, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    base = "/v1/conferences/{conf}"
    app.router.add_patch(base, update_conference_settings)
    app.router.add_get(f"{base}/items/{{item}}/document", item_document)
