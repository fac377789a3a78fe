"""Ciphertext download throughput: the WCS content endpoint against nginx serving the same blob.

    python -m bench.download [--smoke]

One real deployment runs under `webconf serve`; an organizer is admitted over the internal
mTLS API, and one item of each size (1 and 5 MiB: a typical slide deck or PDF; 100 MiB: a
recording or large video) is uploaded through the public API. The baseline is Debian's
nginx with one worker process, TLS 1.3 / TLS_AES_256_GCM_SHA384, the deployment's own
wcs.pem/wcs.key, sendfile on, access_log off, serving the *very blob file* from the share
(`location = /blob { alias <blob>; }`, template in bench/nginx/).

Both servers are driven alike, each a full-item GET per request over keep-alive HTTPS:
- `wrk -t2 -c8 -d10s` (smoke: -d2s); MB/s from its Transfer/sec;
- `h2load --h1 --tls13-ciphers=TLS_AES_256_GCM_SHA384 -n N -c 8 -t 2`; MB/s = traffic
  bytes / finished seconds.
Our URL is the item's `/content` with `Authorization: Bearer <cookie>` (so every request
verifies the cookie, including its revocation row in the store); nginx's has no auth.
Rounds alternate which server goes first; rows report medians over the rounds and the
ratio ours/nginx. MB = 10**6 bytes.

The decrypting download (`/document`, docs/protocol.md §8.3) is driven the same way on the
same item, right next to `/content` in each round, and gets rows of its own: its plaintext
MB/s against `/content`'s ciphertext MB/s, goal >= 0.8x (decrypting is cheap next to TLS).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from webconf.deploy import tls
from webconf.deploy.config import Config
from webconf.deploy.lifetime import die_with_parent
from webconf.protocol import Admission

from .common import (
    Stack,
    children,
    cpu_seconds,
    free_port,
    median,
    stack,
    standalone,
    stop_baseline,
)
from .report import Row

CONFERENCE = "BENCH"
TENANT = "contoso.example"
ORGANIZER = "alice@contoso.example"
TEMPLATE = Path(__file__).resolve().parent / "nginx" / "nginx.conf.template"
TLS13_SUITE = "TLS_AES_256_GCM_SHA384"
SIZES_MIB = (1, 5, 100)
GOAL_RATIO = {100: 1.3}
"""Issue 11's goals, ours / nginx: >= 1.0x for the small items, the large stay >= 1.3x."""
SMOKE_SIZES_MIB = (5,)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def nginx_binary() -> str | None:
    """Debian puts nginx in /usr/sbin, which a non-root PATH may lack."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


@contextlib.contextmanager
def fresh_stack(**kwargs: Any) -> Iterator[Stack]:
    """`common.stack()`, retried when `free_port()` handed one port out twice.

    On a busy machine the kernel often returns the same ephemeral port to consecutive
    bind(0) probes, and `init_deployment` rightly refuses equal ports (DeployError).
    """
    from webconf.deploy.init import DeployError

    with contextlib.ExitStack() as cleanup:
        for attempt in range(8):
            try:
                st = cleanup.enter_context(stack(**kwargs))
                break
            except DeployError:
                if attempt == 7:
                    raise
        yield st


def missing_tools() -> list[str]:
    out = [] if nginx_binary() else ["nginx"]
    return out + [t for t in ("wrk", "h2load") if shutil.which(t) is None]


# -- the deployment side --------------------------------------------------------------------
async def admit(cfg: Config, conference: str = CONFERENCE) -> Admission:
    """Admit the organizer over the internal mTLS API (as the focus does). The admission
    names the conference by its public id, which the HTTP API wants (docs/protocol.md §2)."""
    ssl_internal = tls.client_context(cfg, client_cert="focus-client")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_internal)) as s:
        async with s.post(f"{cfg.internal_url}/internal/v1/conferences/{conference}/participants",
                          json={"tenant": TENANT, "organizer": ORGANIZER,
                                "user": ORGANIZER}) as resp:
            resp.raise_for_status()
            return Admission.from_json(await resp.json())


async def upload(cfg: Config, admitted: Admission, size: int, *,
                 session: aiohttp.ClientSession | None = None) -> tuple[dict[str, Any], float]:
    """Stream a `size`-byte upload (1 MiB blocks, never held whole); return (item, seconds)."""
    block = os.urandom(min(size, 1024 * 1024)) if size else b""

    async def body() -> AsyncIterator[bytes]:
        left = size
        while left:
            piece = block[: min(left, len(block))]
            left -= len(piece)
            yield piece

    own = session is None
    if session is None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg)),
            timeout=aiohttp.ClientTimeout(total=None))
    try:
        t0 = time.perf_counter()
        async with session.post(
                f"{cfg.public_url}/v1/conferences/{admitted.conference}/items", data=body(),
                headers={"Authorization": f"Bearer {admitted.cookie}", "X-Item-Name": "bench.bin",
                         "Content-Type": "application/octet-stream",
                         "Content-Length": str(size)}) as resp:
            doc = await resp.json()
            if resp.status != 201:
                raise RuntimeError(f"upload failed: {resp.status} {doc}")
        return doc["item"], time.perf_counter() - t0
    finally:
        if own:
            await session.close()


async def blob_path(cfg: Config, item_id: str, conference: str) -> Path:
    """The item's blob file on the share (looked up in the deployment's store)."""
    from conferencing.share import FileShare
    from conferencing.store import Store

    store = await Store.open(cfg.store_url, create=False)
    try:
        row = await store.item(conference, item_id)
    finally:
        await store.close()
    if row is None:
        raise RuntimeError(f"item {item_id} not in the store")
    return FileShare(cfg.share_dir).blob_path(row.blob_id)


def negotiated_suite(port: int, host: str = "127.0.0.1") -> str:
    """The TLS 1.3 suite a default (OpenSSL-ordered) client gets, as wrk would."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
        info = s.cipher()
        return f"{s.version()} {info[0] if info else '?'}"


# -- nginx --------------------------------------------------------------------------------
@dataclass
class Nginx:
    url: str
    master_pid: int

    def cpu_seconds(self) -> float:
        """CPU time of the master and its worker so far."""
        return sum(cpu_seconds(p) for p in [self.master_pid, *children(self.master_pid)])


@contextlib.contextmanager
def nginx(cfg: Config, blob: Path, host: str = "127.0.0.1",
          workers: int = 1) -> Iterator[Nginx]:
    """Run nginx (`workers` worker processes, foreground) serving `blob` at /blob."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (make sysdeps)")
    prefix = Path(tempfile.mkdtemp(prefix="webconf-nginx-"))
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / "tmp" / sub).mkdir(parents=True)
    port = free_port(host)
    # As root the worker would drop to `nobody`, which cannot read the 0700 share.
    user_line = "user root;" if os.geteuid() == 0 else ""
    conf = prefix / "nginx.conf"
    conf.write_text(TEMPLATE.read_text().format(
        workers=workers, user_line=user_line, prefix=prefix, host=host, port=port,
        cert=cfg.certs_dir / "wcs.pem", key=cfg.certs_dir / "wcs.key", blob=blob))
    proc = subprocess.Popen([binary, "-p", str(prefix), "-c", str(conf),
                             "-g", "daemon off; master_process on;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,  # SIGTERM to the master stops workers
                            preexec_fn=die_with_parent())  # dies with the bench
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read() if proc.stderr else ""
                log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
                raise RuntimeError(f"nginx exited with {proc.returncode}: {err}{log}")
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not start listening")
            time.sleep(0.05)
        yield Nginx(f"https://{host}:{port}/blob", proc.pid)
    finally:
        stop_baseline(proc, 15)
        shutil.rmtree(prefix, ignore_errors=True)


# -- load generators ------------------------------------------------------------------------
def _bytes(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit.upper()]


def parse_wrk(out: str) -> dict[str, Any]:
    """wrk's summary: Transfer/sec (binary units) -> MB/s, plus requests and errors."""
    m = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?)B", out)
    done = re.search(r"(\d+) requests in ([\d.]+)(m?s),\s+([\d.]+)([KMGT]?)B read", out)
    if m is None or done is None:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:\s+connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                       out)
    seconds = float(done.group(2)) / (1e3 if done.group(3) == "ms" else 1)
    return {"mb_s": _bytes(m.group(1), m.group(2)) / 1e6, "requests": int(done.group(1)),
            "seconds": seconds,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0}


def parse_h2load(out: str) -> dict[str, Any]:
    """h2load's summary: MB/s = total traffic bytes / finished time."""
    fin = re.search(r"finished in ([\d.]+)(s|ms|us),", out)
    traffic = re.search(r"traffic: [\d.]+[KMGT]?B \((\d+)\) total", out)
    reqs = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed,"
                     r" (\d+) errored", out)
    codes = re.search(r"status codes: (\d+) 2xx", out)
    if fin is None or traffic is None or reqs is None:
        raise RuntimeError(f"cannot parse h2load output:\n{out}")
    seconds = float(fin.group(1)) / {"s": 1, "ms": 1e3, "us": 1e6}[fin.group(2)]
    return {"mb_s": int(traffic.group(1)) / seconds / 1e6, "requests": int(reqs.group(1)),
            "succeeded": int(reqs.group(2)), "failed": int(reqs.group(3)) + int(reqs.group(4)),
            "non_2xx": int(reqs.group(2)) - int(codes.group(1)) if codes else 0,
            "seconds": round(seconds, 2)}


def run_wrk(url: str, headers: dict[str, str], seconds: int) -> dict[str, Any]:
    cmd = ["wrk", "-t2", "-c8", f"-d{seconds}s", "--timeout", "60s"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=seconds + 120,
                         check=True).stdout
    result = parse_wrk(out)
    if result["non_2xx"] or result["requests"] == 0:
        raise RuntimeError(f"wrk against {url} got errors:\n{out}")
    return result


def run_h2load(url: str, headers: dict[str, str], requests: int) -> dict[str, Any]:
    cmd = ["h2load", "--h1", f"--tls13-ciphers={TLS13_SUITE}", "-n", str(requests), "-c", "8",
           "-t", "2"]
    for k, v in headers.items():
        cmd += ["-H", f"{k}: {v}"]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=600,
                         check=True).stdout
    result = parse_h2load(out)
    if result["failed"] or result["non_2xx"] or result["succeeded"] != requests:
        raise RuntimeError(f"h2load against {url} got errors:\n{out}")
    return result


# -- the benchmark ----------------------------------------------------------------------
def _timed(cpu: Callable[[], float], fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one load generation; add the server's CPU seconds per GB moved (robust to a
    shared machine, where MB/s also depends on what else gets the cores)."""
    before = cpu()
    result = fn()
    used = cpu() - before
    gb = result["mb_s"] * result.get("seconds", 0) / 1e3
    result["server_cpu_s_per_gb"] = round(used / gb, 3) if gb else None
    return result


def _measure(st: Stack, admitted: Admission, size_mib: int, smoke: bool, rounds: int,
             wrk_seconds: int) -> list[Row]:
    cfg = st.cfg
    item, _ = asyncio.run(upload(cfg, admitted, size_mib * 2**20))
    ours_url = item["url"]
    auth = {"Authorization": f"Bearer {admitted.cookie}"}
    blob = asyncio.run(blob_path(cfg, item["id"], admitted.conference))
    assert blob.stat().st_size == item["ciphertext_size"]
    # h2load: enough full-item requests for ~2 s (smoke ~0.5 s) at ~1 GB/s, >= 1 per client.
    budget = (512 if smoke else 2048) * 2**20
    n_requests = max(8, budget // (size_mib * 2**20) // 8 * 8)
    document_url = ours_url.removesuffix("/content") + "/document"
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        tool: {"ours": [], "document": [], "nginx": []} for tool in ("wrk", "h2load")}
    wcs_pid = st.pids["wcs"]
    with nginx(cfg, blob) as ngx:
        port = int(ngx.url.split(":")[2].split("/")[0])
        suites = {"ours": negotiated_suite(cfg.wcs.https_port), "nginx": negotiated_suite(port)}
        # Warm both (page cache, TLS session machinery, first-request imports).
        run_h2load(ours_url, auth, 8)
        run_h2load(ngx.url, {}, 8)
        run_h2load(document_url, auth, 8)
        servers: dict[str, tuple[str, dict[str, str], Callable[[], float]]] = {
            "ours": (ours_url, auth, lambda: cpu_seconds(wcs_pid)),
            "document": (document_url, auth, lambda: cpu_seconds(wcs_pid)),
            "nginx": (ngx.url, {}, ngx.cpu_seconds)}
        for r in range(rounds):
            order = ["ours", "document", "nginx"] if r % 2 == 0 else [
                "nginx", "document", "ours"]
            for who in order:
                url, headers, cpu = servers[who]
                results["wrk"][who].append(_timed(
                    cpu, lambda: run_wrk(url, headers, wrk_seconds)))
                results["h2load"][who].append(_timed(
                    cpu, lambda: run_h2load(url, headers, n_requests)))
    rss = st.peak_rss()
    rows = []
    for tool, label in (("wrk", f"wrk -t2 -c8 -d{wrk_seconds}s"),
                        ("h2load", f"h2load --h1 -c8 -t2 -n{n_requests}")):
        ours_runs, base_runs = results[tool]["ours"], results[tool]["nginx"]
        ours = median([x["mb_s"] for x in ours_runs])
        base = median([x["mb_s"] for x in base_runs])
        name = "wrk" if tool == "wrk" else "h2load --h1"
        goal = GOAL_RATIO.get(size_mib, 1.0)
        rows.append(Row(
            metric=f"download MB/s ({name}, {size_mib} MiB item)", ours=round(ours, 1),
            baseline=round(base, 1), target=f">= {goal}x", passed=base > 0 and ours / base >= goal,
            unit="MB/s", detail={
                "tool": label, "rounds": rounds, "item_mib": size_mib,
                "ciphertext_bytes": item["ciphertext_size"],
                "ours_mb_s": [round(x["mb_s"], 1) for x in ours_runs],
                "nginx_mb_s": [round(x["mb_s"], 1) for x in base_runs],
                "ours_requests": [x["requests"] for x in ours_runs],
                "nginx_requests": [x["requests"] for x in base_runs],
                "ours_cpu_s_per_gb": median([x["server_cpu_s_per_gb"] or 0 for x in ours_runs]),
                "nginx_cpu_s_per_gb": median([x["server_cpu_s_per_gb"] or 0
                                              for x in base_runs]),
                "tls": suites, "wcs_peak_rss_mib": rss.get("wcs"),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "baseline_is": "nginx 1 worker, TLS1.3 AES-256-GCM, sendfile on"}))
        rows.append(_document_row(results[tool], name, label, size_mib, rounds))
    return rows


def _document_row(runs: dict[str, list[dict[str, Any]]], name: str, label: str,
                  size_mib: int, rounds: int) -> Row:
    """`/document` (plaintext, decrypted by the WCS) against `/content` (the ciphertext)
    of the same item, same tool, same rounds."""
    doc_runs, content_runs = runs["document"], runs["ours"]
    doc = median([x["mb_s"] for x in doc_runs])
    content = median([x["mb_s"] for x in content_runs])
    return Row(
        metric=f"decrypting download MB/s (/document vs /content, {name}, {size_mib} MiB item)",
        ours=round(doc, 1), baseline=round(content, 1), target=">= 0.8x",
        passed=content > 0 and doc / content >= 0.8, unit="MB/s", detail={
            "tool": label, "rounds": rounds, "item_mib": size_mib,
            "document_mb_s": [round(x["mb_s"], 1) for x in doc_runs],
            "content_mb_s": [round(x["mb_s"], 1) for x in content_runs],
            "document_requests": [x["requests"] for x in doc_runs],
            "document_cpu_s_per_gb": median([x["server_cpu_s_per_gb"] or 0
                                             for x in doc_runs]),
            "content_cpu_s_per_gb": median([x["server_cpu_s_per_gb"] or 0
                                            for x in content_runs]),
            "load_avg_1m": round(os.getloadavg()[0], 2),
            "baseline_is": "the WCS's own /content of the same item (ciphertext)"})


def run(smoke: bool) -> list[Row]:
    missing = missing_tools()
    if missing:
        print(f"bench.download: skipped, missing {', '.join(missing)} (make sysdeps)")
        return []
    rounds = 1 if smoke else 3
    wrk_seconds = 2 if smoke else 10
    rows: list[Row] = []
    with fresh_stack() as st:
        admitted = asyncio.run(admit(st.cfg))
        for size_mib in SMOKE_SIZES_MIB if smoke else SIZES_MIB:
            rows += _measure(st, admitted, size_mib, smoke, rounds, wrk_seconds)
    return rows


def main() -> None:
    standalone("python -m bench.download", __doc__, run)


if __name__ == "__main__":
    main()
