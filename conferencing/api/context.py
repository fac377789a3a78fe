"""What every HTTP handler of the WCS shares: the app keys and cookie authentication.

The public API, the data channel and the internal API each import this module and never one
another, so the handler modules form no cycle (docs/protocol.md §4).

Cross-site requests (docs/protocol.md §3): a browser attaches the `webconf_auth` cookie to
any request to us, whichever page starts it, so a request the cookie authenticates could
come from another site's script. When the cookie (not `Authorization`, which no other site
can make a browser send) authenticates a WebSocket upgrade or a state-changing method, an
`Origin` header must name one of our own web origins (`cfg.public_url`'s, plus
`wcs.allowed_origins`); anything else, `null` included, is refused with 403 before the
handler runs. A request with no `Origin` is not from a browser page (browsers always send
it on upgrades and on cross-origin unsafe methods) unless `Sec-Fetch-Site` says otherwise.
Safe methods need no check: without CORS headers another site cannot read the answers.
"""

from __future__ import annotations

from aiohttp import web

from webconf.deploy.config import Config
from webconf.origins import allowed_origins, parse_origin

from ..metrics import Metrics
from ..service import ConferenceService, Principal, ServiceError, valid_id
from ..store import DownloadSwitches, ItemRow
from . import strict_json
from .strict_json import JsonError
from .strict_json import loads as strict_loads

SERVICE = web.AppKey("service", ConferenceService)
METRICS = web.AppKey("metrics", Metrics)
CHANNELS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("channels", set)
"""The open data-channel sockets of a public app (closed on shutdown)."""
AUTH_COOKIE = "webconf_auth"
"""The browser's cookie name; other clients send `Authorization: Bearer`."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
"""Methods that change nothing, so a cross-site request with them can do no harm."""
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})
"""`Sec-Fetch-Site` values of requests no other site started (`none`: the user typed it)."""

MAX_JSON_BODY = 16 * 1024
"""A JSON request body (settings, a role) is a few dozen bytes; this bounds it."""


def bearer_token(request: web.Request) -> str | None:
    """The participant cookie: the bearer token, else the browser cookie."""
    return _credentials(request)[0]


def _credentials(request: web.Request) -> tuple[str | None, bool]:
    """(the cookie, whether it came from the browser's HTTP cookie)."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip(), False
    cookie = request.cookies.get(AUTH_COOKIE)
    return cookie, cookie is not None


def check_same_origin(request: web.Request, cfg: Config) -> None:
    """Refuse (403) a request that a page of another origin started (module docstring)."""
    origin_header = request.headers.get("Origin")
    if origin_header is not None:
        origin = parse_origin(origin_header)
        if origin is None or origin not in allowed_origins(cfg):
            raise ServiceError("forbidden", "cross-origin request refused")
        return
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.strip().lower() not in SAME_SITE_FETCHES:
        raise ServiceError("forbidden", "cross-origin request refused")


def _changes_state(request: web.Request) -> bool:
    """A state-changing method, or a WebSocket upgrade (the channel sends every key)."""
    upgrade = request.headers.get("Upgrade", "").lower()
    return request.method not in SAFE_METHODS or "websocket" in upgrade


async def authenticate(request: web.Request) -> Principal:
    """The participant the request's cookie names, in the conference of its path."""
    conference_id, token = _checked_credentials(request)
    return await request.app[SERVICE].authenticate(token, conference_id)


async def authenticate_item(request: web.Request) -> tuple[Principal, ItemRow]:
    """`authenticate`, and the item of the path, read with the cookie's state at once."""
    conference_id, token = _checked_credentials(request)
    return await request.app[SERVICE].authenticate_for_item(
        token, conference_id, request.match_info["item"])


async def authenticate_download(
        request: web.Request) -> tuple[Principal, ItemRow, DownloadSwitches]:
    """`authenticate_item`, with the download switches read in the same query."""
    conference_id, token = _checked_credentials(request)
    return await request.app[SERVICE].authenticate_for_download(
        token, conference_id, request.match_info["item"])


def _checked_credentials(request: web.Request) -> tuple[str, str | None]:
    """(the path's conference id, the cookie), after the cross-site check."""
    conference_id = request.match_info["conf"]
    if not valid_id(conference_id):
        raise ServiceError("not_found", "unknown conference")
    token, from_browser_cookie = _credentials(request)
    if from_browser_cookie and _changes_state(request):
        check_same_origin(request, request.app[SERVICE].cfg)
    return conference_id, token


async def json_body(request: web.Request, *, max_bytes: int = MAX_JSON_BODY,
                    max_depth: int = strict_json.MAX_DEPTH) -> object:
    """A small JSON request body, strictly parsed (strict_json): `application/json` or no
    `Content-Type` (else 415), at most `max_bytes` bytes (else 413), JSON no deeper than
    `max_depth` (else 400)."""
    content_type = request.headers.get("Content-Type")
    if content_type is not None and request.content_type != "application/json":
        raise ServiceError("unsupported_media_type", "the body must be application/json")
    if request.content_length is not None and request.content_length > max_bytes:
        raise ServiceError("too_large", "request body too large")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ServiceError("too_large", "request body too large")
    try:
        return strict_loads(raw, max_depth=max_depth)
    except JsonError as exc:
        raise ServiceError("bad_request", f"body is not acceptable JSON: {exc}") from None
