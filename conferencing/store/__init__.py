"""Metadata store (SQLAlchemy Core, async)."""

from .log import EventRow, NewEvent
from .store import (
    ConferenceRow,
    CookieState,
    DownloadSwitches,
    ItemRow,
    ParticipantRow,
    Store,
    TenantKeyRow,
)

__all__ = [
    "ConferenceRow", "CookieState", "DownloadSwitches", "EventRow", "ItemRow", "NewEvent",
    "ParticipantRow", "Store", "TenantKeyRow",
]
