"""Alembic's entry point for this environment: webconf.deploy.migrate does the work."""

from alembic import context

from webconf.deploy.migrate import run_env

run_env(context)
