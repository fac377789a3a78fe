"""`python -m focus DIR`: run the SIP focus of a deployment in the foreground.

Prints `focus ready ...` once the SIP listener accepts connections; on SIGTERM/SIGINT it
stops accepting, ends every open participation at the WCS and exits. A configuration
error (`webconf.toml` or a `WEBCONF_*` variable), a schema behind or ahead of the code, or
a database out of reach, is one line on stderr and exit 2, no traceback (`webconf serve`
shows that line).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from webconf.deploy import keys
from webconf.deploy.capacity import prepare_server_process
from webconf.deploy.config import ConfigError, load_config
from webconf.deploy.db import DatabaseUnavailable
from webconf.deploy.logs import configure_logging
from webconf.deploy.loop import install_fast_loop

from .directory import Directory, DirectorySchemaError
from .server import FocusServer
from .wcs_client import WcsClient

log = logging.getLogger("webconf.focus")


async def serve(base_dir: Path) -> None:
    cfg = load_config(base_dir)
    directory = await Directory.for_deployment(cfg, create=False)  # serve only checks
    wcs = WcsClient(cfg)
    server = FocusServer(cfg, directory, wcs, keys.load_nonce_secret(cfg))
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tcp = f" tcp={cfg.focus.tcp_host}:{server.tcp_port}" if server.tcp_port else ""
    wss = f" wss={cfg.server.host}:{server.wss_port}" if server.wss_port else ""
    print(f"focus ready sips={cfg.server.host}:{server.sip_port}{tcp}{wss}", flush=True)
    await stop.wait()
    log.info(json.dumps({"event": "shutdown", "phase": "draining"}))
    await server.stop()
    await wcs.close()
    await directory.close()
    log.info(json.dumps({"event": "shutdown", "phase": "done"}))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m focus DIR", file=sys.stderr)
        return 2
    configure_logging("focus")
    prepare_server_process()  # descriptors and TLS buffers for ~10k connections
    install_fast_loop()  # uvloop when installed (WEBCONF_UVLOOP=0: the stdlib loop)
    try:
        asyncio.run(serve(Path(args[0])))
    except (ConfigError, DirectorySchemaError, DatabaseUnavailable) as exc:
        print(f"focus: {exc}", file=sys.stderr, flush=True)  # one line (a schema's names
        return 2  # `webconf db upgrade`)
    return 0


raise SystemExit(main())
