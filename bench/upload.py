"""Upload path: Cobblestone encryption against raw AES-GCM, HTTPS upload MB/s, WCS peak RSS.

    python -m bench.upload [--smoke]

Rows:
- `upload encryption MB/s`: the WCS's streaming `Encryptor` fed the way `share_item` feeds
  it (64 KiB pieces, as `request.content.iter_chunked(64 KiB)` yields them) against raw
  `AESGCM.encrypt` on 1 MiB buffers, both in this process, on the same bytes count,
  alternating, median of rounds. Target >= 0.5x: Cobblestone adds a 16-byte tag and a nonce
  per 16 KiB chunk, so it makes 64 AES-GCM calls where the baseline makes one.
- `HTTPS upload MB/s (end to end)`: a real streamed upload (1 MiB blocks, never held whole)
  through `webconf serve` over TLS: parse, encrypt, write, fsync, rename, commit; median of
  rounds; informative (no baseline).
- `WCS peak RSS, 1 GiB upload` against `10 MiB upload`: VmHWM of the WCS process of two
  fresh deployments, one per size; the 1 GiB one must stay within 32 MiB of the 10 MiB one
  (streaming means memory does not grow with the item).
MB = 10**6 bytes.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from webconf.crypto import cobblestone
from webconf.deploy import tls

from .common import median, standalone
from .download import admit, fresh_stack, upload
from .report import Row

PIECE = 64 * 1024
RAW_BUFFER = 1024 * 1024
RSS_SLACK_MIB = 32


# -- encryption, in process ------------------------------------------------------------------
def encrypt_streaming(total: int, pieces: list[bytes]) -> float:
    """Seconds to encrypt `total` bytes with a fresh Encryptor fed 64 KiB pieces."""
    key = os.urandom(32)
    enc = cobblestone.Encryptor(key, cobblestone.item_context("t", "c", "i"))
    n = total // PIECE
    t0 = time.perf_counter()
    out = 0
    for i in range(n):
        out += len(enc.update(pieces[i % len(pieces)]))
    out += len(enc.finalize())
    seconds = time.perf_counter() - t0
    assert out == cobblestone.ciphertext_size(n * PIECE)
    return seconds


def encrypt_raw(total: int, buffer: bytes) -> float:
    """Seconds to encrypt `total` bytes with AESGCM.encrypt, one call per 1 MiB buffer."""
    aead = AESGCM(os.urandom(32))
    nonce = os.urandom(12)
    t0 = time.perf_counter()
    for _ in range(total // len(buffer)):
        aead.encrypt(nonce, buffer, None)
    return time.perf_counter() - t0


def encryption_row(smoke: bool) -> Row:
    total = (32 if smoke else 256) * 2**20
    rounds = 3 if smoke else 7
    # Distinct pieces, as a request body brings distinct bytes objects.
    pieces = [os.urandom(PIECE) for _ in range(16)]
    buffer = os.urandom(RAW_BUFFER)
    encrypt_streaming(8 * 2**20, pieces)  # warm up
    encrypt_raw(8 * 2**20, buffer)
    ours, raw = [], []
    for r in range(rounds):
        if r % 2:
            raw.append(total / encrypt_raw(total, buffer) / 1e6)
            ours.append(total / encrypt_streaming(total, pieces) / 1e6)
        else:
            ours.append(total / encrypt_streaming(total, pieces) / 1e6)
            raw.append(total / encrypt_raw(total, buffer) / 1e6)
    native = cobblestone.NATIVE
    # The pure-Python engine too, for the record (it is the fallback without the native one).
    cobblestone.NATIVE = False
    try:
        pure = [total / encrypt_streaming(total, pieces) / 1e6 for _ in range(max(1, rounds // 2))]
    finally:
        cobblestone.NATIVE = native
    o, b = median(ours), median(raw)
    return Row(
        metric="upload encryption MB/s (Cobblestone streaming, 64 KiB pieces)",
        ours=round(o, 1), baseline=round(b, 1), target=">= 0.5x",
        passed=b > 0 and o / b >= 0.5, unit="MB/s", detail={
            "rounds": rounds, "bytes_per_round": total, "ours_mb_s": [round(x) for x in ours],
            "raw_aesgcm_1mib_mb_s": [round(x) for x in raw],
            "engine": "cryptography.cobblestone (native)" if native else "pure Python",
            "pure_python_engine_mb_s": round(median(pure), 1),
            "baseline_is": "AESGCM.encrypt, 1 MiB buffers, same process"})


# -- end to end ---------------------------------------------------------------------------
async def _uploads(cfg: Any, size: int, rounds: int) -> list[float]:
    admitted = await admit(cfg)
    out = []
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg)),
            timeout=aiohttp.ClientTimeout(total=None)) as http:
        for _ in range(rounds):
            item, seconds = await upload(cfg, admitted, size, session=http)
            assert item["size"] == size
            out.append(size / seconds / 1e6)
            async with http.delete(f"{item['url'].rsplit('/', 1)[0]}",
                                   headers={"Authorization": f"Bearer {admitted.cookie}"}
                                   ) as resp:
                assert resp.status == 204, resp.status
    return out


def end_to_end_row(smoke: bool) -> Row:
    size_mib = 32 if smoke else 256
    rounds = 1 if smoke else 5
    with fresh_stack() as st:
        runs = asyncio.run(_uploads(st.cfg, size_mib * 2**20, rounds + 1))[1:]  # 1st warms
        rss = st.peak_rss()
    return Row(metric=f"HTTPS upload MB/s (end to end, {size_mib} MiB)",
               ours=round(median(runs), 1), baseline=None, target="-", passed=None,
               unit="MB/s", detail={"rounds": rounds, "mb_s": [round(x, 1) for x in runs],
                                    "item_mib": size_mib, "wcs_peak_rss_mib": rss.get("wcs"),
                                    "client": "aiohttp, 1 MiB blocks, same machine"})


def _peak_after_upload(size: int) -> tuple[float, float]:
    """(WCS VmHWM after one upload of `size` bytes, seconds) on a fresh deployment."""
    with fresh_stack() as st:
        async def go() -> float:
            admitted = await admit(st.cfg)
            item, seconds = await upload(st.cfg, admitted, size)
            assert item["size"] == size
            return seconds

        seconds = asyncio.run(go())
        return st.peak_rss()["wcs"], seconds


def rss_row(smoke: bool) -> Row:
    big_mib = 256 if smoke else 1024
    small, _ = _peak_after_upload(10 * 2**20)
    big, seconds = _peak_after_upload(big_mib * 2**20)
    label = "1 GiB" if big_mib == 1024 else f"{big_mib} MiB"
    return Row(metric=f"WCS peak RSS, {label} upload (baseline: 10 MiB upload)",
               ours=round(big, 1), baseline=round(small, 1),
               target=f"flat (<= +{RSS_SLACK_MIB} MiB)", passed=big <= small + RSS_SLACK_MIB,
               unit="MiB", lower_is_better=True,
               detail={"big_upload_mib": big_mib, "big_upload_mb_s": round(
                   big_mib * 2**20 / seconds / 1e6, 1), "measure": "VmHWM, fresh stack per size"})


def run(smoke: bool) -> list[Row]:
    return [encryption_row(smoke), end_to_end_row(smoke), rss_row(smoke)]


def main() -> None:
    standalone("python -m bench.upload", __doc__, run)


if __name__ == "__main__":
    main()
