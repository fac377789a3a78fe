"""Upload and download throughput of one large item through a real `webconf serve`.

    python -m bench.transfer [--size-mib 256] [--rounds 3]

Starts a fresh deployment in a temp dir, streams an upload of SIZE MiB (generated, never
held whole in memory), downloads the ciphertext back, and reports median MB/s of each
direction over the rounds plus the WCS process's peak RSS (VmHWM) after the uploads and
after the downloads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from webconf.deploy import tls
from webconf.deploy.init import init_deployment


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wcs_pid(supervisor_pid: int) -> int:
    for child in Path(f"/proc/{supervisor_pid}/task/{supervisor_pid}/children").read_text().split():
        if b"conferencing" in Path(f"/proc/{child}/cmdline").read_bytes():
            return int(child)
    raise RuntimeError("no WCS child process found")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(size_mib: int, rounds: int) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="webconf-bench-"))
    cfg = init_deployment(tmp / "dep", https_port=free_port(), internal_port=free_port(),
                          sip_port=free_port())
    env = {**os.environ, "WEBCONF_WCS_MAX_UPLOAD_BYTES": str(size_mib * 2**20 + 1)}
    proc = subprocess.Popen([sys.executable, "-m", "webconf", "serve", str(cfg.base_dir)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    while not proc.stdout.readline().startswith("webconf ready"):
        pass
    up, down = [], []
    rss_up = rss_down = 0.0
    block = os.urandom(1024 * 1024)
    try:
        pid = wcs_pid(proc.pid)
        ssl_public = tls.client_context(cfg)
        ssl_internal = tls.client_context(cfg, client_cert="focus-client")
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_internal)) as s:
            async with s.post(f"{cfg.internal_url}/internal/v1/conferences/BENCH/participants",
                              json={"tenant": "contoso.example",
                                    "organizer": "alice@contoso.example",
                                    "user": "alice@contoso.example"}) as resp:
                cookie = (await resp.json())["cookie"]
        headers = {"Authorization": f"Bearer {cookie}"}
        base = f"{cfg.public_url}/v1/conferences/BENCH/items"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_public),
                                         timeout=aiohttp.ClientTimeout(total=None)) as http:
            for _ in range(rounds):
                async def body():
                    for _ in range(size_mib):
                        yield block

                t0 = time.perf_counter()
                async with http.post(base, data=body(), headers={
                        **headers, "X-Item-Name": "big.bin",
                        "Content-Length": str(size_mib * 2**20)}) as resp:
                    item = (await resp.json())["item"]
                    assert resp.status == 201
                up.append(size_mib * 2**20 / (time.perf_counter() - t0) / 1e6)
                rss_up = max(rss_up, peak_rss_mib(pid))
                t0 = time.perf_counter()
                got = 0
                async with http.get(f"{base}/{item['id']}/content", headers=headers) as resp:
                    async for chunk in resp.content.iter_chunked(1024 * 1024):
                        got += len(chunk)
                assert got == item["ciphertext_size"]
                down.append(got / (time.perf_counter() - t0) / 1e6)
                rss_down = max(rss_down, peak_rss_mib(pid))
                async with http.delete(f"{base}/{item['id']}", headers=headers) as resp:
                    assert resp.status == 204
    finally:
        proc.terminate()
        proc.wait(30)
    return {"size_mib": size_mib, "rounds": rounds,
            "upload_mb_s_median": round(statistics.median(up), 1),
            "download_mb_s_median": round(statistics.median(down), 1),
            "upload_mb_s": [round(x, 1) for x in up], "download_mb_s": [round(x, 1) for x in down],
            "wcs_peak_rss_mib_after_uploads": round(rss_up, 1),
            "wcs_peak_rss_mib_after_downloads": round(rss_down, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.size_mib, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
