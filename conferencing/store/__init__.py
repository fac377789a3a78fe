"""Metadata store (SQLAlchemy Core, async)."""

from .log import EventRow, NewEvent
from .store import (
    ConferenceRow,
    CookieState,
    DownloadSwitches,
    ItemRow,
    ParticipantRow,
    RoleChange,
    RosterRows,
    Store,
    TenantKeyRow,
)

__all__ = [
    "ConferenceRow", "CookieState", "DownloadSwitches", "EventRow", "ItemRow", "NewEvent",
    "ParticipantRow", "RoleChange", "RosterRows", "Store", "TenantKeyRow",
]
