"""Internal API (docs/protocol.md §7), served only on the mTLS listener the focus reaches.

The TLS layer has already required a client certificate from the deployment CA; these
handlers trust the caller to have authenticated the SIP user and applied join policy.
Admit names the conference by the id in its SIP URI (scoped to the organizer, §2.1) and
answers with the WCS's public id; revoke and end take that public id.

Focus leases (DESIGN §8): each focus process renews its lease with `PUT
/internal/v1/focus-nodes/{name}` and names it in every admission (`focus_node`), so that a
WCS node can revoke the participants of a focus whose lease went stale
(`conferencing.leases`); a clean stop releases it with `DELETE`.
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web

from ..service import ServiceError, valid_id
from . import strict_json
from .context import SERVICE

MAX_BODY = 16 * 1024
ADMIT_ANSWER_FIELDS = ("conference", "participant", "role", "cookie", "expires_at",
                       "webconf_url")
"""The admit answer's keys, in their wire order (docs/protocol.md §7)."""
LEASE_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""A focus lease name, `<node>.<incarnation>` (docs/protocol.md §7); used with fullmatch."""


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


def _lease_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not LEASE_RE.fullmatch(value):  # fullmatch: no "x\n"
        raise ServiceError("bad_request", f"invalid {what}")
    return value


def _conference_id(request: web.Request, name: str = "conf") -> str:
    conference_id = request.match_info[name]
    if not valid_id(conference_id):
        raise ServiceError("bad_request", "invalid conference id")
    return conference_id


async def admit_participant(request: web.Request) -> web.Response:
    uri_id = _conference_id(request, "uri_id")
    body = await _json_body(request)
    fields = {}
    for name in ("tenant", "organizer", "user"):
        value = body.get(name)
        if not isinstance(value, str):
            raise ServiceError("bad_request", f"{name} must be a string")
        fields[name] = value
    role = body.get("role", "attendee")
    if not isinstance(role, str):
        raise ServiceError("bad_request", "role must be a string")
    focus_node = body.get("focus_node")
    if focus_node is not None:
        focus_node = _lease_name(focus_node, "focus_node")
    admission = await request.app[SERVICE].admit_participant(
        uri_id, tenant=fields["tenant"], organizer=fields["organizer"],
        user=fields["user"], role=role, focus_node=focus_node)
    answer = admission.to_json()
    return web.json_response({name: answer[name] for name in ADMIT_ANSWER_FIELDS}, status=201)


async def revoke_participant(request: web.Request) -> web.Response:
    conference_id = _conference_id(request)
    pid = request.match_info["pid"]
    if not valid_id(pid) or not await request.app[SERVICE].revoke_participant(
            conference_id, pid):
        raise ServiceError("not_found", "unknown participant")
    return web.Response(status=204)


async def end_conference(request: web.Request) -> web.Response:
    conference_id = _conference_id(request)
    if not await request.app[SERVICE].end_conference(conference_id):
        raise ServiceError("not_found", "unknown conference")
    return web.Response(status=204)


async def heartbeat_focus_node(request: web.Request) -> web.Response:
    """Create or renew a focus lease (no body)."""
    name = _lease_name(request.match_info["name"], "focus node name")
    await request.app[SERVICE].heartbeat_focus_node(name)
    return web.Response(status=204)


async def release_focus_node(request: web.Request) -> web.Response:
    """Drop a lease at its focus's clean stop; idempotent (an unknown one is gone already)."""
    name = _lease_name(request.match_info["name"], "focus node name")
    await request.app[SERVICE].release_focus_node(name)
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
