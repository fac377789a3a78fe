"""What every HTTP handler of the WCS shares: the app keys and cookie authentication.

The public API, the data channel and the internal API each import this module and never one
another, so the handler modules form no cycle (docs/protocol.md §4).
"""

from __future__ import annotations

from aiohttp import web

from ..metrics import Metrics
from ..service import ConferenceService, Principal, ServiceError, valid_id

SERVICE = web.AppKey("service", ConferenceService)
METRICS = web.AppKey("metrics", Metrics)
CHANNELS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("channels", set)
"""The open data-channel sockets of a public app (closed on shutdown)."""
AUTH_COOKIE = "webconf_auth"
"""The browser's cookie name; other clients send `Authorization: Bearer`."""


def bearer_token(request: web.Request) -> str | None:
    """The participant cookie: the bearer token, else the browser cookie."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return request.cookies.get(AUTH_COOKIE)


async def authenticate(request: web.Request) -> Principal:
    """The participant the request's cookie names, in the conference of its path."""
    conference_id = request.match_info["conf"]
    if not valid_id(conference_id):
        raise ServiceError("not_found", "unknown conference")
    return await request.app[SERVICE].authenticate(bearer_token(request), conference_id)
