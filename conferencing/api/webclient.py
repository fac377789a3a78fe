"""The web client: the WCS serves the browser page's built files (docs/protocol.md §10.2).

Static files only, read from `wcs.web_dir` (default: `web/dist` of the source tree, which
`make web` builds); the WCS imports no client code. Three routes:

- `GET /`: `index.html`;
- `GET /assets/{name}`: a built file (one flat directory; names of `[A-Za-z0-9._-]`, a
  known extension, no leading dot), served with its own content type, ETag and
  `Cache-Control: no-cache`;
- `GET /config.json`: what the page needs of the deployment: the WCS's URL and the focus's
  SIP-over-WebSocket URL (docs/protocol.md §10.1).

And one for the page's data channel: `POST /v1/conferences/{conf}/browser-cookie`, with the
cookie as `Authorization: Bearer` (only), answers `204` with `Set-Cookie: webconf_auth=...;
Path=/v1/conferences/{conf}/; Secure; HttpOnly; SameSite=Strict; Max-Age=<until exp>`,
because a browser's WebSocket cannot send an `Authorization` header: the channel then takes
the HTTP cookie, with the `Origin` check (docs/protocol.md §3).

Every answer carries the security headers: a Content-Security-Policy without inline script
whose `connect-src` is the WCS's origin (HTTPS and its WebSocket channel) and the focus's
WSS origin, `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer`,
`X-Frame-Options: DENY`. Unbuilt assets: `503` `web_client_missing`, never a traceback.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from webconf.deploy.config import Config

from ..service import ServiceError
from .context import AUTH_COOKIE, authenticate

DEFAULT_WEB_DIR = Path(__file__).resolve().parents[2] / "web" / "dist"
"""`web/dist` beside the packages: where `make web` puts the build."""
MAX_ASSET_BYTES = 32 * 1024 * 1024
"""The largest built file served (pdf.js's worker, the largest, is about 1 MiB): each answer
is read whole into memory and sent as one body, which over TLS is much faster than
`web.FileResponse`'s sendfile fallback, so this bounds what one request can hold."""
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".map": "application/json",
    ".svg": "image/svg+xml", ".png": "image/png", ".woff2": "font/woff2",
    ".json": "application/json", ".txt": "text/plain; charset=utf-8",
}


def web_dir(cfg: Config) -> Path:
    """The directory of the built web client."""
    configured = cfg.wcs.web_dir.strip()
    if not configured:
        return DEFAULT_WEB_DIR
    path = Path(configured).expanduser()
    return path if path.is_absolute() else cfg.base_dir / path


def wss_url(cfg: Config) -> str | None:
    """The focus's SIP-over-WebSocket URL the page connects to (None: the listener is off)."""
    if not cfg.focus.wss_port:
        return None
    host = cfg.public_host
    host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"wss://{host}:{cfg.focus.wss_port}"


def content_security_policy(cfg: Config) -> str:
    """No inline script or style; connections only to the WCS and the focus's WSS."""
    wcs = urlsplit(cfg.public_url)
    connect = ["'self'", f"wss://{wcs.netloc}"]
    focus = wss_url(cfg)
    if focus is not None:
        connect.append(focus)
    return "; ".join([
        "default-src 'none'", "script-src 'self'", "style-src 'self'",
        "img-src 'self' blob: data:", "font-src 'self'", "worker-src 'self' blob:",
        f"connect-src {' '.join(connect)}", "base-uri 'none'", "form-action 'none'",
        "frame-ancestors 'none'"])


def security_headers(cfg: Config) -> dict[str, str]:
    return {"Content-Security-Policy": content_security_policy(cfg),
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cross-Origin-Opener-Policy": "same-origin"}


def add_routes(app: web.Application, cfg: Config) -> None:
    """`GET /`, `GET /assets/{name}` and `GET /config.json` (module docstring)."""
    root = web_dir(cfg)
    # Per answer, not once: an ephemeral port is known only once the listener is bound.

    def missing() -> ServiceError:
        return ServiceError("web_client_missing",
                            "the web client is not built on this server: run `make web`")

    async def file_response(path: Path, content_type: str) -> web.Response:
        body = await asyncio.to_thread(_read_asset, path)
        if body is None:
            raise ServiceError("web_client_missing",
                               f"a built file is over {MAX_ASSET_BYTES} bytes: rebuild it")
        return web.Response(body=body, headers={**security_headers(cfg),
                                                "Content-Type": content_type,
                                                "Cache-Control": "no-cache"})

    async def index(request: web.Request) -> web.StreamResponse:
        path = root / "index.html"
        if not path.is_file():
            raise missing()
        return await file_response(path, "text/html; charset=utf-8")

    async def asset(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        content_type = CONTENT_TYPES.get(Path(name).suffix.lower())
        if not _NAME.fullmatch(name) or content_type is None:
            raise ServiceError("not_found", "no such file")
        if not root.is_dir():
            raise missing()
        path = root / "assets" / name
        if not path.is_file():
            raise ServiceError("not_found", "no such file")
        return await file_response(path, content_type)

    async def config(request: web.Request) -> web.Response:
        page_config = {"webconf_url": cfg.public_url, "wss_url": wss_url(cfg)}
        return web.json_response(page_config, headers={**security_headers(cfg),
                                                       "Cache-Control": "no-cache"})

    async def browser_cookie(request: web.Request) -> web.Response:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ServiceError("unauthorized", "send the cookie as Authorization: Bearer")
        who = await authenticate(request)
        resp = web.Response(status=204, headers={"Cache-Control": "no-store"})
        resp.set_cookie(AUTH_COOKIE, token.strip(), path=f"/v1/conferences/{who.conference_id}/",
                        secure=True, httponly=True, samesite="Strict",
                        max_age=max(0, who.claims.expires_at - int(time.time())))
        return resp

    app.router.add_post("/v1/conferences/{conf}/browser-cookie", browser_cookie)
    app.router.add_get("/", index)
    app.router.add_get("/assets/{name}", asset)
    app.router.add_get("/config.json", config)


def _read_asset(path: Path) -> bytes | None:
    """The file's bytes, or None if it is over `MAX_ASSET_BYTES`."""
    with path.open("rb") as file:
        body = file.read(MAX_ASSET_BYTES + 1)
    return None if len(body) > MAX_ASSET_BYTES else body


__all__ = ["CONTENT_TYPES", "DEFAULT_WEB_DIR", "MAX_ASSET_BYTES", "add_routes",
           "content_security_policy", "security_headers", "web_dir", "wss_url"]
