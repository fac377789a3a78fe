"""The `revoked_cookies` table stays bounded, and purging it never revives a cookie.

A real in-process WCS over real TLS, configured the way an operator would (environment
overrides of `webconf.toml`): cookies live 4 s, the verifier allows 1 s of clock skew, the
purge runs every 0.5 s. Rounds of participants are admitted and revoked; the table must drop
back as their cookies expire, while every revoked cookie is refused (401) throughout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import func, select

from conferencing.store.schema import revoked_cookies
from webconf.deploy.config import Config, load_config

from .conftest import Participant, Wcs, running_wcs

TTL = 4
LEEWAY = 1
PURGE_EVERY = 0.5
ROUNDS = 7
PER_ROUND = 15
ROUND_GAP = 2.0
ORGANIZER = "alice@contoso.example"
CONFERENCE = "PURGE1"


@pytest.fixture
async def short_lived_wcs(deployment: Config) -> AsyncIterator[Wcs]:
    cfg = load_config(deployment.base_dir, env={
        "WEBCONF_WCS_COOKIE_TTL_SECONDS": str(TTL),
        "WEBCONF_WCS_COOKIE_LEEWAY_SECONDS": str(LEEWAY),
        "WEBCONF_WCS_REVOCATION_PURGE_SECONDS": str(PURGE_EVERY),
    })
    assert cfg.wcs.revocation_purge_seconds == PURGE_EVERY
    async with running_wcs(cfg) as client:
        yield client


async def revoked_rows(wcs: Wcs) -> int:
    assert wcs.server is not None and wcs.server.service is not None
    async with wcs.server.service.store.engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(revoked_cookies)) or 0)


async def refusal(wcs: Wcs, who: Participant) -> tuple[int, str]:
    async with wcs.http.get(wcs.items_url(who.conference), headers=who.headers) as resp:
        body = await resp.json()
        return resp.status, body.get("error", {}).get("message", "")


async def test_revoked_cookies_table_stays_bounded(short_lived_wcs: Wcs) -> None:
    wcs = short_lived_wcs
    revoked: list[tuple[float, Participant]] = []
    peak = 0
    for _ in range(ROUNDS):
        organizer = await wcs.admit(CONFERENCE, ORGANIZER)
        batch = [await wcs.admit(CONFERENCE, f"user{len(revoked) + i}@contoso.example",
                                 organizer=ORGANIZER) for i in range(PER_ROUND)]
        revoked_at = time.time()
        for who in batch:
            assert await wcs.revoke(who) == 204
        revoked += [(revoked_at, who) for who in batch]
        assert await refusal(wcs, organizer) == (200, "")  # the 401s below are not spurious
        # Several purge rounds pass while these cookies are still within their lifetime:
        # their rows stay and the cookies are refused as revoked.
        await asyncio.sleep(2 * PURGE_EVERY)
        for who in batch:
            assert await refusal(wcs, who) == (401, "cookie revoked")
        # Every cookie revoked so far is refused, whether its row is still there or not.
        for _, who in revoked:
            status, message = await refusal(wcs, who)
            assert status == 401 and message in ("cookie revoked", "token expired"), message
        rows = await revoked_rows(wcs)
        peak = max(peak, rows)
        await asyncio.sleep(ROUND_GAP - 2 * PURGE_EVERY)
    # A row lives at most TTL + 2 x LEEWAY (+1 s of exp rounding, + one purge interval)
    # after its admission: 7.5 s, so never more than four rounds' worth at once (without
    # the purge, the last count would hold all seven).
    assert peak <= 4 * PER_ROUND, peak
    await asyncio.sleep(TTL + 2 * LEEWAY + 1 + 2 * PURGE_EVERY)
    assert await revoked_rows(wcs) == 0
    for _, who in revoked:
        assert await refusal(wcs, who) == (401, "token expired")
    async with wcs.http.get(f"{wcs.url}/metrics") as resp:
        text = await resp.text()
    assert f"webconf_revocations_purged_total {float(ROUNDS * PER_ROUND)}" in text
