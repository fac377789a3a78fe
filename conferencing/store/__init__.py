"""Metadata store (SQLAlchemy Core, async)."""

from .log import EventRow, NewEvent
from .store import ConferenceRow, CookieState, ItemRow, ParticipantRow, Store, TenantKeyRow

__all__ = [
    "ConferenceRow", "CookieState", "EventRow", "ItemRow", "NewEvent", "ParticipantRow",
    "Store", "TenantKeyRow",
]
