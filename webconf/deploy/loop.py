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
from collections.abc import Callable

DISABLE_VALUES = frozenset({"0", "false", "no", "off"})


def install_fast_loop() -> str:
    """Install uvloop's event-loop policy if wanted and available; return the loop's name.
    For a server process's `main`: the policy is the whole process's."""
    factory = fast_loop_factory()
    if factory is None:
        return "asyncio"
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def fast_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory if wanted and available, else None (the stdlib loop): for
    `asyncio.Runner(loop_factory=...)` in code that may run inside another program (the
    `webconf` commands, called in-process by tests too), where a policy must not change."""
    if os.environ.get("WEBCONF_UVLOOP", "1").strip().lower() in DISABLE_VALUES:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
