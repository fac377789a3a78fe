"""The store's per-request queries (a download's item, a cookie's state, the event feed's
rows, a channel's welcome): built once with named parameters, and compiled for the SQLite
fast path (fastread.py), which runs them on the loop; the engine runs the same statements
elsewhere (`Store.hot_rows`)."""

from __future__ import annotations

from sqlalchemy import and_, bindparam, exists, select

from .fastread import compiled
from .schema import (
    conference_events,
    conferences,
    items,
    participants,
    presentations,
    revoked_cookies,
    tenant_settings,
)

SWITCH_COLUMNS = (conferences.c.downloads.label("switch_downloads"),
                  tenant_settings.c.server_decrypt.label("switch_server_decrypt"))
"""The download switches, selected with an item (a missing settings row is NULL: on)."""
ITEM_ACCESS = (
    select(*items.c, *SWITCH_COLUMNS)
    .select_from(conferences.outerjoin(items, and_(
        items.c.conference_id == conferences.c.id, items.c.id == bindparam("item"))).outerjoin(
        tenant_settings, tenant_settings.c.tenant == conferences.c.tenant))
    .where(conferences.c.id == bindparam("conf")))
EVENTS_AFTER = (select(conference_events).where(
    conference_events.c.conference_id == bindparam("conf"),
    conference_events.c.seq > bindparam("after")).order_by(conference_events.c.seq)
    .limit(bindparam("limit")).offset(bindparam("offset")))
REVOKED = select(exists().where(revoked_cookies.c.jti == bindparam("jti")).label("revoked"))
_COOKIE_STATE_COLUMNS = (
    exists().where(revoked_cookies.c.jti == bindparam("jti")).label("revoked"),
    conferences.c.tenant.label("conference_tenant"),
    conferences.c.ended_at.label("conference_ended_at"),
    select(participants.c.role).where(participants.c.jti == bindparam("jti"))
    .scalar_subquery().label("participant_role"))
COOKIE_STATE = select(*_COOKIE_STATE_COLUMNS).where(conferences.c.id == bindparam("conf"))
"""A cookie's revocation, its conference's tenant and end, and its participant's role."""
COOKIE_STATE_ITEM = select(*_COOKIE_STATE_COLUMNS, *items.c, *SWITCH_COLUMNS).select_from(
    conferences.outerjoin(items, and_(
        items.c.conference_id == conferences.c.id, items.c.id == bindparam("item"))).outerjoin(
        tenant_settings, tenant_settings.c.tenant == conferences.c.tenant)).where(
    conferences.c.id == bindparam("conf"))
"""The same with an item of the conference and its download switches (a download)."""
LAST_SEQ = select(conferences.c.id, conferences.c.last_seq).where(
    conferences.c.id == bindparam("conf"))
"""A conference's newest seq (a channel's welcome, the event feed's start)."""
ITEMS_OF = select(items).where(items.c.conference_id == bindparam("conf")).order_by(
    items.c.created_at, items.c.id)
"""A conference's items, oldest first (a channel's welcome)."""
PRESENTATION_NOW = select(presentations).where(
    presentations.c.conference_id == bindparam("conf"),
    exists().where(and_(items.c.conference_id == presentations.c.conference_id,
                        items.c.id == presentations.c.item_id)))
"""What a conference shows, unless its item is gone (a channel's welcome)."""
COMPILED = {q: compiled(q) for q in (ITEM_ACCESS, EVENTS_AFTER, REVOKED, COOKIE_STATE,
                                     COOKIE_STATE_ITEM, LAST_SEQ, ITEMS_OF, PRESENTATION_NOW)}
"""Each statement above as SQLite SQL (fastread.compiled)."""
