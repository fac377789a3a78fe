"""Authenticated joins per second through a real `webconf serve` (focus + WCS processes).

    python -m bench.joins [--joins 300] [--concurrency 8] [--rounds 3]

One join = INVITE -> 401 -> INVITE with Digest -> 100 -> 200 (cookie minted by the WCS over
mTLS) -> ACK -> BYE -> 200 (cookie revoked at the WCS). Two modes:
- `reused`: every join on one shared TLS connection (`--concurrency` dialogs in flight);
- `per-join`: a new TLS connection (full handshake) for each join.
Prints the median joins/s of each mode over the rounds.
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

from clients.sip import ConferenceDialog, SipConnection
from focus.directory import Directory
from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.deploy.init import init_deployment

CONF = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:BENCH"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def prepare(users: int) -> tuple[Config, subprocess.Popen[str]]:
    tmp = Path(tempfile.mkdtemp(prefix="webconf-joins-"))
    cfg = init_deployment(tmp / "dep", https_port=free_port(), internal_port=free_port(),
                          sip_port=free_port())
    directory = await Directory.open(cfg.store_url)
    for i in range(users):
        await directory.add_user(f"user{i}@contoso.example", "pw")
    await directory.add_user("alice@contoso.example", "pw")
    await directory.close()
    env = {**os.environ, "WEBCONF_FOCUS_MAX_CONNECTIONS_PER_SOURCE": "100000"}
    proc = subprocess.Popen([sys.executable, "-m", "webconf", "serve", str(cfg.base_dir)],
                            stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    while not proc.stdout.readline().startswith("webconf ready"):
        pass
    return cfg, proc


async def one_join(conn: SipConnection, user: str) -> None:
    dialog = ConferenceDialog(conn, CONF, user, "pw")
    await dialog.join()
    status = await dialog.leave()
    assert status == 200, status


async def run_mode(cfg: Config, mode: str, joins: int, concurrency: int, users: int) -> float:
    ctx = tls.client_context(cfg)
    shared = None
    if mode == "reused":
        shared = await SipConnection.open("127.0.0.1", cfg.focus.sip_port, ssl_context=ctx,
                                          server_hostname="contoso.example")
    counter = iter(range(joins))

    async def worker() -> None:
        for i in counter:
            user = f"user{i % users}@contoso.example"
            if shared is not None:
                await one_join(shared, user)
            else:
                conn = await SipConnection.open("127.0.0.1", cfg.focus.sip_port,
                                                ssl_context=ctx,
                                                server_hostname="contoso.example")
                try:
                    await one_join(conn, user)
                finally:
                    await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if shared is not None:
        await shared.close()
    return joins / elapsed


async def main_async(joins: int, concurrency: int, rounds: int) -> dict[str, object]:
    users = 50
    cfg, proc = await prepare(users)
    try:
        organizer = await SipConnection.open("127.0.0.1", cfg.focus.sip_port,
                                             ssl_context=tls.client_context(cfg),
                                             server_hostname="contoso.example")
        await ConferenceDialog(organizer, CONF, "alice@contoso.example", "pw").join()
        results: dict[str, list[float]] = {"reused": [], "per-join": []}
        for _ in range(rounds):
            for mode in results:
                results[mode].append(await run_mode(cfg, mode, joins, concurrency, users))
        await organizer.close()
    finally:
        proc.terminate()
        proc.wait(30)
    return {"joins_per_round": joins, "concurrency": concurrency, "rounds": rounds,
            **{f"{m}_joins_per_s_median": round(statistics.median(v), 1)
               for m, v in results.items()},
            **{f"{m}_joins_per_s": [round(x, 1) for x in v] for m, v in results.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--joins", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main_async(args.joins, args.concurrency, args.rounds)),
                     indent=2))


if __name__ == "__main__":
    main()
