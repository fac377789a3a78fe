"""Revisions, oldest first (Alembic loads them by file)."""
