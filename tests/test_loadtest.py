"""`webconf loadtest`: its pure helpers, and whole runs against a deployment it starts itself."""

from __future__ import annotations

import asyncio
import hashlib
import json
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from clients.download import DownloadError, ItemIntegrityError
from clients.loadtest import ItemSource, error_kind, parse_size
from clients.sip import SipError
from clients.wcs import WcsError
from webconf.cli import main as cli_main
from webconf.stats import percentile, summary_ms

ROOT = Path(__file__).resolve().parents[1]
KEYS = {"participants", "conferences", "items", "item_size", "join_latency_ms", "joins_per_s",
        "share_latency_ms", "download_mb_s", "errors", "error_count", "rss_mib", "duration_s"}


@pytest.mark.parametrize(("text", "expected"), [
    ("4096", 4096), ("0", 0), ("1MiB", 1024**2), ("256KiB", 256 * 1024), ("256kib", 262144),
    ("500k", 500_000), ("500K", 500_000), ("2MB", 2_000_000), ("1.5GiB", 3 * 1024**3 // 2),
    ("1 MiB", 1024**2), ("1.1k", 1100), ("0.3k", 300), ("3Ki", 3072), ("1G", 10**9),
    ("1TiB", 1024**4),
])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "1XB", "-1", "1.5", "0.0001k", "1iB", "1 M iB"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    values = [float(v) for v in range(1, 101)]  # 1..100, shuffled order must not matter
    values.reverse()
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([10.0, 20.0], 25) == pytest.approx(12.5)
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert summary_ms([0.001, 0.002, 0.003]) == {"p50": 2.0, "p95": 2.9, "p99": 3.0}
    assert summary_ms([]) == {"p50": None, "p95": None, "p99": None}


def test_error_kinds() -> None:
    assert error_kind(SipError(503, "Service Unavailable")) == "sip-503"
    assert error_kind(SipError(401, "Unauthorized")) == "sip-401"
    assert error_kind(SipError(0, "connection closed by the focus")) == "sip-connection"
    assert error_kind(TimeoutError()) == "timeout"
    assert error_kind(ssl.SSLCertVerificationError("certificate verify failed")) == "tls"
    assert error_kind(ConnectionRefusedError()) == "connection"
    assert error_kind(ItemIntegrityError("i1", "a.bin", "chunk 3 failed")) == "integrity"
    assert error_kind(WcsError(404, "not_found", "unknown item")) == "http-404"
    try:
        try:
            raise WcsError(403, "forbidden", "no")
        except WcsError as inner:
            raise DownloadError("i1", "a.bin", str(inner)) from inner
    except DownloadError as outer:
        assert error_kind(outer) == "http-403"
    try:
        try:
            raise TimeoutError
        except TimeoutError as inner:
            raise WcsError(0, "network", "GET: timed out") from inner
    except WcsError as outer:
        assert error_kind(outer) == "timeout"
    assert error_kind(WcsError(0, "network", "reset")) == "network"


@pytest.mark.parametrize("size", [0, 5, 8, 9, 1024 * 1024, 3 * 1024 * 1024 + 17])
def test_item_source(size: int) -> None:
    source = ItemSource.generate(size)
    chunks = list(source.chunks())
    data = b"".join(chunks)
    assert len(data) == size
    assert hashlib.sha256(data).hexdigest() == source.sha256
    if len(chunks) > 1:
        assert len(set(chunks)) == len(chunks)  # no two blocks equal


def test_bad_target_options(capsys: pytest.CaptureFixture[str]) -> None:
    policy = asyncio.get_event_loop_policy()
    assert cli_main(["loadtest", "--focus", "127.0.0.1:5061"]) == 2
    assert "--ca" in capsys.readouterr().err
    assert cli_main(["loadtest", "--ca", "x.pem"]) == 2
    assert cli_main(["loadtest", "--participants", "1", "--conferences", "2"]) == 2
    # Run in-process (as here), the command leaves the program's event loop policy alone:
    # it runs its own loop (uvloop when installed) through `asyncio.Runner`.
    assert asyncio.get_event_loop_policy() is policy


@pytest.mark.parametrize("connection", ["per-join", "reused"])
def test_loadtest_own_deployment(connection: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "webconf", "loadtest", "--participants", "20",
         "--conferences", "2", "--items", "2", "--item-size", "256KiB", "--json",
         "--connection", connection, "--timeout", "30"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert KEYS <= report.keys()
    assert report["error_count"] == 0 and report["errors"] == {}
    assert (report["participants"], report["conferences"], report["items"],
            report["item_size"]) == (20, 2, 2, 256 * 1024)
    assert report["connection"] == connection
    assert report["joins_ok"] == 20
    assert report["downloads_verified"] == 20 * 2  # each participant, each item of its conf
    for key in ("join_latency_ms", "share_latency_ms"):
        assert set(report[key]) == {"p50", "p95", "p99"}
        assert all(report[key][p] > 0 for p in ("p50", "p95", "p99")), report[key]
        assert report[key]["p50"] <= report[key]["p95"] <= report[key]["p99"]
    assert report["joins_per_s"] > 0
    assert report["download_mb_s"] > 0
    assert report["rss_mib"]["total"] > 0
    assert report["rss_mib"]["wcs"] > 0 and report["rss_mib"]["focus"] > 0
    assert report["duration_s"] > 0


def test_loadtest_present_measures_page_turns() -> None:
    """`--present`: each organizer turns a PDF's pages; every attendee hears every turn."""
    proc = subprocess.run(
        [sys.executable, "-m", "webconf", "loadtest", "--participants", "6",
         "--conferences", "2", "--items", "0", "--present", "--present-pages", "3", "--json",
         "--timeout", "30"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["error_count"] == 0, report.get("error_examples")
    assert report["page_turns_seen"] == 6 * 3  # every attendee, every turn
    latency = report["present_latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
    from rich.console import Console

    from clients.loadtest.report import render_table

    console = Console(record=True, width=120)
    console.print(render_table(report))
    assert "page turn to attendee p50/p95/p99 ms" in console.export_text()
