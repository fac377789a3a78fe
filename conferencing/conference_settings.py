"""The organizer's settings of a conference: `PATCH /v1/conferences/{conf}`.

- `downloads` (docs/protocol.md §8.3): attendees may download items (downloads.py applies
  it to every download);
- `locked` (§9.2): no new joins but the organizer's (`ConferenceService.admit_participant`
  refuses the others with 403 `conference_locked`, which the focus answers with SIP 403).

A change is written with `conference.updated` (carrying every setting as it now is) in the
same transaction, through the event log; a `PATCH` that changes nothing pushes nothing.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from webconf.events import ConferenceUpdated

from .service import ConferenceService, Principal, ServiceError
from .store import NewEvent
from .store.participation import CONFERENCE_SETTINGS


@dataclass(frozen=True)
class ConferenceChanges:
    """A validated `PATCH /v1/conferences/{conf}` body: the settings to set."""

    values: dict[str, bool]


def parse_conference_changes(body: object) -> ConferenceChanges:
    """Strict: a JSON object of known fields, each a boolean, at least one (else 400)."""
    if not isinstance(body, dict):
        raise ServiceError("bad_request", "body must be a JSON object")
    unknown = sorted(set(body) - set(CONFERENCE_SETTINGS))
    if unknown:
        raise ServiceError("bad_request", f"unknown field {unknown[0]!r}")
    if not body:
        raise ServiceError("bad_request", "nothing to change: give 'downloads' or 'locked'")
    for name, value in body.items():
        if not isinstance(value, bool):
            raise ServiceError("bad_request", f"{name!r} must be true or false")
    return ConferenceChanges(values=dict(body))


def require_organizer(who: Principal) -> None:
    if who.role != "organizer":
        raise ServiceError("forbidden", "only the organizer may change the conference")


async def update_conference(service: ConferenceService, who: Principal,
                            changes: ConferenceChanges) -> dict[str, Any]:
    """Apply the organizer's changes; returns the conference's settings."""
    require_organizer(who)

    def events(settings: dict[str, bool]) -> list[NewEvent]:
        event = ConferenceUpdated(downloads=settings["downloads"], locked=settings["locked"])
        return [NewEvent(type=ConferenceUpdated.TYPE,
                         payload=json.dumps(event.to_json(), separators=(",", ":")))]

    result = await service.store.set_conference_settings(
        who.conference_id, changes.values, time.time(), events)
    if result is None:
        raise ServiceError("not_found", "unknown conference")
    settings, _ = result
    return {"conference": who.conference_id, **settings}
