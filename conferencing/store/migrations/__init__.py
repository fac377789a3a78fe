"""The WCS store's Alembic environment (webconf/deploy/migrate.py runs it).

A schema change is a new revision in `versions/`: write it with portable operations (SQLite
and PostgreSQL), then `tests/test_migrations.py` checks that head equals `schema.metadata`.
"""

from __future__ import annotations

from pathlib import Path

from webconf.deploy.migrate import Schema

from ..schema import metadata

SCHEMA = Schema(name="wcs", script_location=Path(__file__).resolve().parent,
                version_table="alembic_version_wcs", metadata=metadata)
