"""The WCS process: two HTTPS listeners over one service.

- public (8443): the docs/protocol.md §4 API, server-authenticated TLS;
- internal (8444): the docs/protocol.md §7 API, TLS that requires a client certificate
  from the deployment CA (so only the focus reaches it). It binds `wcs.internal_host`
  (default `server.host`): a node bound to its own address can keep this one on loopback,
  where its focus calls it (`Config.internal_url`).

Both bound the TLS handshake, the time to a request's head and idle keep-alive, and cap
their connections at `wcs.max_connections` (`conferencing.listener`).

`python -m conferencing DIR` runs it in the foreground, prints `wcs ready ...` once both
listeners accept connections, and on SIGTERM/SIGINT stops accepting, closes data channels,
drains in-flight requests (up to `wcs.shutdown_grace_seconds`, or what `webconf serve` left
of it after stopping the focus) and exits.

While it runs, a background task drops the revocation rows of cookies that their `exp`
already refuses (every `wcs.revocation_purge_seconds`), so `revoked_cookies` stays as large
as one cookie lifetime of revocations instead of growing forever. Another removes the
share's leftovers of crashes (every `wcs.share_sweep_seconds`) without a restart; that
periodic sweep spares every file younger than any upload may be (`sweep_age`), on every
backend, since this very process (and, on PostgreSQL, other nodes) may be writing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from webconf.deploy import keys, tls
from webconf.deploy.capacity import prepare_server_process
from webconf.deploy.config import Config, load_config
from webconf.deploy.logs import configure_logging
from webconf.deploy.loop import install_fast_loop
from webconf.deploy.serve import drain_seconds, read_restarts

from . import lifecycle
from .api import internal, link, public, webclient
from .api.context import CHANNELS, METRICS, SERVICE
from .api.errors import InFlight, make_middlewares
from .api.peer import focus_client_only
from .convert import Converter
from .cookies import CookieAuthority
from .derived import ServiceDeckHost
from .eventlog import PgListener
from .events import EventHub
from .leases import expire_focus_leases
from .listener import ConnectionGuard, GuardedSite
from .metrics import Metrics
from .service import ConferenceService
from .share import FileShare, sweep_age
from .store import Store
from .store.store import StoreSchemaError

log = logging.getLogger("webconf.wcs")
STRAGGLER_SECONDS = 0.25
"""After `stop`'s drain (`wcs.shutdown_grace_seconds`), how long aiohttp gives a handler that
is still running before it cancels it, and then the cancelled handler to end (so twice this
at most): the drain was the grace, this is not a second one."""
LISTENER_START_SECONDS = 5.0
"""How long startup waits for the NOTIFY connection before serving on the poll alone."""


def build_public_app(service: ConferenceService, metrics: Metrics,
                     in_flight: InFlight | None = None,
                     guard: ConnectionGuard | None = None) -> web.Application:
    app = web.Application(middlewares=_middlewares(guard, metrics, in_flight),
                          client_max_size=64 * 1024)
    app[SERVICE] = service
    app[METRICS] = metrics
    channels: set[web.WebSocketResponse] = set()
    app[CHANNELS] = channels
    public.add_routes(app)
    webclient.add_routes(app, service.cfg)  # the browser page (docs/protocol.md §10.2)

    async def close_channels(app: web.Application) -> None:
        # Each channel handler closes its own socket (1001) once its subscription ends.
        service.events.close_all("shutdown")

    app.on_shutdown.append(close_channels)
    return app


def build_internal_app(service: ConferenceService, in_flight: InFlight | None = None,
                       guard: ConnectionGuard | None = None) -> web.Application:
    # Innermost, so its 403 leaves as JSON: only the focus's certificate passes (api/peer.py).
    app = web.Application(middlewares=[*_middlewares(guard, None, in_flight), focus_client_only],
                          client_max_size=64 * 1024)
    app[SERVICE] = service
    internal.add_routes(app)
    return app


def _middlewares(guard: ConnectionGuard | None, metrics: Metrics | None,
                 in_flight: InFlight | None) -> list[Any]:
    """The guard's head-timer middleware first (it must see every parsed request), then
    the JSON errors and accounting."""
    head = [] if guard is None else [guard.middleware()]
    return [*head, *make_middlewares(metrics, in_flight)]


@dataclass
class WcsServer:
    """A running WCS: start() binds both listeners, stop() drains and closes."""

    cfg: Config
    service: ConferenceService | None = None
    runners: list[web.AppRunner] = field(default_factory=list)
    https_port: int = 0
    internal_port: int = 0
    in_flight: InFlight = field(default_factory=InFlight)
    purge_task: asyncio.Task[None] | None = None
    event_tasks: list[asyncio.Task[None]] = field(default_factory=list)
    """The event log's poller, trimmer and (PostgreSQL) NOTIFY listener (eventlog.py)."""
    lease_task: asyncio.Task[None] | None = None
    """Revokes the participants of dead focus processes (`conferencing.leases`)."""
    sweep_task: asyncio.Task[None] | None = None
    """Removes unreferenced share files while serving (`_sweep_share`)."""
    lifecycle_task: asyncio.Task[None] | None = None
    """Ends idle conferences and shreds content past its grace (`conferencing.lifecycle`)."""
    converter: Converter | None = None
    """Converts shared decks to PDFs in LibreOffice processes (`conferencing.convert`)."""
    guards: dict[str, ConnectionGuard] = field(default_factory=dict)
    """Each listener's connection cap and head timer (`conferencing.listener`)."""

    async def start(self) -> None:
        cfg = self.cfg
        # `init` / `webconf db upgrade` make the schema; serving only checks it is at head.
        store = await Store.open(cfg.store_url, create=False, where=str(cfg.base_dir))
        share = FileShare(cfg.share_dir)
        share.prepare()
        cookie_keys = keys.load_cookie_keys(cfg)
        cookies = CookieAuthority(cookie_keys, cfg.keys.cookie_signing_kid,
                                  ttl_seconds=cfg.wcs.cookie_ttl_seconds,
                                  leeway_seconds=cfg.wcs.cookie_leeway_seconds)
        metrics = Metrics()
        metrics.report_restarts(lambda: read_restarts(cfg))  # our supervisor's, if any
        self.service = ConferenceService(
            cfg, store, share, cookies, keys.load_root_keys(cfg),
            EventHub(queue_length=cfg.wcs.channel_queue_length), metrics)
        self.event_tasks = await _start_event_tasks(self.service)
        # Decks to PDFs (docs/protocol.md §9.4); a previous crash's job directories go first.
        self.converter = Converter(cfg.wcs, cfg.var_dir / "convert", metrics)
        self.converter.host = ServiceDeckHost(self.service)
        await self.converter.start()
        self.service.converter = self.converter
        # Other nodes or workers may write into the share right now (a PostgreSQL store):
        # spare what may be their uploads in progress (conferencing/share.py).
        swept = await self.service.sweep_share(min_age_seconds=sweep_age(
            cfg.wcs.upload_deadline_seconds, shared=not cfg.store_url.startswith("sqlite")))
        if swept["temp"] or swept["orphan"]:
            log.info(json.dumps({"event": "share.sweep", **swept}))
        self.guards = {name: ConnectionGuard(
            name, max_connections=cfg.wcs.max_connections,
            header_timeout_seconds=cfg.wcs.header_timeout_seconds)
            for name in ("public", "internal")}
        public_runner = web.AppRunner(
            build_public_app(self.service, metrics, self.in_flight, self.guards["public"]),
            access_log=None, shutdown_timeout=STRAGGLER_SECONDS, max_field_size=8190,
            keepalive_timeout=cfg.wcs.keepalive_timeout_seconds)
        internal_runner = web.AppRunner(
            build_internal_app(self.service, self.in_flight, self.guards["internal"]),
            access_log=None, shutdown_timeout=STRAGGLER_SECONDS,
            keepalive_timeout=cfg.wcs.keepalive_timeout_seconds)
        for runner in (public_runner, internal_runner):
            await runner.setup()
            self.runners.append(runner)
        handshake = cfg.wcs.tls_handshake_timeout_seconds
        public_site = GuardedSite(
            public_runner, cfg.server.host, cfg.wcs.https_port,
            ssl_context=tls.server_context(cfg, "wcs"), guard=self.guards["public"],
            handshake_timeout_seconds=handshake, reuse_port=cfg.wcs.reuse_port)
        await public_site.start()
        self.https_port = _bound_port(public_runner)
        if cfg.wcs.https_port == 0:
            cfg.wcs.https_port = self.https_port
        internal_site = GuardedSite(
            internal_runner, cfg.internal_host, cfg.wcs.internal_port,
            ssl_context=tls.server_context(cfg, "wcs", require_client_cert=True),
            guard=self.guards["internal"], handshake_timeout_seconds=handshake,
            reuse_port=cfg.wcs.reuse_port)
        await internal_site.start()
        self.internal_port = _bound_port(internal_runner)
        if cfg.wcs.internal_port == 0:
            cfg.wcs.internal_port = self.internal_port
        if cfg.wcs.revocation_purge_seconds > 0:
            self.purge_task = asyncio.create_task(
                _purge_revocations(self.service, cfg.wcs.revocation_purge_seconds),
                name="wcs-revocation-purge")
        self.lease_task = asyncio.create_task(
            expire_focus_leases(self.service, cfg.focus.node_timeout_seconds),
            name="wcs-focus-leases")
        if cfg.wcs.share_sweep_seconds > 0:
            self.sweep_task = asyncio.create_task(
                _sweep_share(self.service, cfg.wcs.share_sweep_seconds),
                name="wcs-share-sweep")
        if cfg.wcs.lifecycle_sweep_seconds > 0:
            self.lifecycle_task = asyncio.create_task(
                lifecycle.run(self.service.lifecycle, cfg.wcs.lifecycle_sweep_seconds),
                name="wcs-lifecycle")

    async def stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then close."""
        for task in self.event_tasks:
            task.cancel()
        for task in self.event_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.event_tasks.clear()
        if self.service is not None:
            await self.service.endings.close()
            await self.service.feed.close()
        if self.purge_task is not None:
            self.purge_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.purge_task
            self.purge_task = None
        for background in (self.lease_task, self.sweep_task, self.lifecycle_task):
            if background is not None:
                background.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await background
        self.lease_task = self.sweep_task = self.lifecycle_task = None
        for runner in self.runners:
            for site in list(runner.sites):
                await site.stop()
        if self.service is not None:
            self.service.events.close_all("shutdown")
        for runner in self.runners:  # the focus's links: finish, answer, close (1001)
            link.close_all(runner.app)
        await self.in_flight.wait_idle(drain_seconds(self.cfg))  # the grace, or what the
        # node's stop left of it after the focus (webconf/deploy/serve.py)
        if self.converter is not None:  # after the drain: an upload's deck is queued, then
            await self.converter.stop()  # LibreOffice killed, its plaintext removed
        for runner in reversed(self.runners):
            await runner.cleanup()
        self.runners.clear()
        if self.service is not None:
            await self.service.store.close()
            self.service.audit.close()  # after the last request: every record written


async def _start_event_tasks(service: ConferenceService) -> list[asyncio.Task[None]]:
    """Start delivery from the event log: the poller and the trimmer, and on PostgreSQL
    the NOTIFY listener, connected before we serve (bounded: the poll covers a slow one)."""
    cfg = service.cfg.wcs
    tasks = [asyncio.create_task(service.feed.run_poller(), name="wcs-events-poll"),
             asyncio.create_task(_trim_events(service), name="wcs-events-trim")]
    if service.store.engine.dialect.name == "postgresql":
        listener = PgListener(service.cfg.store_url, service.feed,
                              keepalive_seconds=cfg.event_listener_keepalive_seconds)
        service.feed.listener = listener
        tasks.append(asyncio.create_task(listener.run(), name="wcs-events-listen"))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LISTENER_START_SECONDS):
                await listener.connected.wait()
    return tasks


async def _trim_events(service: ConferenceService) -> None:
    """Trim the event log to its retention, every tenth of it (at most hourly)."""
    interval = min(3600.0, max(1.0, service.cfg.wcs.event_retention_seconds / 10))
    while True:
        await asyncio.sleep(interval)
        try:
            trimmed = await service.trim_events(time.time())
        except Exception as exc:
            log.warning(json.dumps({"event": "events.trim_failed",
                                    "error": type(exc).__name__}))
        else:
            if trimmed:
                log.info(json.dumps({"event": "events.trimmed", "rows": trimmed}))


async def _purge_revocations(service: ConferenceService, interval_seconds: float) -> None:
    """Every `interval_seconds` (first at startup), drop the revocation rows of cookies past
    `CookieAuthority.revocation_horizon`; a failed round is logged and retried next time."""
    while True:
        try:
            horizon = service.cookies.revocation_horizon(time.time())
            purged = await service.store.purge_expired_revocations(horizon)
        except Exception as exc:  # a store hiccup must not end the purge for good
            log.warning(json.dumps({"event": "revocations.purge_failed",
                                    "error": type(exc).__name__}))
        else:
            service.metrics.revocations_purged.inc(purged)
            if purged:
                log.info(json.dumps({"event": "revocations.purged", "rows": purged}))
        await asyncio.sleep(interval_seconds)


async def _sweep_share(service: ConferenceService, interval_seconds: float) -> None:
    """Every `interval_seconds` (the first one after the startup sweep), remove the share's
    temp files and blobs without a row that are older than `sweep_age` of a shared share,
    whatever the backend: uploads of this process (and other nodes') are in flight now.
    A failed round (the database or the share out of reach) is logged once per outage and
    retried at the next one."""
    min_age = sweep_age(service.cfg.wcs.upload_deadline_seconds, shared=True)
    failed_since: float | None = None
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            swept = await service.sweep_share(min_age_seconds=min_age)
        except Exception as exc:  # a store or share hiccup must not end the sweep for good
            if failed_since is None:
                failed_since = time.monotonic()
                log.warning(json.dumps({"event": "share.sweep_failed",
                                        "error": type(exc).__name__}))
            continue
        if failed_since is not None:
            log.info(json.dumps({"event": "share.sweep_resumed",
                                 "failed_seconds": round(time.monotonic() - failed_since, 1)}))
            failed_since = None
        if swept["temp"] or swept["orphan"]:
            log.info(json.dumps({"event": "share.sweep", **swept}))


def _bound_port(runner: web.AppRunner) -> int:
    addresses = runner.addresses
    return int(addresses[-1][1])


async def serve_forever(cfg: Config) -> None:
    server = WcsServer(cfg)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"wcs ready https={cfg.public_url} internal={cfg.internal_url}", flush=True)
    await stop.wait()
    log.info(json.dumps({"event": "shutdown", "phase": "draining"}))
    await server.stop()
    log.info(json.dumps({"event": "shutdown", "phase": "done"}))


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m conferencing DIR", file=sys.stderr)
        return 2
    configure_logging("wcs")
    prepare_server_process()  # descriptors and TLS buffers for ~10k connections
    cfg = load_config(Path(args[0]))
    install_fast_loop()
    try:
        asyncio.run(serve_forever(cfg))
    except StoreSchemaError as exc:  # one line naming `webconf db upgrade DIR`
        print(f"wcs: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0
