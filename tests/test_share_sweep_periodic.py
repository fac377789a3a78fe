"""The periodic share sweep (`wcs.share_sweep_seconds`): a running WCS removes a crash's
leftovers on the share (temp files, blobs without a row) without a restart, but only once
they are older than any upload may be (`sweep_age` of a shared share) on every backend:
this process's own uploads, and on PostgreSQL other nodes', are in flight while it runs.
A round that fails (the database lost) is logged once and the sweep goes on."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from conferencing.share import TMP_DIR, WRITE_BUFFER, FileShare, sweep_age
from webconf.deploy.config import Config, ConfigError, load_config
from webconf.deploy.init import init_deployment
from webconf.deploy.local import free_port

from .conftest import TENANTS, running_wcs, wait_for
from .tcp_relay import TcpRelay
from .test_share_nodes import age, read, stale_leftovers

INTERVAL = 0.1
"""Seconds between two sweeps here (an hour by default)."""


def sweep_events(caplog: pytest.LogCaptureFixture, event: str) -> list[dict[str, object]]:
    """The WCS's JSON log lines of `event`, in order."""
    found = []
    for record in caplog.records:
        if record.name != "webconf.wcs":
            continue
        try:
            line = json.loads(record.getMessage())
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("event") == event:
            found.append(line)
    return found


def blob_files(cfg: Config) -> set[Path]:
    return {p for p in cfg.share_dir.rglob("*")
            if p.is_file() and TMP_DIR not in p.relative_to(cfg.share_dir).parts}


async def test_a_running_wcs_sweeps_old_leftovers_and_spares_uploads_in_flight(
        deployment: Config, caplog: pytest.LogCaptureFixture) -> None:
    cfg = deployment
    cfg.wcs.share_sweep_seconds = INTERVAL
    min_age = sweep_age(cfg.wcs.upload_deadline_seconds, shared=True)
    caplog.set_level(logging.INFO, logger="webconf.wcs")
    async with running_wcs(cfg) as wcs:
        assert wcs.server is not None and wcs.server.sweep_task is not None
        alice = await wcs.admit("SWP1", "alice@contoso.example", role="organizer")
        status, body = await wcs.upload(alice, b"an item with a row", name="kept.txt")
        assert status == 201, body
        [kept] = blob_files(cfg)
        age(kept, min_age + 3600)  # old, but referenced: never swept

        # Uploads in flight (of this process, or of another node on the same share).
        writer = FileShare(cfg.share_dir)
        filling = await writer.create()  # a temp file being filled right now
        first = os.urandom(WRITE_BUFFER + 17)
        await filling.write(first)
        slow = await writer.create()  # a slow client's, last written a while ago
        await slow.write(b"slow")
        slow_temp = cfg.share_dir / TMP_DIR / f"{slow.blob_id}.part"
        age(slow_temp, cfg.wcs.upload_deadline_seconds / 2)
        renamed = await writer.create()  # renamed into place, its row not committed yet
        await renamed.write(b"renamed")
        await renamed.commit()
        # A crash's leftovers, made after the startup sweep: only a periodic one finds them.
        stale_temp, stale_blob = stale_leftovers(cfg.share_dir, min_age)

        await wait_for(lambda: not stale_temp.exists() and not stale_blob.exists(),
                       timeout=15)
        await asyncio.sleep(3 * INTERVAL)  # a few more rounds: nothing else goes
        assert (cfg.share_dir / TMP_DIR / f"{filling.blob_id}.part").exists()
        assert slow_temp.exists()
        assert await read(writer, renamed.blob_id) == b"renamed"
        assert kept.exists()
        item = body["item"]
        async with wcs.http.get(f"{wcs.items_url('SWP1')}/{item['id']}/content",
                                headers=alice.headers) as resp:
            assert resp.status == 200 and len(await resp.read()) == item["ciphertext_size"]
        rest = os.urandom(1000)
        await filling.write(rest)  # the upload in flight goes on and commits
        await filling.commit()
        assert await read(writer, filling.blob_id) == first + rest
        await slow.abort()
        task = wcs.server.sweep_task
    assert task.done() and task.cancelled()  # stop() ended it
    assert sweep_events(caplog, "share.sweep") == [
        {"event": "share.sweep", "temp": 1, "orphan": 1}]  # one line, for the one round


async def test_the_sweep_is_off_at_zero(deployment: Config) -> None:
    cfg = deployment
    cfg.wcs.share_sweep_seconds = 0
    async with running_wcs(cfg) as wcs:
        assert wcs.server is not None and wcs.server.sweep_task is None


@pytest.mark.sqlite_only
def test_a_negative_interval_is_refused(deployment: Config) -> None:
    assert load_config(deployment.base_dir, env={}).wcs.share_sweep_seconds == 3600
    with pytest.raises(ConfigError, match="wcs.share_sweep_seconds"):
        load_config(deployment.base_dir, env={"WEBCONF_WCS_SHARE_SWEEP_SECONDS": "-1"})


# -- a database outage ------------------------------------------------------------------------

async def test_the_sweep_survives_a_database_outage(tmp_path: Path, pg_url: str,
                                                    relay: TcpRelay,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    cfg = init_deployment(tmp_path / "dep", https_port=free_port(), internal_port=free_port(),
                          sip_port=free_port(), tenants=TENANTS, database=pg_url)
    cfg.store.url = relay.url_for(pg_url)  # the WCS reaches the database through the relay
    cfg.wcs.share_sweep_seconds = INTERVAL
    min_age = sweep_age(cfg.wcs.upload_deadline_seconds, shared=True)
    caplog.set_level(logging.INFO, logger="webconf.wcs")
    async with running_wcs(cfg) as wcs:
        assert wcs.server is not None
        task = wcs.server.sweep_task
        assert task is not None
        await asyncio.to_thread(relay.cut)
        await wait_for(lambda: sweep_events(caplog, "share.sweep_failed"), timeout=30)
        await asyncio.sleep(10 * INTERVAL)  # rounds that fail again: no more lines
        assert len(sweep_events(caplog, "share.sweep_failed")) == 1
        assert not task.done()

        await asyncio.to_thread(relay.reopen)
        stale_temp, stale_blob = stale_leftovers(cfg.share_dir, min_age)
        await wait_for(lambda: not stale_temp.exists() and not stale_blob.exists(),
                       timeout=30)
        assert not task.done()
    [resumed] = sweep_events(caplog, "share.sweep_resumed")
    assert isinstance(resumed["failed_seconds"], float)
    assert sweep_events(caplog, "share.sweep") == [
        {"event": "share.sweep", "temp": 1, "orphan": 1}]
    failed = sweep_events(caplog, "share.sweep_failed")
    assert len(failed) == 1 and failed[0]["error"]
