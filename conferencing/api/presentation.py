"""`PUT /v1/conferences/{conf}/presentation` (docs/protocol.md §4.1): the HTTP way to set
what a conference presents; the channel's `presentation.set` is the other (channel.py).
Both go through conferencing/presenting.py."""

from __future__ import annotations

from aiohttp import web

from ..presenting import parse_set, presenting
from ..service import ServiceError
from .context import SERVICE, authenticate
from .strict_json import JsonError
from .strict_json import loads as strict_loads

MAX_BODY = 1024
"""`{"item": <id>, "page": N}` fits in far less."""


async def set_presentation(request: web.Request) -> web.Response:
    who = await authenticate(request)
    content_type = request.headers.get("Content-Type")
    if content_type is not None and request.content_type != "application/json":
        raise ServiceError("unsupported_media_type", "the body must be application/json")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ServiceError("too_large", "request body too large")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ServiceError("too_large", "request body too large")
    try:
        body = strict_loads(raw, max_depth=2)
    except JsonError as exc:
        raise ServiceError("bad_request", f"body is not acceptable JSON: {exc}") from None
    changed = await presenting(request.app[SERVICE]).set(who, parse_set(body))
    state = changed.to_json()
    del state["type"]
    return web.json_response(state, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_put("/v1/conferences/{conf}/presentation", set_presentation)
