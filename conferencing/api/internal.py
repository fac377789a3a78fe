"""Internal API (docs/protocol.md §7), served only on the mTLS listener the focus reaches.

The TLS layer has already required a client certificate from the deployment CA; these
handlers trust the caller to have authenticated the SIP user and applied join policy.
Admit names the conference by the id in its SIP URI (scoped to the organizer, §2.1) and
answers with the WCS's public id; revoke and end take that public id.

Focus leases (DESIGN §8): each focus process renews its lease with `PUT
/internal/v1/focus-nodes/{name}` and names it in every admission (`focus_node`), so that a
WCS node can revoke the participants of a focus whose lease went stale
(`conferencing.leases`); a clean stop releases it with `DELETE`.

The validation and the service calls are `api/internal_ops.py`'s, shared with the focus's
persistent link (`api/link.py`, docs/protocol.md §7.3), which carries the same operations.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..service import ServiceError
from . import internal_ops, strict_json
from .context import SERVICE
from .link import add_routes as add_link_routes

MAX_BODY = 16 * 1024


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ServiceError("too_large", "request body too large")
    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise ServiceError("too_large", "request body too large")
    try:
        data = strict_json.loads(raw)  # bounded depth, strict UTF-8: hostile input is a 400
    except strict_json.JsonError as exc:
        raise ServiceError("bad_request", f"body is not acceptable JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ServiceError("bad_request", "body must be a JSON object")
    return data


async def admit_participant(request: web.Request) -> web.Response:
    uri_id = internal_ops.conference_id(request.match_info["uri_id"])  # 400 before the body
    req = internal_ops.admit_request(uri_id, await _json_body(request))
    answer = await internal_ops.admit(request.app[SERVICE], req)
    return web.json_response(answer, status=201)


async def revoke_participant(request: web.Request) -> web.Response:
    await internal_ops.revoke(request.app[SERVICE], request.match_info["conf"],
                              request.match_info["pid"])
    return web.Response(status=204)


async def end_conference(request: web.Request) -> web.Response:
    await internal_ops.end(request.app[SERVICE], request.match_info["conf"])
    return web.Response(status=204)


async def heartbeat_focus_node(request: web.Request) -> web.Response:
    """Create or renew a focus lease (no body)."""
    await internal_ops.heartbeat(request.app[SERVICE], request.match_info["name"])
    return web.Response(status=204)


async def release_focus_node(request: web.Request) -> web.Response:
    """Drop a lease at its focus's clean stop; idempotent (an unknown one is gone already)."""
    await internal_ops.release(request.app[SERVICE], request.match_info["name"])
    return web.Response(status=204)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def add_routes(app: web.Application) -> None:
    base = "/internal/v1/conferences/{conf}"
    app.router.add_post("/internal/v1/conferences/{uri_id}/participants", admit_participant)
    app.router.add_delete(f"{base}/participants/{{pid}}", revoke_participant)
    app.router.add_delete(base, end_conference)
    app.router.add_put("/internal/v1/focus-nodes/{name}", heartbeat_focus_node)
    app.router.add_delete("/internal/v1/focus-nodes/{name}", release_focus_node)
    app.router.add_get("/internal/v1/healthz", healthz)
    add_link_routes(app)  # GET /internal/v1/link: the focus's persistent link (§7.3)
