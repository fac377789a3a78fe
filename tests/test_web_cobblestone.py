"""The browser's Cobblestone decryptor (web/src/cobblestone.js, WebCrypto) in a real browser.

`web/test/vectors.mjs` serves the decryptor and the C2SP/Wycheproof Cobblestone vectors
from a loopback HTTP server of its own and runs them in headless Debian chromium through
playwright-core: each vector whole, in pieces, and streamed from fetch() with Range
(docs/protocol.md §5.1, §10.3). One more vector, made here by webconf/crypto/cobblestone.py
with an item context, checks that the browser reads what the WCS's clients write.
Skipped, saying why, only when node or chromium is missing; `make web` installs the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from webconf.crypto.cobblestone import CHUNK_SIZE, encrypt, item_context

ROOT = Path(__file__).resolve().parents[1]
WEB = ROOT / "web"
VECTORS = Path(os.environ.get("WEBCONF_VECTORS") or ROOT / "tests" / "vectors")
CHROMIUM = os.environ.get("WEBCONF_CHROMIUM", "/usr/bin/chromium")


def browser_tools() -> str:
    """node's path; skips when node or chromium is absent, fails when `make web` did not
    install the web client's packages (that is a broken checkout, not a missing tool)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed (scripts/system-deps.sh installs nodejs)")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is absent (scripts/system-deps.sh installs Debian chromium)")
    assert (WEB / "node_modules" / "playwright-core").is_dir(), \
        "web/node_modules is missing: run `make web`"
    return node


def test_cobblestone_vectors_in_chromium(tmp_path: Path) -> None:
    node = browser_tools()
    doc = json.loads((VECTORS / "c2sp_chunked_encryption_aes_256_gcm_test.json").read_text())
    key = bytes(range(32))
    ctx = item_context("contoso.example", "K7Q2", "Xy3")
    plaintext = hashlib.shake_256(b"webconf").digest(3 * CHUNK_SIZE + 1234)
    ours = {"tcId": 1000, "comment": "webconf/crypto/cobblestone.py, an item context",
            "key": key.hex(), "ctx": ctx.hex(),
            "ct": zlib.compress(encrypt(key, ctx, plaintext)).hex(),
            "msgLength": len(plaintext), "msgSha512": hashlib.sha512(plaintext).hexdigest(),
            "result": "valid", "flags": []}
    shipped = sum(len(g["tests"]) for g in doc["testGroups"])
    doc["testGroups"][0]["tests"].append(ours)
    vectors = tmp_path / "vectors.json"
    vectors.write_text(json.dumps(doc))
    run = subprocess.run([node, str(WEB / "test" / "vectors.mjs"), str(vectors),
                          "--chromium", CHROMIUM], capture_output=True, text=True,
                         timeout=300, check=False)
    lines = [line for line in run.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result (exit {run.returncode}): {run.stderr[-2000:]}"
    report = json.loads(lines[-1])
    assert "error" not in report, report
    results = report["results"]
    assert "Chrome/" in report["userAgent"]
    assert len(results) == shipped + 1 == 36
    failed = [r for r in results if r["problems"]]
    assert not failed, failed
    assert {r["result"] for r in results} == {"valid", "invalid"}
    assert run.returncode == 0
