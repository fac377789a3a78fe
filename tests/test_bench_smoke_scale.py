"""The fan-out and scale benchmarks still run: their smoke variants against a real stack.

`bench.fanout.run(smoke=True)`: 20 participants in two client processes, a 512 KiB item
shared twice; `bench.scale.run(smoke=True)`: 200 participants (own SIP TLS connection and
WSS channel each) in two client processes bound to 127.0.0.2/3. Both must report positive
numbers and no errors; timings are not asserted (the machine may be busy). Also the
process set-up the scale target relies on (`webconf.deploy.capacity`).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bench import fanout, scale
from bench.report import Row
from webconf.deploy.config import Config

pytestmark = pytest.mark.slow  # fan-out and 10k-scale smokes


def _check(row: Row) -> None:
    assert row.ours > 0, row
    assert row.unit in ("ms", "MiB"), row
    assert row.lower_is_better
    assert row.as_dict()["metric"] == row.metric


@pytest.mark.timeout(180)
def test_fanout_smoke() -> None:
    started = time.monotonic()
    rows = fanout.run(smoke=True)
    assert [r.metric for r in rows] == [
        "fan-out 20 x 512 KiB: share-to-all-decrypted p99", "fan-out: item.shared push p99"]
    for row in rows:
        _check(row)
    main, push = rows
    assert main.detail["errors"] == 0, main.detail["error_kinds"]
    assert main.detail["participants_joined"] == 20
    assert main.detail["rounds"] == 2
    assert 0 < main.detail["p50_ms"] <= main.detail["p95_ms"] <= main.ours <= main.detail[
        "max_ms"]
    assert main.detail["download_alone_p99_ms"] > 0
    assert main.detail["aggregate_mib_s"] > 0
    assert push.detail["participants"] == 20
    assert time.monotonic() - started < 60


@pytest.mark.timeout(180)
def test_scale_smoke() -> None:
    started = time.monotonic()
    (row,) = scale.run(smoke=True)
    assert row.metric == "RSS focus+WCS, 200 participants"
    _check(row)
    d = row.detail
    assert d["errors"] == 0, d
    assert d["joined"] == d["channels_open"] == d["sip_connections_open"] == 200
    assert d["left"] == 200
    assert d["focus_mib"] > 0 and d["wcs_mib"] > 0
    assert d["hwm_total_mib"] >= row.ours * 0.99
    assert d["bytes_per_participant"] > 0
    assert d["extrapolated_10k_mib"] > row.ours
    assert time.monotonic() - started < 60


async def test_lean_tls_buffers_keep_streams_apart(deployment: Config) -> None:
    """With one receive buffer per thread, interleaved TLS connections still get exactly
    their own bytes, and no connection keeps a 256 KiB buffer of its own."""
    from webconf.deploy import capacity, tls

    assert capacity.install_lean_tls_buffers()
    protocols: list[Any] = []
    try:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            protocols.append(writer.transport._ssl_protocol)  # type: ignore[attr-defined]
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0,
                                            ssl=tls.server_context(deployment, "wcs"))
        port = server.sockets[0].getsockname()[1]
        client_ctx = tls.client_context(deployment)

        async def talk(i: int) -> None:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1")
            payload = bytes([i]) * (200_000 + i)  # several records, several reads
            writer.write(payload)
            await writer.drain()
            got = await reader.readexactly(len(payload))
            assert got == payload
            writer.close()
            await writer.wait_closed()

        await asyncio.gather(*(talk(i) for i in range(20)))
        server.close()
        await server.wait_closed()
        assert len(protocols) == 20
        assert all(isinstance(p, capacity.LeanSSLProtocol) for p in protocols)
        assert all(len(p._ssl_buffer) == 0 for p in protocols)
    finally:
        capacity.uninstall_lean_tls_buffers()
    from asyncio import sslproto

    assert sslproto.SSLProtocol is not capacity.LeanSSLProtocol


def test_nofile_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from webconf.deploy.capacity import raise_nofile_limit

    soft = raise_nofile_limit()
    assert soft == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert soft == hard or hard == resource.RLIM_INFINITY
