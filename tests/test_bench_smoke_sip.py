"""Smoke test of the SIP join benchmark (bench/sip_joins.py): one short round of each row.

It proves the benchmark still runs end to end -- our focus and WCS on SQLite and on a fresh
PostgreSQL database, Kamailio over TLS as a stateless 200 and doing Digest, SIPp over TCP --
and produces rows with positive rates, the server CPU per join from /proc beside each, and
the failed-join counts of the bursts. It does not check the targets, which need the full
run on a quiet machine (`python -m bench --only sip`). Without Kamailio and SIPp, a shorter
test still drives our focus with the benchmark's own generator.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from bench import sip_joins, sip_sipp
from bench.common import PG_ENV
from bench.report import Row

from .backends import PgServer

HAVE_KAMAILIO = shutil.which("kamailio") is not None
HAVE_SIPP = shutil.which("sipp") is not None

TINY = sip_joins.Settings(rounds=1, seconds=1.0, warmup=0.4, burst_seconds=0.5,
                          burst_warmup=0.2, sipp_seconds=1.0)
"""Smaller than `--smoke`: this only proves every row is made and means what it says."""
BACKENDS = ("SQLite", "PostgreSQL")
ONE = "one TLS connection (32 in flight)"
PER_JOIN = "TLS connection per join (8 in flight)"
PEERS = ("stateless 200", "with Digest")
JOIN_METRICS = [f"joins/s, {mode}, {b} vs Kamailio {p}"
                for mode in (ONE, PER_JOIN) for b in BACKENDS for p in PEERS]
CPU_METRICS = [f"server CPU per join, {ONE}, {b}" for b in BACKENDS]
BURST_METRICS = {(n, b): f"failed joins, {n} in flight on one TLS connection, {b}"
                 for n in TINY.bursts for b in BACKENDS}
SIPP_METRICS = ("joins/s, SIPp TCP one connection", "joins/s, SIPp TCP connection per call")


def _databases(server: PgServer) -> set[str]:
    async def go() -> set[str]:
        conn = await asyncpg.connect(host=server.host, port=server.port, user=server.user,
                                     database=server.admin_db, timeout=10)
        try:
            rows = await conn.fetch("SELECT datname FROM pg_database")
        finally:
            await conn.close()
        return {str(r["datname"]) for r in rows}

    return asyncio.run(go())


def _run(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Row]:
    monkeypatch.setenv(PG_ENV, f"postgresql://{pg_server.user}@{pg_server.host}:"
                               f"{pg_server.port}/{pg_server.admin_db}")
    rows = {r.metric: r for r in sip_joins.run(settings=TINY)}
    database = next(iter(rows.values())).detail["postgresql_database"]
    assert database.startswith("webconf_bench_")
    assert database not in _databases(pg_server), "the bench must drop its database"
    return rows


def _ours_ok(row: Row) -> None:
    """Our side of a join row: a rate, its CPU per join from /proc, per process group."""
    assert row.ours > 0, (row.metric, row.detail)
    assert row.cpu_ms is not None and row.cpu_ms > 0, (row.metric, row.detail)
    (only,) = row.detail["ours_rounds"]
    assert only["errors"] == {}, (row.metric, only)
    assert only["challenged"] > 0, "our focus challenges every INVITE"
    assert 0 < only["p50_ms"] <= only["p99_ms"]
    groups = row.detail["cpu_ms_per_join_by_group"]["ours"]
    assert {"focus", "wcs", "generator"} <= set(groups), groups
    if "PostgreSQL" in row.metric:
        assert "postgres" in groups, groups
    assert groups["focus"] > 0 and groups["wcs"] > 0, groups


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not HAVE_KAMAILIO, reason="kamailio not installed (make sysdeps: "
                                              "kamailio, kamailio-tls-modules)")
@pytest.mark.skipif(not HAVE_SIPP, reason="sipp not installed (make sysdeps: sip-tester)")
def test_sip_joins_smoke(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = _run(pg_server, monkeypatch)
    wanted = {*JOIN_METRICS, *CPU_METRICS, *BURST_METRICS.values(), *SIPP_METRICS}
    assert wanted <= set(rows), sorted(wanted - set(rows))

    for metric in JOIN_METRICS:
        row = rows[metric]
        _ours_ok(row)
        assert row.baseline is not None and row.baseline > 0, (metric, row.detail)
        assert row.ratio is not None and row.ratio > 0
        assert row.baseline_cpu_ms is not None and row.baseline_cpu_ms > 0
        assert row.detail["rounds"] == 1
        (kam,) = row.detail["kamailio_rounds"]
        assert kam["errors"] == {}, (metric, kam)
        assert set(row.detail["cpu_ms_per_join_by_group"]["kamailio"]) == {
            "kamailio", "generator"}
        # the Digest peer challenged every join, the stateless one none
        assert (kam["challenged"] > 0) == ("with Digest" in metric), (metric, kam)
        children = 2 if ONE in metric else 1
        assert row.detail["kamailio_tcp_children"] == children
        assert row.target == (">= 1.0x" if PER_JOIN in metric else
                              ">= 0.5x" if "Digest" in metric else ">= 0.25x")

    for metric in CPU_METRICS:
        row = rows[metric]
        assert row.ours > 0 and row.baseline is not None and row.baseline > 0, row.detail
        assert row.lower_is_better and row.target == "<= 0.6 ms"
        assert row.passed == (row.ours <= 0.6)

    for (n, _), metric in BURST_METRICS.items():
        row = rows[metric]
        ours: dict[str, Any] = row.detail["ours"]
        peer: dict[str, Any] = row.detail["kamailio"]
        for side in (ours, peer):
            assert side["started"] >= n, (metric, side)
            # every join ends one way or the other: counted once, none lost
            assert side["failed"] + side["succeeded"] == side["started"], (metric, side)
            assert side["failed"] == sum(side["errors"].values())
            assert 0 <= side[f"failed_of_the_first_{n}"] <= min(n, side["failed"])
        # Kamailio queues a burst of that size without a failure: the count can be 0
        assert peer["failed"] == 0 and row.baseline == 0, (metric, peer)
        assert row.ours == ours["failed"] and row.passed == (ours["failed"] == 0)
        assert row.lower_is_better and row.target == "0"

    for metric in SIPP_METRICS:
        row = rows[metric]
        assert row.ours > 0 and row.baseline is not None and row.baseline > 0, row.detail
        assert row.cpu_ms is not None and row.cpu_ms > 0
        assert row.baseline_cpu_ms is not None and row.baseline_cpu_ms > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(HAVE_KAMAILIO and HAVE_SIPP, reason="test_sip_joins_smoke covers it")
def test_sip_joins_smoke_ours_only(pg_server: PgServer,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the baselines the benchmark still drives our focus with its generator
    (bench/sip_gen.py) and reports our rows, with no errors and a note saying why."""
    rows = _run(pg_server, monkeypatch)
    for backend in BACKENDS:
        for mode in (ONE, PER_JOIN):
            row = rows[f"joins/s, {mode}, {backend} vs Kamailio stateless 200"]
            _ours_ok(row)
            assert row.detail["notes"]
        assert rows[BURST_METRICS[(64, backend)]].detail["ours"]["started"] >= 64


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
