"""Key rotation (conferencing/rotation.py, docs/protocol.md §8.5): `webconf tenant rotate`
and `webconf keys rotate-root` run as real subprocesses beside a serving WCS, killed with
SIGKILL mid-way and rerun; every item is downloaded and decrypted as a client does."""

from __future__ import annotations

import asyncio
import os
import tomllib

from conferencing.crypto import keywrap
from conferencing.store import ItemRow
from conferencing.store.keyrows import add_tenant_key, retire_unused_versions
from webconf.deploy.config import Config

from .conftest import Participant, Wcs, reload, running_wcs
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

CONTOSO = "contoso.example"
FABRIKAM = "fabrikam.example"


def body(i: int) -> bytes:
    """Sizes around the 16 KiB chunk edge and beyond."""
    return bytes([i % 251]) * (1000 + i * 9000)


async def share_some(wcs: Wcs, who: Participant, n: int,
                     start: int = 0) -> dict[bytes, dict[str, object]]:
    out = {}
    for i in range(start, start + n):
        status, view = await wcs.upload(who, body(i), name=f"deck-{i}.pdf")
        assert status == 201, view
        out[body(i)] = view["item"]
    return out


async def assert_all_decrypt(wcs: Wcs, who: Participant,
                             views: dict[bytes, dict[str, object]]) -> None:
    for data, view in views.items():
        assert await plaintext(wcs, who, view) == data


async def test_rotate_rewraps_every_item_key_and_no_blob(wcs: Wcs) -> None:
    cfg, store = wcs.cfg, wcs.server.service.store  # type: ignore[union-attr]
    alice = await wcs.admit("R1", f"alice@{CONTOSO}", role="organizer")
    bob = await wcs.admit("R2", f"bob@{FABRIKAM}", role="organizer")
    views = await share_some(wcs, alice, 5)
    other = await share_some(wcs, bob, 2)
    blobs = share_files(cfg)
    assert len(blobs) == 7
    other_versions = await item_versions(store, FABRIKAM)

    rc, out, err = await run_cli("tenant", "rotate", str(cfg.base_dir), CONTOSO,
                                 "--batch-size", "2")
    assert rc == 0, err
    assert "5 item keys rewrapped" in out
    assert share_files(cfg) == blobs  # no blob re-encrypted, none moved
    assert set((await item_versions(store, CONTOSO)).values()) == {2}
    assert await key_versions(store, CONTOSO) == {2: 1}  # version 1 retired
    assert await item_versions(store, FABRIKAM) == other_versions
    await assert_all_decrypt(wcs, alice, views)
    await assert_all_decrypt(wcs, bob, other)
    newer = await share_some(wcs, alice, 1, start=9)  # a new upload: the new version
    assert set((await item_versions(store, CONTOSO)).values()) == {2}
    await assert_all_decrypt(wcs, alice, newer)
    rotate = audit(cfg, "key.rotate")
    assert [(r["tenant"], r["from_version"], r["to_version"], r["items"]) for r in rotate] == [
        (CONTOSO, 1, 2, 5)]
    assert [(r["tenant"], r["version"]) for r in audit(cfg, "key.retire")] == [(CONTOSO, 1)]

    rc, out, _ = await run_cli("tenant", "rotate", str(cfg.base_dir), CONTOSO)
    assert rc == 0 and "6 item keys rewrapped under version 3" in out
    assert await key_versions(store, CONTOSO) == {3: 1}
    await assert_all_decrypt(wcs, alice, {**views, **newer})


async def test_rotation_killed_mid_way_is_finished_by_a_rerun(wcs: Wcs) -> None:
    cfg, store = wcs.cfg, wcs.server.service.store  # type: ignore[union-attr]
    alice = await wcs.admit("K1", f"alice@{CONTOSO}", role="organizer")
    views = await share_some(wcs, alice, 6)
    blobs = share_files(cfg)
    proc = await start_cli("tenant", "rotate", str(cfg.base_dir), CONTOSO, "--batch-size",
                           "2", "--pause-after-batch", "30")
    await kill_after(proc, "2 item keys rewrapped")

    # Half-way: both versions in use, and every item still reads (cold caches too).
    assert sorted((await item_versions(store, CONTOSO)).values()) == [1, 1, 1, 1, 2, 2]
    assert await key_versions(store, CONTOSO) == {1: 1, 2: 1}
    wcs.server.service.keyring.forget()  # type: ignore[union-attr]
    await assert_all_decrypt(wcs, alice, views)
    during = await share_some(wcs, alice, 1, start=7)  # new uploads: the new version at once
    assert (await item_versions(store, CONTOSO))[str(next(iter(during.values()))["id"])] == 2

    rc, out, err = await run_cli("tenant", "rotate", str(cfg.base_dir), CONTOSO)
    assert rc == 0, err
    assert "finishing the rotation to key version 2" in out
    assert set((await item_versions(store, CONTOSO)).values()) == {2}
    assert await key_versions(store, CONTOSO) == {2: 1}
    assert {k: v for k, v in share_files(cfg).items() if k in blobs} == blobs
    wcs.server.service.keyring.forget()  # type: ignore[union-attr]
    await assert_all_decrypt(wcs, alice, {**views, **during})
    assert [r["version"] for r in audit(cfg, "key.retire")] == [1]


async def test_uploads_racing_a_rotation_are_not_left_behind(wcs: Wcs) -> None:
    cfg, store = wcs.cfg, wcs.server.service.store  # type: ignore[union-attr]
    alice = await wcs.admit("U1", f"alice@{CONTOSO}", role="organizer")
    views = await share_some(wcs, alice, 4)
    proc = await start_cli("tenant", "rotate", str(cfg.base_dir), CONTOSO, "--batch-size",
                           "1", "--pause-after-batch", "0.05")
    during: dict[bytes, dict[str, object]] = {}
    i = 20
    while proc.returncode is None:
        during.update(await share_some(wcs, alice, 1, start=i))
        i += 1
        await asyncio.sleep(0)
        try:
            await asyncio.wait_for(proc.wait(), 0.01)
        except TimeoutError:
            pass
    assert proc.returncode == 0
    assert len(during) >= 2
    current = max(await key_versions(store, CONTOSO))
    assert set((await item_versions(store, CONTOSO)).values()) == {current}
    assert list(await key_versions(store, CONTOSO)) == [current]
    wcs.server.service.keyring.forget()  # type: ignore[union-attr]
    await assert_all_decrypt(wcs, alice, {**views, **during})


async def test_a_commit_under_a_retired_version_is_refused_then_rewrapped(wcs: Wcs) -> None:
    """The store refuses an item whose DEK names a version retired meanwhile (the race a
    rotation's retire step has with an upload that read the current version just before it
    changed; the service then wraps the DEK again under the current one)."""
    service = wcs.server.service  # type: ignore[union-attr]
    store = service.store
    alice = await wcs.admit("V1", f"alice@{CONTOSO}", role="organizer")
    first = await share_some(wcs, alice, 1)
    old_key, old_version = await service.keyring.current(CONTOSO)
    # A rotation made version 2 current and rewrapped nothing yet; retire v1 after
    # rewrapping the one item under v2.
    tik = keywrap.new_key()
    root = service.keyring.root_keys[1]
    assert await add_tenant_key(store, CONTOSO, 2, keywrap.wrap_tenant_key(
        root, tik, tenant=CONTOSO, tenant_key_version=2, root_key_version=1), 1, 0.0)
    rc, _, err = await run_cli("tenant", "rotate", str(wcs.cfg.base_dir), CONTOSO)
    assert rc == 0, err
    assert await retire_unused_versions(store, CONTOSO) == []
    dek = keywrap.new_key()
    claims = service.cookies.verify(alice.cookie, conference_id=alice.conference)
    row = ItemRow(id="stale0000001", conference_id=alice.conference, tenant=CONTOSO,
                  presenter_pid=alice.pid, presenter=alice.user, blob_id="0" * 32,
                  wrapped_dek=keywrap.wrap_dek(old_key, dek, tenant=CONTOSO,
                                               conference_id=alice.conference,
                                               item_id="stale0000001",
                                               tenant_key_version=old_version),
                  tenant_key_version=old_version, sealed_name=b"x", sealed_content_type=b"x",
                  sealed_sha256=None, plaintext_size=0, ciphertext_size=0, created_at=0.0)
    assert await store.commit_item(row, jti=claims.jti) == "key_retired"
    assert await store.item(alice.conference, "stale0000001") is None
    service.keyring.forget()
    views = await share_some(wcs, alice, 1, start=3)
    assert set((await item_versions(store, CONTOSO)).values()) == {2}
    await assert_all_decrypt(wcs, alice, {**first, **views})


async def test_an_upload_whose_version_is_retired_before_its_commit_is_rewrapped(
        wcs: Wcs) -> None:
    """The real race, made certain: a whole rotation (new version, rewrap, retire) runs
    between an upload's read of the current key and its commit. The upload must commit
    under the new version, not leave an item whose key version is gone."""
    service = wcs.server.service  # type: ignore[union-attr]
    alice = await wcs.admit("W1", f"alice@{CONTOSO}", role="organizer")
    before = await share_some(wcs, alice, 1)
    read_current = service.keyring.current
    rotations: list[int] = []

    async def current_then_rotate(tenant: str) -> tuple[bytes, int]:
        key = await read_current(tenant)
        if not rotations:  # only the first read: the retry must see the new version
            rc, _, err = await run_cli("tenant", "rotate", str(wcs.cfg.base_dir), tenant)
            rotations.append(rc)
            assert rc == 0, err
        return key

    service.keyring.current = current_then_rotate
    try:
        during = await share_some(wcs, alice, 1, start=2)
    finally:
        service.keyring.current = read_current
    assert rotations == [0]
    assert set((await item_versions(service.store, CONTOSO)).values()) == {2}
    assert await key_versions(service.store, CONTOSO) == {2: 1}
    service.keyring.forget()
    await assert_all_decrypt(wcs, alice, {**before, **during})


async def test_a_download_whose_version_is_retired_after_its_read_still_decrypts(
        wcs: Wcs) -> None:
    """A whole rotation runs between a download's read of the item row (version 1) and
    its unwrap of that version, with a cold cache: the service reads the row again."""
    service = wcs.server.service  # type: ignore[union-attr]
    alice = await wcs.admit("D1", f"alice@{CONTOSO}", role="organizer")
    mine = await share_some(wcs, alice, 1)
    read_version = service.keyring.get
    rotations: list[int] = []

    async def rotate_then_get(tenant: str, version: int) -> bytes:
        if not rotations:
            rc, _, err = await run_cli("tenant", "rotate", str(wcs.cfg.base_dir), tenant)
            rotations.append(rc)
            assert rc == 0, err
        return await read_version(tenant, version)

    service.keyring.forget()
    service.keyring.get = rotate_then_get
    try:
        await assert_all_decrypt(wcs, alice, mine)
    finally:
        service.keyring.get = read_version
    assert rotations == [0]
    assert await key_versions(service.store, CONTOSO) == {2: 1}


async def test_rotate_refuses_a_tenant_without_a_key(deployment: Config) -> None:
    rc, _, err = await run_cli("tenant", "rotate", str(deployment.base_dir), CONTOSO)
    assert rc == 1 and "has no key yet" in err


# -- the root key ---------------------------------------------------------------------------

def configured_root_version(cfg: Config) -> int:
    raw = tomllib.loads((cfg.base_dir / "webconf.toml").read_text())
    return int(raw["keys"]["root_key_version"])


async def test_rotate_root_while_serving_and_killed_mid_way(wcs: Wcs) -> None:
    cfg, store = wcs.cfg, wcs.server.service.store  # type: ignore[union-attr]
    service = wcs.server.service  # type: ignore[union-attr]
    alice = await wcs.admit("T1", f"alice@{CONTOSO}", role="organizer")
    bob = await wcs.admit("T2", f"bob@{FABRIKAM}", role="organizer")
    mine, theirs = await share_some(wcs, alice, 2), await share_some(wcs, bob, 2, start=4)
    rc, _, err = await run_cli("tenant", "rotate", str(cfg.base_dir), CONTOSO)
    assert rc == 0, err  # contoso now has key version 2 (one row); fabrikam version 1
    blobs = share_files(cfg)

    proc = await start_cli("keys", "rotate-root", str(cfg.base_dir), "--batch-size", "1",
                           "--pause-after-batch", "30")
    await kill_after(proc, "1 tenant keys rewrapped")
    assert (cfg.keys_dir / "root-v2.key").exists() and (cfg.keys_dir / "root-v1.key").exists()
    assert configured_root_version(cfg) == 2
    assert sorted([*(await key_versions(store, CONTOSO)).values(),
                   *(await key_versions(store, FABRIKAM)).values()]) == [1, 2]
    service.keyring.forget()  # cold caches: the WCS reads root v2 from disk on first use
    await assert_all_decrypt(wcs, alice, mine)
    await assert_all_decrypt(wcs, bob, theirs)

    rc, out, err = await run_cli("keys", "rotate-root", str(cfg.base_dir))
    assert rc == 0, err
    assert "finishing the rotation to root key version 2" in out
    assert not (cfg.keys_dir / "root-v1.key").exists()
    retired = cfg.keys_dir / "retired" / "root-v1.key"
    assert retired.exists() and oct(os.stat(retired).st_mode & 0o777) == "0o600"
    assert await key_versions(store, CONTOSO) == {2: 2}
    assert await key_versions(store, FABRIKAM) == {1: 2}
    assert share_files(cfg) == blobs
    assert [r["root_version"] for r in audit(cfg, "key.retire") if "root_version" in r] == [1]
    assert audit(cfg, "key.rotate_root")[-1]["to_version"] == 2

    # The running WCS (started under root v1, which is now retired) keeps serving.
    service.keyring.forget()
    await assert_all_decrypt(wcs, alice, mine)
    await assert_all_decrypt(wcs, bob, theirs)
    more = await share_some(wcs, alice, 1, start=8)
    await assert_all_decrypt(wcs, alice, more)

    # So does a restarted one, and a new rotation starts from version 2.
    async with running_wcs(reload(cfg)) as again:
        carol = await again.admit("T1", f"alice@{CONTOSO}", role="organizer")
        await assert_all_decrypt(again, carol, {**mine, **more})
    rc, out, err = await run_cli("keys", "rotate-root", str(cfg.base_dir))
    assert rc == 0 and "root key version 3 is current" in out, err
    assert configured_root_version(cfg) == 3
    assert sorted(p.name for p in cfg.keys_dir.glob("root-v*.key")) == ["root-v3.key"]


async def test_a_tenant_created_after_rotate_root_uses_the_new_root(wcs: Wcs) -> None:
    cfg, store = wcs.cfg, wcs.server.service.store  # type: ignore[union-attr]
    alice = await wcs.admit("N1", f"alice@{CONTOSO}", role="organizer")
    rc, _, err = await run_cli("keys", "rotate-root", str(cfg.base_dir))
    assert rc == 0, err
    bob = await wcs.admit("N2", f"bob@{FABRIKAM}", role="organizer")  # a new tenant
    assert await key_versions(store, FABRIKAM) == {1: 2}
    theirs = await share_some(wcs, bob, 1)
    await assert_all_decrypt(wcs, bob, theirs)
    await assert_all_decrypt(wcs, alice, await share_some(wcs, alice, 1))
