"""JSON errors and per-request accounting, as aiohttp middlewares.

Every error leaves as `{"error": {"code", "message"}}` with the right status, whatever
raised it: a `ServiceError`, an aiohttp HTTP exception (unknown route, wrong method, body
too large), the database out of reach (503 `unavailable` with Retry-After, no traceback: the
engine logs the outage once, webconf/deploy/db.py), or a bug (500, logged with a traceback,
never with request secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from webconf.deploy.db import RETRY_AFTER_SECONDS, is_unavailable

from ..metrics import Metrics
from ..service import ServiceError

log = logging.getLogger("webconf.wcs.http")

STATUS_BY_CODE = {
    "bad_request": 400,
    "page_out_of_range": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "unknown_tenant": 403,
    "server_decrypt_disabled": 403,
    "downloads_disabled": 403,
    "conference_locked": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "request_timeout": 408,
    "conflict": 409,
    "cannot_change_organizer": 409,
    "cannot_eject_organizer": 409,
    "too_large": 413,
    "conference_quota": 413,
    "unsupported_media_type": 415,
    "range_not_satisfiable": 416,
    "too_many_requests": 429,
    "internal": 500,
    "unavailable": 503,
    "tenant_key_unavailable": 503,
    "web_client_missing": 503,
}
CODE_BY_STATUS = {status: code for code, status in reversed(STATUS_BY_CODE.items())}
"""The generic code of a status (the first listed for it: 403 is `forbidden`)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, *, code: str | None = None,
               headers: dict[str, str] | None = None) -> web.Response:
    body = {"error": {"code": code or CODE_BY_STATUS.get(status, "error"), "message": message}}
    resp = web.json_response(body, status=status, headers=headers)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="webconf", error="invalid_token"'
    return resp


async def _send_and_close(request: web.Request, resp: web.Response) -> web.Response:
    """Send `resp`, then close the connection at once.

    For a request whose body cannot be read on: aiohttp would otherwise keep reading
    ("lingering") for up to 10 s to drain it, and log a traceback if the body is broken.
    """
    resp.force_close()
    with contextlib.suppress(ConnectionError):  # the client may be gone already
        await resp.prepare(request)
        await resp.write_eof()
    request.protocol.force_close()  # flushes what was written, then closes
    return resp


def route_name(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class InFlight:
    """Counts requests being handled, so shutdown can wait for them to finish."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def make_middlewares(metrics: Metrics | None, in_flight: InFlight | None = None
                     ) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        if in_flight is not None:
            in_flight.enter()
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        except ServiceError as exc:
            status = STATUS_BY_CODE.get(exc.code, 500)
            resp = json_error(status, exc.message, code=exc.code)
            if status == 408:  # the rest of the body is not coming: drop the connection
                return await _send_and_close(request, resp)
            return resp
        except web.HTTPException as exc:
            status = exc.status
            if status < 400:
                raise
            headers = {}
            if "Allow" in exc.headers:
                headers["Allow"] = exc.headers["Allow"]
            message = exc.reason if exc.status != 413 else "request body too large"
            return json_error(status, message, headers=headers)
        except (ConnectionResetError, TimeoutError) as exc:
            status = 499
            raise web.HTTPBadRequest() from exc
        except web.RequestPayloadError:
            # A body aiohttp could not decode (e.g. `Content-Encoding: gzip` over bytes that
            # are not gzip): the client's error, and its framing can no longer be trusted.
            status = 400
            return await _send_and_close(request, json_error(400, "malformed request body"))
        except Exception as exc:
            if is_unavailable(exc):  # an outage: the client retries, the engine logged it
                status = 503
                return json_error(503, "the database is unavailable, retry later",
                                  code="unavailable",
                                  headers={"Retry-After": str(RETRY_AFTER_SECONDS)})
            log.exception("unhandled error on %s %s", request.method, route_name(request))
            return json_error(500, "internal server error")
        finally:
            if in_flight is not None:
                in_flight.leave()
            if metrics is not None:
                metrics.requests.labels(request.method, route_name(request), str(status)).inc()
            log.info(json.dumps({
                "event": "http", "method": request.method, "route": route_name(request),
                "status": status, "ms": round((time.perf_counter() - started) * 1000, 2),
                "peer": request.remote}))

    return [errors]
