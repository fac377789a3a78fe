"""Metadata store (SQLAlchemy Core, async)."""

from .store import ConferenceRow, CookieState, ItemRow, ParticipantRow, Store, TenantKeyRow

__all__ = [
    "ConferenceRow", "CookieState", "ItemRow", "ParticipantRow", "Store", "TenantKeyRow",
]
