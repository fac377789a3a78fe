"""The focus's tables: the tenant directory (see directory.py for what they hold and why).

Its own `MetaData`, in the same database as the WCS's tables but never joined with them;
focus/migrations/ makes them. Portable SQLAlchemy Core only (SQLite and PostgreSQL).
"""

from __future__ import annotations

from sqlalchemy import Column, Float, ForeignKey, LargeBinary, MetaData, String, Table

metadata = MetaData()

directory_tenants = Table(
    "directory_tenants",
    metadata,
    Column("domain", String(255), primary_key=True),
    Column("created_at", Float, nullable=False),
)

sip_users = Table(
    "sip_users",
    metadata,
    Column("realm", String(255), ForeignKey("directory_tenants.domain"), primary_key=True),
    Column("username", String(255), primary_key=True),
    Column("ha1_md5_sealed", LargeBinary, nullable=False),
    Column("ha1_sha256_sealed", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
)
HA1_COLUMNS = {"MD5": "ha1_md5_sealed", "SHA-256": "ha1_sha256_sealed"}
"""The sealed HA1 column of each Digest algorithm."""
