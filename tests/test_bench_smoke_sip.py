"""Smoke test of the SIP join benchmark (bench/sip_joins.py): one short round of each row.

It proves the benchmark still runs end to end (our focus and WCS, Kamailio over TLS, SIPp
over TCP) and produces rows with positive numbers; it does not check the targets, which
need the full run on a quiet machine (`python -m bench --only sip`). Without Kamailio and
SIPp, a shorter test still drives our focus with the benchmark's own generator.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import sip_joins, sip_sipp

HAVE_KAMAILIO = shutil.which("kamailio") is not None
HAVE_SIPP = shutil.which("sipp") is not None

METRICS = (
    "joins/s, one TLS connection",
    "joins/s, TLS connection per join",
    "joins/s, SIPp TCP one connection",
    "joins/s, SIPp TCP connection per call",
)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(not HAVE_KAMAILIO, reason="kamailio not installed (make bench-deps: "
                                              "kamailio, kamailio-tls-modules)")
@pytest.mark.skipif(not HAVE_SIPP, reason="sipp not installed (make bench-deps: sip-tester)")
def test_sip_joins_smoke() -> None:
    rows = {r.metric: r for r in sip_joins.run(smoke=True)}
    assert set(METRICS) <= set(rows), sorted(rows)
    for metric in METRICS:
        row = rows[metric]
        assert row.ours > 0, (metric, row.detail)
        assert row.baseline is not None and row.baseline > 0, (metric, row.detail)
        assert row.ratio is not None and row.ratio > 0
        assert row.detail["rounds"] == 1
        assert "kamailio_tcp_children" in row.detail
    assert rows["joins/s, TLS connection per join"].detail["kamailio_tcp_children"] == 1
    for metric in METRICS[:2]:
        row = rows[metric]
        for side in ("ours_rounds", "kamailio_rounds"):
            (only,) = row.detail[side]
            assert only["errors"] == {}, (metric, side, only)


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.skipif(HAVE_KAMAILIO and HAVE_SIPP, reason="test_sip_joins_smoke covers it")
def test_sip_joins_smoke_ours_only() -> None:
    """Without the baselines the benchmark still drives our focus with its generator
    (bench/sip_gen.py) and reports our rows, with no errors and a note saying why."""
    rows = {r.metric: r for r in sip_joins.run(smoke=True)}
    for metric in METRICS[:2]:
        row = rows[metric]
        assert row.ours > 0, (metric, row.detail)
        (only,) = row.detail["ours_rounds"]
        assert only["errors"] == {}, (metric, only)
        assert 0 < only["p50_ms"] <= only["p99_ms"]
        assert row.detail["notes"]


def test_sipp_stats_parser(tmp_path: Path) -> None:
    """The parser runs without SIPp: it reads SIPp's -trace_stat CSV format."""
    stats = tmp_path / "stats.csv"
    start = "2026-11-29\t21:01:44.408407\t1795986104.408407"
    stats.write_text(
        "StartTime;LastResetTime;CurrentTime;ElapsedTime(P);ElapsedTime(C);"
        "SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);\n"
        f"{start};x;2026-11-29\t21:01:45.408407\t1795986105.408407;"
        "00:00:01;00:00:01;10;10;0;0;\n"
        f"{start};x;2026-11-29\t21:01:46.908407\t1795986106.908407;"
        "00:00:01;00:00:02;15;25;1;1;\n")
    ok, failed, elapsed = sip_sipp.parse_sipp_stats(stats)
    assert (ok, failed) == (25, 1)
    assert elapsed == pytest.approx(2.5)
