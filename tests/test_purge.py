"""Tenant purge (conferencing/purge.py, docs/protocol.md §8.5): `webconf tenant purge` as a
real subprocess beside a serving WCS: keys first, then blobs; conferences ended and cookies
refused; the other tenant untouched; killed with SIGKILL mid-way and rerun."""

from __future__ import annotations

import asyncio

from conferencing.store.keyrows import key_rows

from .conftest import Wcs
from .keytools import (
    audit,
    item_versions,
    key_versions,
    kill_after,
    plaintext,
    run_cli,
    share_files,
    start_cli,
)
from .test_channel import connect, expect_close, recv_type
from .test_rotation import CONTOSO, FABRIKAM, assert_all_decrypt, share_some


async def status_of(wcs: Wcs, url: str, headers: dict[str, str]) -> int:
    async with wcs.http.get(url, headers=headers) as resp:
        return resp.status


async def eventually(wcs: Wcs, url: str, headers: dict[str, str], status: int) -> None:
    """`url` answers `status` within the event feed's poll (another process wrote the end)."""
    last: list[int] = []

    async def check() -> bool:
        last.append(await status_of(wcs, url, headers))
        return last[-1] == status

    for _ in range(50):
        if await check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} answered {last[-1]}, not {status}")


async def test_purge_refuses_without_yes(wcs: Wcs) -> None:
    alice = await wcs.admit("P0", f"alice@{CONTOSO}", role="organizer")
    views = await share_some(wcs, alice, 1)
    rc, _, err = await run_cli("tenant", "purge", str(wcs.cfg.base_dir), CONTOSO)
    assert rc == 2 and "--yes" in err
    await assert_all_decrypt(wcs, alice, views)
    assert audit(wcs.cfg, "tenant.purge") == []


async def test_purge_shreds_one_tenant_and_leaves_the_other(wcs: Wcs) -> None:
    cfg, store = wcs.cfg, wcs.server.service.store  # type: ignore[union-attr]
    alice = await wcs.admit("P1", f"alice@{CONTOSO}", role="organizer")
    carol = await wcs.admit("P1", f"carol@{CONTOSO}", organizer=f"alice@{CONTOSO}")
    dave = await wcs.admit("P2", f"dave@{CONTOSO}", role="organizer")
    bob = await wcs.admit("P3", f"bob@{FABRIKAM}", role="organizer")
    mine = {**await share_some(wcs, alice, 3), **await share_some(wcs, dave, 1, start=5)}
    theirs = await share_some(wcs, bob, 2, start=7)
    their_blobs = {k: v for k, v in share_files(cfg).items()}
    assert len(their_blobs) == 6
    ws, _ = await connect(wcs, carol)
    try:
        rc, out, err = await run_cli("tenant", "purge", str(cfg.base_dir), CONTOSO, "--yes")
        assert rc == 0, err
        assert "4 item keys and 1 tenant keys destroyed" in out
        assert (await recv_type(ws, "conference.ended"))["type"] == "conference.ended"
        assert await expect_close(ws) == 1000
    finally:
        await ws.close()
    # Keys and blobs of contoso are gone; fabrikam's are all there and still decrypt.
    assert await item_versions(store, CONTOSO) == {}
    assert await key_versions(store, CONTOSO) == {}
    left = share_files(cfg)
    assert len(left) == 2 and set(left.items()) <= set(their_blobs.items())
    await assert_all_decrypt(wcs, bob, theirs)
    # Every contoso cookie is refused.
    view = next(iter(mine.values()))
    for who in (alice, carol):
        await eventually(wcs, str(view["key_url"]), who.headers, 401)
    for who in (alice, carol, dave):
        await eventually(wcs, wcs.items_url(who.conference), who.headers, 401)
    records = audit(cfg, "tenant.purge")
    assert [r["phase"] for r in records] == ["start", "finish"]
    assert (records[1]["items"], records[1]["item_keys"], records[1]["tenant_keys"],
            records[1]["conferences"], records[1]["participants"]) == (4, 4, 1, 2, 3)

    # A rerun finds nothing to do.
    rc, out, err = await run_cli("tenant", "purge", str(cfg.base_dir), CONTOSO, "--yes")
    assert rc == 0 and "0 item keys and 0 tenant keys destroyed" in out, err

    # Still served: the next join starts the tenant afresh, under a new key version.
    again = await wcs.admit("P1", f"alice@{CONTOSO}", role="organizer")
    assert await status_of(wcs, wcs.items_url(again.conference), again.headers) == 200
    fresh = await share_some(wcs, again, 1, start=9)
    assert await key_versions(store, CONTOSO) == {2: 1}
    await assert_all_decrypt(wcs, again, fresh)


async def test_purge_killed_mid_way_is_finished_by_a_rerun(wcs: Wcs) -> None:
    cfg, store = wcs.cfg, wcs.server.service.store  # type: ignore[union-attr]
    alice = await wcs.admit("Q1", f"alice@{CONTOSO}", role="organizer")
    bob = await wcs.admit("Q2", f"bob@{FABRIKAM}", role="organizer")
    mine = await share_some(wcs, alice, 4)
    theirs = await share_some(wcs, bob, 1, start=6)
    proc = await start_cli("tenant", "purge", str(cfg.base_dir), CONTOSO, "--yes",
                           "--batch-size", "1", "--pause-after-batch", "30")
    await kill_after(proc, "1 blobs deleted")
    # Killed after the shred: no key of contoso exists, three blobs remain.
    keys = await key_rows(store, CONTOSO)
    assert keys is not None and keys.rows == []
    assert len(await item_versions(store, CONTOSO)) == 3
    assert len(share_files(cfg)) == 4
    wcs.server.service.keyring.forget()  # type: ignore[union-attr]
    view = next(iter(mine.values()))
    # The key is gone at once (503, or 404 for an item whose row went); the cookie is
    # refused once this node has read the end from the log (a poll, at most).
    assert await status_of(wcs, str(view["key_url"]), alice.headers) in (401, 404, 503)
    await eventually(wcs, str(view["key_url"]), alice.headers, 401)

    rc, out, err = await run_cli("tenant", "purge", str(cfg.base_dir), CONTOSO, "--yes")
    assert rc == 0, err
    assert await item_versions(store, CONTOSO) == {}
    assert len(share_files(cfg)) == 1
    await assert_all_decrypt(wcs, bob, theirs)
    assert [r["phase"] for r in audit(cfg, "tenant.purge")] == ["start", "start", "finish"]
    assert audit(cfg, "tenant.purge")[-1]["items"] == 3


async def test_a_shredded_item_never_decrypts_even_with_a_cached_tenant_key(
        wcs: Wcs) -> None:
    """The DEK is destroyed, not hidden: a node still holding the tenant key and the cookie
    in its caches has nothing to unwrap between the shred and the end of the purge."""
    alice = await wcs.admit("Z1", f"alice@{CONTOSO}", role="organizer")
    mine = await share_some(wcs, alice, 3)
    for data, view in mine.items():  # warm both caches
        assert await plaintext(wcs, alice, view) == data
    proc = await start_cli("tenant", "purge", str(wcs.cfg.base_dir), CONTOSO, "--yes",
                           "--batch-size", "1", "--pause-after-batch", "30")
    await kill_after(proc, "1 blobs deleted")
    for view in mine.values():
        assert await status_of(wcs, str(view["key_url"]), alice.headers) in (401, 404)
    rc, _, err = await run_cli("tenant", "purge", str(wcs.cfg.base_dir), CONTOSO, "--yes")
    assert rc == 0, err
    assert share_files(wcs.cfg) == {}
