"""Customer Key over PKCS#11 (docs/protocol.md §8.4) against SoftHSM2 tokens and a real WCS
over TLS: `webconf tenant customer-key` protects a tenant with two HSM keys, either unwraps,
revoking both makes the tenant's content unreadable within the cache time (503, the other
tenant untouched, the server up), an unreachable HSM falls back to the availability key
(audited) unless the customer revoked, and the database keeps no root-wrapped copy."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from conferencing.audit import AuditLog, read_records
from conferencing.crypto import customer_wrap, keywrap
from conferencing.customer_key import CustomerKeyError, protect_tenant_key_version
from conferencing.keyring import CustomerKeyAccess, TenantKeyring, TenantKeyUnavailable
from conferencing.store import Store
from conferencing.store.customer_keys import customer_key_config, tenant_key_rows
from conferencing.store.schema import customer_keys
from webconf.crypto.cobblestone import Decryptor
from webconf.deploy import keys
from webconf.deploy.config import Config

from .conftest import Participant, Wcs, running_wcs
from .hsm import SoftHsm, softhsm_fixture  # noqa: F401 - the `softhsm` fixture
from .test_wcs_api import b64d

ROOT = Path(__file__).resolve().parents[1]
TENANT, OTHER = "contoso.example", "fabrikam.example"
CACHE = 1.0
MISSING_MODULE = "/nonexistent/libpkcs11-gone.so"


def customer_key(cfg: Config, hsm: SoftHsm, *labels: str, tenant: str = TENANT,
                 pin_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`webconf tenant customer-key` as the operator runs it, in its own process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-m", "webconf", "tenant", "customer-key", str(cfg.base_dir),
            tenant, "--module", hsm.module, "--token", hsm.token,
            "--pin-file", str(pin_file or hsm.pin_file)]
    for label in labels:
        args += ["--key", label]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=env,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def ck_deployment(deployment: Config, softhsm: SoftHsm) -> Config:
    """The deployment allowing SoftHSM2's module, tenant keys cached for 1 s."""
    deployment.keys.hsm_modules = [softhsm.module, MISSING_MODULE]
    deployment.keys.tenant_key_cache_seconds = CACHE
    deployment.write()
    return deployment


@pytest.fixture
async def ck_wcs(ck_deployment: Config) -> AsyncIterator[Wcs]:
    async with running_wcs(ck_deployment) as client:
        yield client


async def readable(wcs: Wcs, who: Participant, item_id: str, data: bytes) -> None:
    """The item's key and blob come through the WCS and decrypt to `data`."""
    base = f"{wcs.items_url(who.conference)}/{item_id}"
    async with wcs.http.get(f"{base}/key", headers=who.headers) as resp:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
    async with wcs.http.get(f"{base}/content", headers=who.headers) as resp:
        assert resp.status == 200
        blob = await resp.read()
    dec = Decryptor(b64d(body["key"]), b64d(body["context"]))
    assert dec.update(blob) + dec.finalize() == data


async def statuses(wcs: Wcs, who: Participant, item_id: str) -> dict[str, Any]:
    """What list, key, content and upload answer: status and error code."""
    base = f"{wcs.items_url(who.conference)}/{item_id}"
    out: dict[str, Any] = {}
    for what, url in (("list", wcs.items_url(who.conference)), ("key", f"{base}/key"),
                      ("content", f"{base}/content")):
        async with wcs.http.get(url, headers=who.headers) as resp:
            body = await resp.json() if resp.status != 200 else {}
            out[what] = (resp.status, body.get("error", {}).get("code"))
    status, body = await wcs.upload(who, b"more slides")
    out["upload"] = (status, body.get("error", {}).get("code"))
    return out


UNAVAILABLE = {what: (503, "tenant_key_unavailable")
               for what in ("list", "key", "content", "upload")}


async def rows_of(cfg: Config, tenant: str = TENANT) -> list[Any]:
    store = await Store.open(cfg.store_url, create=False)
    try:
        return await tenant_key_rows(store, tenant)
    finally:
        await store.close()


def audit(cfg: Config) -> list[dict[str, Any]]:
    return list(read_records(cfg.log_dir / "audit.log"))


async def until(check: Any, timeout: float = 4 * CACHE + 4) -> Any:
    """Poll the async `check` until it returns a truthy value (within the cache time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_two_customer_keys_protect_either_unwraps_both_revoked_is_503(
        ck_wcs: Wcs, softhsm: SoftHsm) -> None:
    wcs, cfg = ck_wcs, ck_wcs.cfg
    alice = await wcs.admit("CK1", f"alice@{TENANT}", role="organizer")
    carol = await wcs.admit("CK2", f"carol@{OTHER}", role="organizer")
    before = os.urandom(70_000)
    status, body = await wcs.upload(alice, before, "before.pdf")
    assert status == 201
    old_item = body["item"]["id"]
    status, body = await wcs.upload(carol, b"other tenant's slides")
    other_item = body["item"]["id"]
    root_wrapped = (await rows_of(cfg))[0]
    assert root_wrapped.wrapped_key is not None and root_wrapped.customer_wraps is None

    softhsm.create_key("ck-primary")
    softhsm.create_key("ck-secondary")
    done = customer_key(cfg, softhsm, "ck-primary", "ck-secondary")
    assert done.returncode == 0, done.stderr
    assert "no copy under the root key remains" in done.stdout

    # The row check: the tenant's key is wrapped by the HSM keys and the availability key
    # only; no root-wrapped copy is left. The other tenant keeps its root wrap.
    (row,) = await rows_of(cfg)
    assert (row.wrapped_key, row.root_key_version) == (None, None)
    wraps = customer_wrap.decode(row.customer_wraps)
    assert [w.label for w in wraps.hsm] == ["ck-primary", "ck-secondary"]
    assert wraps.availability.version == keys.AVAILABILITY_KEY_VERSION
    availability = keys.availability_key_path(cfg)
    assert availability.stat().st_mode & 0o777 == 0o600
    (other_row,) = await rows_of(cfg, OTHER)
    assert other_row.wrapped_key is not None and other_row.customer_wraps is None

    await asyncio.sleep(CACHE + 0.2)  # the WCS's cached key expires: the HSM unwraps now
    await readable(wcs, alice, old_item, before)
    after = os.urandom(20_000)
    status, body = await wcs.upload(alice, after, "after.pdf")
    assert status == 201, body
    new_item = body["item"]["id"]
    await readable(wcs, alice, new_item, after)

    softhsm.destroy_key("ck-primary")  # either key alone unwraps
    await asyncio.sleep(CACHE + 0.2)
    await readable(wcs, alice, old_item, before)
    await readable(wcs, alice, new_item, after)

    softhsm.destroy_key("ck-secondary")  # every customer key gone: revoked
    revoked_at = time.monotonic()
    gone = await until(lambda: _unavailable(wcs, alice, old_item))
    assert gone == UNAVAILABLE, gone
    assert time.monotonic() - revoked_at < CACHE + 1.0  # within the cache time
    await readable(wcs, carol, other_item, b"other tenant's slides")  # the other tenant
    async with wcs.http.get(f"{wcs.url}/metrics") as resp:  # the server is up
        assert resp.status == 200

    records = audit(cfg)
    wrapped = [r for r in records if r["event"] == "key.wrap"]
    assert [(r["tenant"], r["version"], r["customer_keys"]) for r in wrapped] == [
        (TENANT, 1, 2)]
    failed = [r for r in records if r["event"] == "key.unwrap_failed"]
    assert failed and all(r["tenant"] == TENANT for r in failed)
    assert "revoked" in failed[0]["reason"]
    assert not [r for r in records if r["event"] == "key.availability_used"]
    store = await Store.open(cfg.store_url, create=False)
    try:
        config = await customer_key_config(store, TENANT)
    finally:
        await store.close()
    assert config is not None and config.revoked_at is not None
    text = (cfg.log_dir / "audit.log").read_text()
    assert softhsm.pin not in text and softhsm.pin not in done.stdout + done.stderr
    for log_file in cfg.log_dir.glob("*.log"):
        assert softhsm.pin not in log_file.read_text()


async def _unavailable(wcs: Wcs, who: Participant, item_id: str) -> dict[str, Any] | None:
    got = await statuses(wcs, who, item_id)
    return got if got == UNAVAILABLE else None


async def set_config(wcs: Wcs, **values: Any) -> None:
    """Change the tenant's stored HSM settings, as a broken node setup would see them."""
    async with wcs.server.service.store.engine.begin() as conn:  # type: ignore[union-attr]
        await conn.execute(update(customer_keys).where(customer_keys.c.tenant == TENANT)
                           .values(**values))


async def protected_item(wcs: Wcs, softhsm: SoftHsm) -> tuple[Participant, str, bytes]:
    """A tenant item shared before `webconf tenant customer-key` protected the tenant with
    keys `k1` and `k2`."""
    alice = await wcs.admit("CKA", f"alice@{TENANT}", role="organizer")
    data = os.urandom(40_000)
    status, body = await wcs.upload(alice, data)
    assert status == 201
    softhsm.create_key("k1")
    softhsm.create_key("k2")
    done = customer_key(wcs.cfg, softhsm, "k1", "k2")
    assert done.returncode == 0, done.stderr
    return alice, body["item"]["id"], data


@pytest.mark.sqlite_only
@pytest.mark.parametrize("broken", ["pin_file_0644", "wrong_token", "missing_module"])
async def test_an_unreachable_hsm_falls_back_to_the_availability_key(
        ck_wcs: Wcs, softhsm: SoftHsm, broken: str) -> None:
    wcs = ck_wcs
    alice, item, data = await protected_item(wcs, softhsm)
    if broken == "pin_file_0644":
        softhsm.pin_file.chmod(0o644)
    elif broken == "wrong_token":
        await set_config(wcs, token="no-such-token")
    else:
        await set_config(wcs, module=MISSING_MODULE)
    await asyncio.sleep(CACHE + 0.2)
    await readable(wcs, alice, item, data)  # served, through the availability key
    status, _ = await wcs.upload(alice, b"during the outage")
    assert status == 201
    records = audit(wcs.cfg)
    used = [r for r in records if r["event"] == "key.availability_used"]
    assert used and {(r["tenant"], r["version"]) for r in used} == {(TENANT, 1)}
    assert "HSM unreachable" in used[0]["reason"] or "keys.hsm_modules" in used[0]["reason"]
    assert not [r for r in records if r["event"] == "key.unwrap_failed"]
    assert softhsm.pin not in (wcs.cfg.log_dir / "audit.log").read_text()


@pytest.mark.sqlite_only
async def test_a_revoked_customer_key_is_never_worked_around(
        ck_wcs: Wcs, softhsm: SoftHsm) -> None:
    """Disabled keys (CKA_DECRYPT false) → 503; the HSM then unreachable → still 503, the
    availability key refused; the customer re-enabling a key → readable again."""
    wcs = ck_wcs
    alice, item, data = await protected_item(wcs, softhsm)
    softhsm.set_decrypt("k1", False)
    softhsm.set_decrypt("k2", False)
    gone = await until(lambda: _unavailable(wcs, alice, item))
    assert gone == UNAVAILABLE, gone
    await set_config(wcs, token="no-such-token")  # an outage after the revocation
    await asyncio.sleep(CACHE + 0.2)
    assert await statuses(wcs, alice, item) == UNAVAILABLE
    records = audit(wcs.cfg)
    assert not [r for r in records if r["event"] == "key.availability_used"]
    reasons = [r["reason"] for r in records if r["event"] == "key.unwrap_failed"]
    assert any("decryption disabled" in r for r in reasons), reasons
    assert any("availability key is not used" in r for r in reasons), reasons

    await set_config(wcs, token=softhsm.token)
    softhsm.set_decrypt("k2", True)  # the customer restores access
    await asyncio.sleep(CACHE + 0.2)
    await readable(wcs, alice, item, data)
    config = await customer_key_config(wcs.server.service.store, TENANT)  # type: ignore[union-attr]
    assert config is not None and config.revoked_at is None


@pytest.mark.sqlite_only
async def test_refusals_change_nothing(ck_deployment: Config, softhsm: SoftHsm) -> None:
    cfg = ck_deployment
    async with running_wcs(cfg) as wcs:  # the tenant exists, its key under the root key
        await wcs.admit("CKR", f"alice@{TENANT}", role="organizer")
    softhsm.create_key("good")
    softhsm.create_key("leaky", extractable=True)
    softhsm.pin_file.chmod(0o644)
    done = customer_key(cfg, softhsm, "good")
    assert done.returncode == 2 and "0644" in done.stderr, done.stderr
    assert softhsm.pin not in done.stdout + done.stderr
    softhsm.pin_file.chmod(0o600)
    for labels, code, says in ((["leaky"], 1, "extractable"), (["absent"], 1, "no key"),
                               (["good", "good"], 2, "different")):
        done = customer_key(cfg, softhsm, *labels)
        assert done.returncode == code and says in done.stderr, (labels, done.stderr)
    done = customer_key(cfg, softhsm, "good", tenant="unknown.example")
    assert done.returncode == 2 and "not a tenant" in done.stderr
    cfg.keys.hsm_modules = []
    cfg.write()
    done = customer_key(cfg, softhsm, "good")
    assert done.returncode == 2 and "keys.hsm_modules" in done.stderr
    (row,) = await rows_of(cfg)
    assert row.wrapped_key is not None and row.customer_wraps is None
    assert not keys.availability_key_path(cfg).exists()
    assert not [r for r in audit(cfg) if r["event"] == "key.wrap"]


async def test_a_new_tenant_and_a_new_version_are_protected_from_the_start(
        ck_deployment: Config, softhsm: SoftHsm) -> None:
    """The CLI on a tenant not seen yet creates its key protected (no root wrap, ever);
    rerun with other keys it rewraps from the current ones; protect_tenant_key_version
    stores a rotation's new version the same way (and declines a service-managed tenant)."""
    cfg = ck_deployment
    for label in ("a1", "b1", "b2"):
        softhsm.create_key(label)
    done = customer_key(cfg, softhsm, "a1")
    assert done.returncode == 0, done.stderr
    (row,) = await rows_of(cfg)
    assert (row.version, row.wrapped_key, row.root_key_version) == (1, None, None)
    assert [r["event"] for r in audit(cfg)] == ["key.create", "key.wrap"]
    done = customer_key(cfg, softhsm, "b1", "b2")  # moves to two other keys
    assert done.returncode == 0, done.stderr
    (row,) = await rows_of(cfg)
    assert row.customer_wraps is not None
    assert [w.label for w in customer_wrap.decode(row.customer_wraps).hsm] == ["b1", "b2"]
    softhsm.destroy_key("a1")  # the old key no longer matters

    store = await Store.open(cfg.store_url, create=False)
    log = AuditLog.for_deployment(cfg.log_dir, threaded=False)
    keyring = TenantKeyring(store, keys.load_root_keys(cfg), cfg.keys.root_key_version,
                            cache_seconds=CACHE, audit=log,
                            customer=CustomerKeyAccess.from_config(cfg))
    try:
        v1 = await keyring.get(TENANT, 1)
        tik = keywrap.new_key()
        assert await protect_tenant_key_version(cfg, store, TENANT, 2, tik) is True
        assert await keyring.get(TENANT, 2) == tik != v1
        assert await keyring.current(TENANT) == (tik, 2)  # current at once
        with pytest.raises(CustomerKeyError):  # a concurrent rotation's version: untouched
            await protect_tenant_key_version(cfg, store, TENANT, 2, keywrap.new_key())
        assert await keyring.get(TENANT, 2) == tik
        assert await protect_tenant_key_version(cfg, store, OTHER, 1, tik) is False
        softhsm.destroy_key("b1")
        softhsm.destroy_key("b2")
        keyring.forget()
        with pytest.raises(TenantKeyUnavailable):
            await keyring.get(TENANT, 2)
    finally:
        log.close()
        await store.close()
    rows = await rows_of(cfg)
    assert [(r.version, r.wrapped_key) for r in rows] == [(1, None), (2, None)]
    events = [(r["event"], r.get("version")) for r in audit(cfg)]
    assert events[-2:] == [("key.wrap", 2), ("key.unwrap_failed", 2)]


HANGING_MODULE = r"""
#include <unistd.h>
typedef unsigned long CK_RV;
typedef CK_RV (*fn)(void *);
struct function_list { unsigned char major, minor; fn f[80]; };
static CK_RV hang(void *args) { (void)args; for (;;) pause(); return 0; }
static struct function_list list = {2, 40, {hang}};
CK_RV C_GetFunctionList(struct function_list **out) { *out = &list; return 0; }
"""


@pytest.mark.sqlite_only
async def test_an_hsm_that_never_answers_costs_a_timeout_not_the_server(
        ck_deployment: Config, softhsm: SoftHsm, tmp_path: Path) -> None:
    """A PKCS#11 module whose C_Initialize never returns: the unwrap gives up after
    keys.hsm_timeout_seconds and uses the availability key (audited); the event loop,
    other tenants and later requests are not held up."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler to build a hanging PKCS#11 module")
    source, hanging = tmp_path / "hang.c", tmp_path / "libhang.so"
    source.write_text(HANGING_MODULE)
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(hanging), str(source)],
                   check=True, capture_output=True, timeout=60)
    cfg = ck_deployment
    cfg.keys.hsm_modules = [*cfg.keys.hsm_modules, str(hanging)]
    cfg.keys.hsm_timeout_seconds = 1.0
    async with running_wcs(cfg) as wcs:
        alice, item, data = await protected_item(wcs, softhsm)
        carol = await wcs.admit("CKH", f"carol@{OTHER}", role="organizer")
        await set_config(wcs, module=str(hanging))
        await asyncio.sleep(CACHE + 0.2)
        started = time.monotonic()
        await asyncio.gather(readable(wcs, alice, item, data),
                             wcs.upload(carol, b"not held up"))
        assert time.monotonic() - started < 1.0 + 3.0
        await asyncio.sleep(CACHE + 0.2)  # again: the hung thread still holds the module
        await readable(wcs, alice, item, data)
    used = [r for r in audit(cfg) if r["event"] == "key.availability_used"]
    assert len(used) >= 2 and "no answer within 1 s" in used[0]["reason"], used


def webconf_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "webconf", *args], capture_output=True,
                          text=True, timeout=120, env=env, stdin=subprocess.DEVNULL, cwd=ROOT)


@pytest.mark.sqlite_only
async def test_rotation_rotate_root_and_purge_of_a_customer_key_tenant(
        ck_wcs: Wcs, softhsm: SoftHsm) -> None:
    """`webconf tenant rotate` wraps the new version under the customer keys (never the
    root key), `webconf keys rotate-root` leaves such versions alone, and `webconf tenant
    purge` drops the tenant's Customer Key settings with its keys (docs/protocol.md §8.4,
    §8.5)."""
    wcs, cfg = ck_wcs, ck_wcs.cfg
    alice, item, data = await protected_item(wcs, softhsm)
    carol = await wcs.admit("CKO", f"carol@{OTHER}", role="organizer")
    done = webconf_cli("tenant", "rotate", str(cfg.base_dir), TENANT)
    assert done.returncode == 0, done.stderr
    (row,) = await rows_of(cfg)
    assert (row.version, row.wrapped_key, row.root_key_version) == (2, None, None)
    assert row.customer_wraps is not None
    await asyncio.sleep(CACHE + 0.2)
    await readable(wcs, alice, item, data)  # its DEK now under version 2, via the HSM
    events = [(r["event"], r.get("version"), r.get("wrapped_by")) for r in audit(cfg)]
    assert ("key.create", 2, "customer-key") in events
    assert ("key.wrap", 2, "customer-key") in events

    done = webconf_cli("keys", "rotate-root", str(cfg.base_dir))
    assert done.returncode == 0, done.stderr
    assert await rows_of(cfg) == [row]  # no root key wraps it: untouched
    (other,) = await rows_of(cfg, OTHER)
    assert other.root_key_version == 2
    await asyncio.sleep(CACHE + 0.2)
    await readable(wcs, alice, item, data)
    status, _ = await wcs.upload(carol, b"still fine")
    assert status == 201

    done = webconf_cli("tenant", "purge", str(cfg.base_dir), TENANT, "--yes")
    assert done.returncode == 0, done.stderr
    assert await customer_key_config(wcs.server.service.store, TENANT) is None  # type: ignore[union-attr]
