"""The presentation state's rows (docs/protocol.md §9.1): one per conference at most.

A change is one transaction: lock the conference (log.py's lock order), check that the
conference is open and that the participant is still in it with a role that may present
(read from its row now, not from its cookie: a role changed mid-meeting counts at once),
that the item still exists and the page is in range, then write the row and append its
`presentation.changed` event, whose seq the row keeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import and_, delete, exists, insert, select, update

from . import log
from .hot_queries import PRESENTATION_NOW
from .log import NewEvent
from .schema import conferences, items, participants, presentations

if TYPE_CHECKING:
    from .store import Store

PRESENTERS = ("organizer", "presenter")
"""The roles that may set the presentation."""

SetOutcome = Literal["ok", "unknown_conference", "ended", "gone", "forbidden", "not_found",
                     "page_out_of_range"]


@dataclass(frozen=True)
class PresentationRow:
    conference_id: str
    item_id: str
    page: int
    presenter_pid: str
    seq: int
    updated_at: float


async def current(store: Store, conference_id: str) -> PresentationRow | None:
    """The conference's presentation, None when nothing (or a deleted item) is shown."""
    rows = await store.hot_rows(PRESENTATION_NOW, {"conf": conference_id})
    return None if not rows else PresentationRow(
        **{c.name: rows[0][c.name] for c in presentations.c})


async def set_state(store: Store, conference_id: str, pid: str, item_id: str | None,
                    page: int | None, page_limit: int | None, now: float,
                    event: Callable[[], dict[str, object]]) -> tuple[SetOutcome, int]:
    """Set (or with `item_id` None, clear) the presentation as participant `pid`; returns
    the outcome and the seq of the appended event (0 unless "ok").

    `page_limit`: the item's page count as the caller read it (None: the item was not
    found); the checks run in the order the API reports them: who first, then what."""
    async with store._write() as conn:
        if not await log.lock_conference(conn, conference_id):
            return "unknown_conference", 0
        # One round trip for every check (a page turn is on the presenter's hot path).
        columns: list[Any] = [conferences.c.ended_at, participants.c.role,
                              participants.c.left_at]
        if item_id is not None:
            columns.append(exists().where(items.c.conference_id == conference_id,
                                          items.c.id == item_id).label("item_present"))
        state = (await conn.execute(select(*columns).select_from(conferences.outerjoin(
            participants, and_(participants.c.id == pid,
                               participants.c.conference_id == conferences.c.id))).where(
            conferences.c.id == conference_id))).first()
        if state is None:
            return "unknown_conference", 0
        if state.ended_at is not None:
            return "ended", 0
        if state.role is None or state.left_at is not None:
            return "gone", 0
        if state.role not in PRESENTERS:
            return "forbidden", 0
        if item_id is None:
            await conn.execute(delete(presentations).where(
                presentations.c.conference_id == conference_id))
        else:
            if not state.item_present or page_limit is None:
                return "not_found", 0
            if page is None or not 1 <= page <= page_limit:
                return "page_out_of_range", 0
        payload = event()
        seq = await log.append(conn, conference_id, [NewEvent(
            type=str(payload["type"]), payload=json.dumps(payload, separators=(",", ":")))],
            now)
        if item_id is not None:
            values = {"item_id": item_id, "page": page, "presenter_pid": pid, "seq": seq,
                      "updated_at": now}
            changed = await conn.execute(update(presentations).where(
                presentations.c.conference_id == conference_id).values(**values))
            if not changed.rowcount:
                await conn.execute(insert(presentations).values(
                    conference_id=conference_id, **values))
    store._announce(conference_id, seq)
    return "ok", seq
