"""`PUT /v1/conferences/{conf}/presentation` (docs/protocol.md §4.1): the HTTP way to set
what a conference presents; the channel's `presentation.set` is the other (channel.py).
Both go through conferencing/presenting.py."""

from __future__ import annotations

from aiohttp import web

from ..presenting import parse_set, presenting
from .context import SERVICE, authenticate, json_body

MAX_BODY = 1024
"""`{"item": <id>, "page": N}` fits in far less."""


async def set_presentation(request: web.Request) -> web.Response:
    who = await authenticate(request)
    body = await json_body(request, max_bytes=MAX_BODY, max_depth=2)
    changed = await presenting(request.app[SERVICE]).set(who, parse_set(body))
    state = changed.to_json()
    del state["type"]
    return web.json_response(state, headers={"Cache-Control": "no-store"})


def add_routes(app: web.Application) -> None:
    app.router.add_put("/v1/conferences/{conf}/presentation", set_presentation)
