"""Shared fixtures: real deployments, real servers on loopback, real TLS."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy.engine import make_url

from conferencing.app import WcsServer
from tests.backends import PgServer, PgUnavailable, selected_backends, start_server
from tests.tcp_relay import TcpRelay
from webconf.deploy import tls
from webconf.deploy.config import Config, load_config
from webconf.deploy.init import init_deployment
from webconf.deploy.local import ServeProcess, free_port

TENANTS = ["contoso.example", "fabrikam.example"]
VECTORS = Path(os.environ.get("WEBCONF_VECTORS") or Path(__file__).resolve().parent / "vectors")

# -- store backends (tests/backends.py) ---------------------------------------------------------
# A test whose fixtures include `backend` (through `deployment` or `store_url`) runs once per
# backend, ids `[sqlite]`/`[postgresql]` (`WEBCONF_TEST_BACKENDS` picks), unless it starts
# `webconf serve` (the `serve` fixture), is marked `sqlite_only`, or lives in a module below.
# Those stay on SQLite: they drive `webconf serve`/focus subprocesses, SIP user agents or TLS
# buffers, not the store, whose every path the doubled store/service/API tests cover; doubling
# them would double the slowest part of the suite for no new coverage.
SQLITE_ONLY_MODULES = frozenset({
    "test_serve", "test_parent_death", "test_cli", "test_meeting", "test_real_agents",
    "test_focus_interop", "test_focus_e2e", "test_hostile_sip", "test_bench_smoke_scale",
})


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sqlite_only: runs on the SQLite backend only")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    module = metafunc.module.__name__.rpartition(".")[2]
    if (module in SQLITE_ONLY_MODULES or "serve" in metafunc.fixturenames
            or metafunc.definition.get_closest_marker("sqlite_only") is not None):
        return  # `backend` falls back to sqlite
    try:
        backends = selected_backends()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    metafunc.parametrize("backend", backends, indirect=True, ids=list(backends))


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    """The store backend of this test: "sqlite" or "postgresql"."""
    name: str = getattr(request, "param", "sqlite")
    return name


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL the tests use (a running server, else a throwaway cluster)."""
    try:
        server = start_server()
    except PgUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: PgServer) -> Iterator[str]:
    """`postgresql+asyncpg://...` of an empty database that is this test's alone."""
    name = pg_server.acquire()
    try:
        yield pg_server.url(name)
    finally:
        pg_server.release(name)


@pytest.fixture
def relay(pg_url: str) -> Iterator[TcpRelay]:
    """A TCP relay in front of this test's PostgreSQL server, which the test can cut
    (`tests/tcp_relay.py`): the database lost, then back."""
    url = make_url(pg_url)
    with TcpRelay(url.host or "127.0.0.1", url.port or 5432) as opened:
        yield opened


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A store URL of this test's backend: a new SQLite file or a new PostgreSQL database."""
    if backend == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    return f"sqlite+aiosqlite:///{tmp_path / 'webconf.db'}"


@pytest.fixture
def deployment(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> Config:
    """A fresh deployment directory with free ports reserved for a subprocess server, its
    store on this test's backend (`store.url` in webconf.toml, so subprocesses use it too)."""
    database = request.getfixturevalue("pg_url") if backend == "postgresql" else None
    return init_deployment(tmp_path / "dep", https_port=free_port(), internal_port=free_port(),
                           sip_port=free_port(), wss_port=free_port(), tenants=TENANTS,
                           database=database)


@dataclass
class Participant:
    conference: str
    """The conference's public id from the admit answer (the URI's id when refused)."""
    pid: str
    role: str
    cookie: str
    user: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.cookie}"}


class Wcs:
    """A running WCS plus an HTTPS client and an mTLS internal client."""

    def __init__(self, cfg: Config, server: WcsServer | None = None) -> None:
        self.cfg = cfg
        self.server = server
        self.url = cfg.public_url
        self.internal_url = cfg.internal_url
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg)))
        self.internal = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg, client_cert="focus-client")))
        self.public_ids: dict[str, str] = {}
        """URI id -> the public id of the last conference admitted under it (docs/protocol.md
        §2.1), so that tests can name a conference by the id they created it with."""

    def public_id(self, conference: str) -> str:
        """The public id of the conference created as `conference` (unknown ids as they are)."""
        return self.public_ids.get(conference, conference)

    async def admit(self, conference: str, user: str, *, organizer: str | None = None,
                    role: str = "attendee", expect: int = 201) -> Participant:
        tenant = user.split("@", 1)[1]
        organizer = organizer or user
        async with self.internal.post(
                f"{self.internal_url}/internal/v1/conferences/{conference}/participants",
                json={"tenant": tenant, "organizer": organizer, "user": user, "role": role},
        ) as resp:
            body = await resp.json()
            assert resp.status == expect, body
        if expect != 201:
            return Participant(conference, "", "", "", user)
        self.public_ids[conference] = body["conference"]
        return Participant(body["conference"], body["participant"], body["role"],
                           body["cookie"], user)

    async def revoke(self, who: Participant) -> int:
        async with self.internal.delete(
                f"{self.internal_url}/internal/v1/conferences/{who.conference}/participants/"
                f"{who.pid}") as resp:
            return resp.status

    async def end(self, conference: str) -> int:
        async with self.internal.delete(
                f"{self.internal_url}/internal/v1/conferences/{self.public_id(conference)}"
        ) as resp:
            return resp.status

    async def upload(self, who: Participant, data: bytes | Any, name: str = "slides.pdf",
                     content_type: str = "application/pdf",
                     extra: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        headers = {**who.headers, "X-Item-Name": name, "Content-Type": content_type,
                   **(extra or {})}
        async with self.http.post(f"{self.url}/v1/conferences/{who.conference}/items",
                                  data=data, headers=headers) as resp:
            return resp.status, await resp.json()

    def items_url(self, conference: str) -> str:
        return f"{self.url}/v1/conferences/{self.public_id(conference)}/items"

    async def close(self) -> None:
        await self.http.close()
        await self.internal.close()


@contextlib.asynccontextmanager
async def running_wcs(cfg: Config) -> AsyncIterator[Wcs]:
    """An in-process WCS of `cfg` on ephemeral loopback ports, with its clients."""
    cfg.wcs.https_port = 0
    cfg.wcs.internal_port = 0
    server = WcsServer(cfg)
    await server.start()
    client = Wcs(cfg, server)
    try:
        yield client
    finally:
        await client.close()
        await server.stop()


@pytest.fixture
async def wcs(deployment: Config) -> AsyncIterator[Wcs]:
    """An in-process WCS on ephemeral loopback ports."""
    async with running_wcs(deployment) as client:
        yield client


@pytest.fixture
def serve(deployment: Config) -> Iterator[ServeProcess]:
    """`webconf serve` of the `deployment`, started by the test; it dies with this process
    even when the run is killed (`webconf.deploy.local`)."""
    proc = ServeProcess(deployment.base_dir)
    try:
        yield proc
    finally:
        proc.stop(20)  # SIGTERM, then SIGKILL of its process group after 20 s


async def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")


def reload(cfg: Config) -> Config:
    return load_config(cfg.base_dir)
