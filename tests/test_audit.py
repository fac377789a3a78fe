"""The audit log (conferencing/audit.py, docs/protocol.md §8.1): shares, deletes and the
`webconf audit` table, written by the real server; never a name, key or cookie."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conferencing.audit import AuditLog, encode_record, read_records

from .conftest import Wcs, wait_for

ROOT = Path(__file__).resolve().parents[1]


def test_records_are_json_lines_appended_by_many_writers(tmp_path: Path) -> None:
    path = tmp_path / "log" / "audit.log"
    first, second = AuditLog(path), AuditLog(path, threaded=False)
    for i in range(200):
        first.record("item.share", tenant="contoso.example", item=f"i{i}", bytes=i)
        second.record("item.delete", tenant="fabrikam.example", item=f"d{i}")
    first.close()
    second.close()
    records = list(read_records(path))
    assert len(records) == 400
    assert sorted(r["item"] for r in records if r["event"] == "item.share") == sorted(
        f"i{i}" for i in range(200))
    assert [r["item"] for r in read_records(path, tenant="fabrikam.example")] == [
        f"d{i}" for i in range(200)]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize("field", ["key", "dek", "cookie", "pin", "name", "plaintext"])
def test_secret_fields_are_refused(field: str) -> None:
    with pytest.raises(ValueError):
        encode_record("item.share", {field: "x"})


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    path.write_bytes(encode_record("item.share", {"item": "a"}) + b'{"ts": 1, "ev')
    assert [r["item"] for r in read_records(path)] == ["a"]


async def test_share_and_delete_are_audited_without_names(wcs: Wcs) -> None:
    alice = await wcs.admit("AUD1", "alice@contoso.example", role="organizer")
    status, body = await wcs.upload(alice, b"%PDF-1.4 quarterly numbers", "secret-plan.pdf")
    item = body["item"]
    assert status == 201
    async with wcs.http.delete(f"{wcs.items_url(alice.conference)}/{item['id']}",
                               headers=alice.headers) as resp:
        assert resp.status == 204
    path = wcs.cfg.log_dir / "audit.log"
    await wait_for(lambda: len(list(read_records(path))) == 3)
    created, *records = list(read_records(path))
    assert (created["event"], created["tenant"], created["version"]) == (
        "key.create", "contoso.example", 1)
    assert [(r["event"], r["item"], r["who"]) for r in records] == [
        ("item.share", item["id"], alice.pid), ("item.delete", item["id"], alice.pid)]
    assert records[0]["tenant"] == "contoso.example" and records[0]["bytes"] == 26
    text = path.read_text()
    assert "secret-plan" not in text and alice.cookie not in text
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    table = subprocess.run(
        [sys.executable, "-m", "webconf", "audit", str(wcs.cfg.base_dir), "--tenant",
         "contoso.example"], capture_output=True, text=True, check=True, timeout=60,
        env=env).stdout.splitlines()
    assert table[0].split()[:6] == ["time", "event", "tenant", "who", "item", "bytes"]
    assert [line.split()[2] for line in table[1:]] == [
        "key.create", "item.share", "item.delete"]
    lines = subprocess.run(
        [sys.executable, "-m", "webconf", "audit", str(wcs.cfg.base_dir), "--json"],
        capture_output=True, text=True, check=True, timeout=60, env=env).stdout.splitlines()
    assert [json.loads(line)["event"] for line in lines] == [
        "key.create", "item.share", "item.delete"]
