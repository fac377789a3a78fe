"""`webconf db upgrade|status DIR`: the deployment's schema migrations (docs/protocol.md §7).

`upgrade` brings every installed wing's tables to head (webconf/deploy/migrate.py: one
transaction under a PostgreSQL advisory lock, so several nodes may run it at once; a second
run is a no-op). `status` shows each wing's revision beside the code's.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from webconf.deploy import migrate
from webconf.deploy.config import ConfigError, load_config


def add_db_arguments(parser: argparse.ArgumentParser) -> None:
    """`webconf db upgrade|status DIR` (dests: db_command, dir)."""
    sub = parser.add_subparsers(dest="db_command", metavar="ACTION", required=True)
    up = sub.add_parser("upgrade", help="migrate the database to this release's schema",
                        description="Migrate every table of the deployment's database to "
                        "this release's schema. Safe to run on several nodes at once.")
    up.add_argument("dir", type=Path, help="deployment directory")
    st = sub.add_parser("status", help="each schema's revision beside the code's; exit 1 "
                        "if any is not current")
    st.add_argument("dir", type=Path, help="deployment directory")


def run_db(args: argparse.Namespace) -> int:
    """0 done (status: all current), 1 status not current, 2 configuration or database
    error, each with one line on stderr."""
    prog = f"webconf db {args.db_command}"
    try:
        cfg = load_config(args.dir)
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    schemas = migrate.installed_schemas()
    if not schemas:
        print(f"{prog}: no schemas are installed (the server wings are missing: "
              "pip install webconf)", file=sys.stderr)
        return 2
    url = cfg.store_url
    try:
        if args.db_command == "upgrade":
            for before, after in asyncio.run(migrate.upgrade(url, schemas)):
                was = ",".join(before.current) or "empty"
                verb = "already at" if before.state == "current" else f"{was} ->"
                print(f"{after.schema}: {verb} {after.head}")
            return 0
        found = asyncio.run(migrate.status(url, schemas))
    except migrate.SchemaError as exc:
        print(f"{prog}: {migrate.mismatch_message(exc.status, str(cfg.base_dir))}",
              file=sys.stderr)
        return 2
    except (SQLAlchemyError, OSError) as exc:
        shown = make_url(url).render_as_string(hide_password=True)
        print(f"{prog}: cannot use the database {shown} ({type(exc).__name__})",
              file=sys.stderr)
        return 2
    for one in found:
        print(one.describe())
    return 0 if all(one.state == "current" for one in found) else 1
