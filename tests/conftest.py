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

from conferencing.app import WcsServer
from webconf.deploy import tls
from webconf.deploy.config import Config, load_config
from webconf.deploy.init import init_deployment
from webconf.deploy.local import ServeProcess, free_port

TENANTS = ["contoso.example", "fabrikam.example"]
VECTORS = Path(os.environ.get("WEBCONF_VECTORS") or Path(__file__).resolve().parent / "vectors")


@pytest.fixture
def deployment(tmp_path: Path) -> Config:
    """A fresh deployment directory with free ports reserved for a subprocess server."""
    return init_deployment(tmp_path / "dep", https_port=free_port(), internal_port=free_port(),
                           sip_port=free_port(), tenants=TENANTS)


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
