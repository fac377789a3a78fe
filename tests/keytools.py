"""Helpers of the rotation and purge tests: the real `webconf` command as a subprocess
(killable mid-way), downloads decrypted as a client does, and the share's files."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import select

from conferencing.audit import read_records
from conferencing.share import TMP_DIR
from conferencing.store import Store
from conferencing.store.schema import items, tenant_keys
from webconf.crypto.cobblestone import Decryptor
from webconf.deploy.config import Config
from webconf.deploy.lifetime import die_with_parent

from .conftest import Participant, Wcs

ROOT = Path(__file__).resolve().parents[1]


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


async def start_cli(*args: str) -> asyncio.subprocess.Process:
    """`webconf ARGS` as a subprocess that dies with the test run, even a killed one."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "webconf", *args, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=die_with_parent(signal.SIGKILL))


async def run_cli(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:
    proc = await start_cli(*args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def kill_after(proc: asyncio.subprocess.Process, line_part: str,
                     timeout: float = 30.0) -> list[str]:
    """Read the command's output until a line holds `line_part`, then kill -9 it."""
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                raw = await proc.stdout.readline()
                assert raw, f"command ended before {line_part!r}: {lines}"
                lines.append(raw.decode().rstrip())
                if line_part in lines[-1]:
                    break
    finally:
        if proc.returncode is None:
            proc.kill()  # SIGKILL: no cleanup of any kind runs in the command
    assert await proc.wait() == -9
    return lines


async def plaintext(wcs: Wcs, who: Participant, view: dict[str, Any]) -> bytes:
    """The item as a client gets it: its key, its ciphertext, decrypted locally."""
    async with wcs.http.get(view["key_url"], headers=who.headers) as resp:
        assert resp.status == 200, await resp.text()
        key = await resp.json()
    async with wcs.http.get(view["url"], headers=who.headers) as resp:
        assert resp.status == 200, await resp.text()
        blob = await resp.read()
    dec = Decryptor(b64d(key["key"]), b64d(key["context"]))
    return dec.update(blob) + dec.finalize()


def share_files(cfg: Config) -> dict[str, str]:
    """Every blob file on the share (relative path -> SHA-256 of its bytes)."""
    out: dict[str, str] = {}
    for dirpath, _dirs, files in os.walk(cfg.share_dir):
        if TMP_DIR in Path(dirpath).relative_to(cfg.share_dir).parts:
            continue
        for name in files:
            path = Path(dirpath) / name
            out[str(path.relative_to(cfg.share_dir))] = hashlib.sha256(
                path.read_bytes()).hexdigest()
    return out


async def item_versions(store: Store, tenant: str) -> dict[str, int]:
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(items.c.id, items.c.tenant_key_version).where(
            items.c.tenant == tenant))).all()
    return {r.id: int(r.tenant_key_version) for r in rows}


async def key_versions(store: Store, tenant: str) -> dict[int, int]:
    """The tenant's key rows: version -> the root key version wrapping it."""
    async with store.engine.connect() as conn:
        rows = (await conn.execute(select(tenant_keys.c.version, tenant_keys.c.root_key_version)
                                   .where(tenant_keys.c.tenant == tenant))).all()
    return {int(r.version): int(r.root_key_version) for r in rows}


def audit(cfg: Config, event: str) -> list[dict[str, Any]]:
    return [r for r in read_records(cfg.log_dir / "audit.log") if r["event"] == event]
