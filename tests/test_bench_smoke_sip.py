"""Smoke test of the SIP join benchmark (bench/sip_joins.py): one short round of each row.

It proves the benchmark still runs end to end (our focus and WCS, Kamailio over TLS, SIPp
over TCP) and produces rows with positive numbers; it does not check the targets, which
need the full run on a quiet machine (`python -m bench --only sip`).
"""

from __future__ import annotations

import shutil

import pytest

from bench import sip_joins

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(shutil.which("kamailio") is None,
                       reason="kamailio not installed (make bench-deps: kamailio, "
                              "kamailio-tls-modules)"),
    pytest.mark.skipif(shutil.which("sipp") is None,
                       reason="sipp not installed (make bench-deps: sip-tester)"),
]

METRICS = (
    "joins/s, one TLS connection",
    "joins/s, TLS connection per join",
    "joins/s, SIPp TCP one connection",
    "joins/s, SIPp TCP connection per call",
)


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


def test_sipp_stats_parser(tmp_path) -> None:
    stats = tmp_path / "stats.csv"
    start = "2026-11-29\t21:01:44.408407\t1795986104.408407"
    stats.write_text(
        "StartTime;LastResetTime;CurrentTime;ElapsedTime(P);ElapsedTime(C);"
        "SuccessfulCall(P);SuccessfulCall(C);FailedCall(P);FailedCall(C);\n"
        f"{start};x;2026-11-29\t21:01:45.408407\t1795986105.408407;"
        "00:00:01;00:00:01;10;10;0;0;\n"
        f"{start};x;2026-11-29\t21:01:46.908407\t1795986106.908407;"
        "00:00:01;00:00:02;15;25;1;1;\n")
    ok, failed, elapsed = sip_joins.parse_sipp_stats(stats)
    assert (ok, failed) == (25, 1)
    assert elapsed == pytest.approx(2.5)
