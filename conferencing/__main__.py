"""`python -m conferencing DIR`: the WCS (conferencing/app.py). A configuration error
(`webconf.toml` or a `WEBCONF_*` variable) or a database out of reach at startup is one
line on stderr and exit 2, no traceback: `webconf serve` shows that line."""

import sys

from webconf.deploy.config import ConfigError
from webconf.deploy.db import DatabaseUnavailable

from .app import main

try:
    code = main()
except (ConfigError, DatabaseUnavailable) as exc:
    print(f"wcs: {exc}", file=sys.stderr, flush=True)
    code = 2
raise SystemExit(code)
