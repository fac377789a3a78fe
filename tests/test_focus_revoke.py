"""Revocations are retried until the WCS confirms them (a leave never leaves a live cookie)."""

from __future__ import annotations

import asyncio

from focus.core import Revoke
from focus.server import FocusServer
from focus.wcs_client import WcsUnavailable
from webconf.deploy import keys
from webconf.deploy.config import Config


class FlakyWcs:
    """Stands in for the WCS client only to count calls; the WCS itself is tested for real
    elsewhere. Fails the first `failures` calls per participant as if the WCS were down."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.revoked: list[str] = []

    async def revoke(self, conference_id: str, participant_id: str) -> bool:
        n = self.calls[participant_id] = self.calls.get(participant_id, 0) + 1
        if n <= self.failures:
            raise WcsUnavailable("down")
        self.revoked.append(participant_id)
        return True


async def test_revoke_retries_until_confirmed_and_stop_waits(deployment: Config) -> None:
    deployment.focus.sip_port = 0
    wcs = FlakyWcs(failures=3)
    server = FocusServer(deployment, None, wcs, keys.load_nonce_secret(deployment))  # type: ignore[arg-type]
    await server.start()
    try:
        server._run([Revoke("K1", f"p{i}", "bye") for i in range(40)])
        async with asyncio.timeout(20):
            await server._revokes.join()
        assert sorted(wcs.revoked) == sorted(f"p{i}" for i in range(40))
        assert all(n == 4 for n in wcs.calls.values())
    finally:
        await server.stop()
