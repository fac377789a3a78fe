"""`/v1/conferences/{conf}/participants`: the roster, role changes and ejects
(docs/protocol.md §9.2; the logic is conferencing/roles.py)."""

from __future__ import annotations

from aiohttp import web

from .. import roles
from .context import SERVICE, authenticate, json_body


async def list_participants(request: web.Request) -> web.Response:
    who = await authenticate(request)
    view = await roles.roster(request.app[SERVICE], who)
    return web.json_response(view, headers={"Cache-Control": "no-store"})


async def change_role(request: web.Request) -> web.Response:
    who = await authenticate(request)
    roles.require_organizer(who, "change roles")  # before the body: others learn nothing
    role = roles.parse_role_change(await json_body(request))
    entry = await roles.change_role(request.app[SERVICE], who, request.match_info["pid"], role)
    return web.json_response(entry, headers={"Cache-Control": "no-store"})


async def eject(request: web.Request) -> web.Response:
    who = await authenticate(request)
    await roles.eject(request.app[SERVICE], who, request.match_info["pid"])
    return web.Response(status=204)


def add_routes(app: web.Application) -> None:
    base = "/v1/conferences/{conf}/participants"
    app.router.add_get(base, list_participants)
    app.router.add_patch(f"{base}/{{pid}}", change_role)
    app.router.add_delete(f"{base}/{{pid}}", eject)
