"""The scale-out benchmark still runs: `bench.scaleout.run(smoke=True)` end to end.

On the tests' PostgreSQL (the server at 127.0.0.1:5432, else the throwaway cluster that
tests/backends.py starts), beside the SQLite default: SIP joins on both backends, two
`webconf serve --node` nodes for the cross-node push and the revocation rows, then
`webconf serve --workers 2` against nginx with two workers (when nginx and wrk are
installed). Every row must hold positive numbers, no lost push, no failed revocation, and
the bench must drop the database it made. Timings are not asserted against their goals
(the machine may be busy): that is the full run's job (`python -m bench --only scaleout`).
"""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from bench import download, scaleout
from bench.common import PG_ENV

from .backends import PgServer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _bench_databases(server: PgServer) -> set[str]:
    async def go() -> set[str]:
        conn = await asyncpg.connect(host=server.host, port=server.port, user=server.user,
                                     database=server.admin_db, timeout=10)
        try:
            rows = await conn.fetch("SELECT datname FROM pg_database "
                                    "WHERE datname LIKE 'webconf\\_bench\\_%'")
        finally:
            await conn.close()
        return {str(r["datname"]) for r in rows}

    return asyncio.run(go())


def test_scaleout_smoke(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PG_ENV, f"postgresql://{pg_server.user}@{pg_server.host}:"
                               f"{pg_server.port}/{pg_server.admin_db}")
    before = _bench_databases(pg_server)
    started = time.monotonic()
    rows = {r.metric: r for r in scaleout.run(smoke=True)}
    assert time.monotonic() - started < 240

    joins = rows["joins/s PostgreSQL vs SQLite (one TLS connection)"]
    assert joins.ours > 0 and joins.baseline is not None and joins.baseline > 0, joins.detail
    assert joins.detail["errors"] == 0, joins.detail
    assert joins.unit == "joins/s" and joins.ratio is not None

    p99 = rows["cross-node share-to-push p99 (PostgreSQL, 2 nodes)"]
    p50 = rows["cross-node share-to-push p50 (PostgreSQL, 2 nodes)"]
    assert p99.detail["lost"] == 0, p99.detail
    assert p99.detail["samples"] == scaleout.SMOKE.push_items * scaleout.SMOKE.push_channels
    assert p99.baseline is not None and p50.baseline is not None
    assert 0 < p50.ours <= p99.ours and 0 < p50.baseline <= p99.baseline
    assert p99.lower_is_better and p99.unit == "ms" and p99.target == "< 100 ms"
    # the push cannot reach a channel before the upload started
    assert p99.detail["cross_ms"]["p50"] > 0 and p99.detail["same_node_ms"]["p50"] > 0

    revoke = rows["revocation visible everywhere p99 (2 nodes)"]
    d = revoke.detail
    assert d["errors"] == {}, d
    assert d["revoked"] == d["participants"] == scaleout.SMOKE.revocations
    # everywhere is the latest of four moments, the same node's the latest of two of them
    assert revoke.baseline is not None and revoke.ours >= revoke.baseline > 0
    for key in ("n1_refused", "n2_refused", "n1_closed", "n2_closed"):
        assert d[key]["p50"] > 0, d

    name = "download MB/s, serve --workers 2 vs nginx 2 workers (5 MiB item)"
    if download.missing_tools():
        assert name not in rows
    else:
        dl = rows[name]
        assert dl.ours > 0 and dl.baseline is not None and dl.baseline > 0, dl.detail
        assert dl.target == ">= 1.0x" and dl.unit == "MB/s"
        (split,) = dl.detail["wcs_worker_cpu_seconds_per_round"]
        assert len(split) == 2, dl.detail  # two WCS processes served the port
    assert len(rows) == 4 + (0 if download.missing_tools() else 1)

    assert _bench_databases(pg_server) <= before, "the bench left its database behind"
