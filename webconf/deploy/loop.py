"""Event-loop choice shared by the server processes (WCS and focus) and the load generator
(`webconf loadtest`).

`install_fast_loop()` makes the next `asyncio.run()` use uvloop when it is importable (the
optional `fast` extra: `pip install 'webconf[fast]'`); `WEBCONF_UVLOOP=0` keeps the stdlib
loop. Both loops run the same code; uvloop's event loop and transports cost less per
callback and per write. On the WCS's bulk data path (TLS download/upload, where OpenSSL and
memory copies dominate) the difference measured within noise, see bench/download.py.
"""

from __future__ import annotations

import asyncio
import os

DISABLE_VALUES = frozenset({"0", "false", "no", "off"})


def install_fast_loop() -> str:
    """Install uvloop's event-loop policy if wanted and available; return the loop's name."""
    if os.environ.get("WEBCONF_UVLOOP", "1").strip().lower() in DISABLE_VALUES:
        return "asyncio"
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"
