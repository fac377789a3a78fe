"""Smoke tests of the HTTP data-path benchmarks (bench/download.py, bench/upload.py).

They prove each benchmark still runs end to end against a real `webconf serve` (and, for
downloads, Debian's nginx driven by wrk and h2load) and yields rows with positive numbers.
They do not check the targets: those need the full run on a quiet machine
(`python -m bench --only download,upload`).
"""

from __future__ import annotations

import time

import pytest

from bench import download, upload

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


@pytest.mark.skipif(bool(download.missing_tools()),
                    reason=f"missing {', '.join(download.missing_tools())} "
                           "(make sysdeps: nginx-light, wrk, nghttp2-client)")
def test_download_smoke() -> None:
    started = time.monotonic()
    rows = {r.metric: r for r in download.run(smoke=True)}
    assert time.monotonic() - started < 60
    for tool in ("wrk", "h2load --h1"):
        row = rows[f"download MB/s ({tool}, 5 MiB item)"]
        assert row.ours > 0 and row.baseline is not None and row.baseline > 0, row.detail
        assert row.ratio is not None and row.ratio > 0
        assert row.target == ">= 1.0x" and row.unit == "MB/s"
        assert row.detail["rounds"] == 1
        assert all(n > 0 for n in row.detail["ours_requests"] + row.detail["nginx_requests"])
        # both servers really ran TLS 1.3 with AES-256-GCM
        assert set(row.detail["tls"].values()) == {"TLSv1.3 TLS_AES_256_GCM_SHA384"}
        doc = rows[f"decrypting download MB/s (/document vs /content, {tool}, 5 MiB item)"]
        assert doc.ours > 0 and doc.baseline is not None and doc.baseline > 0, doc.detail
        assert doc.target == ">= 0.8x" and doc.unit == "MB/s"
        assert all(n > 0 for n in doc.detail["document_requests"])


def test_upload_smoke() -> None:
    started = time.monotonic()
    rows = upload.run(smoke=True)
    assert time.monotonic() - started < 60
    by_prefix = {r.metric.split(" (")[0].split(",")[0]: r for r in rows}
    enc = by_prefix["upload encryption MB/s"]
    assert enc.ours > 0 and enc.baseline is not None and enc.baseline > 0
    assert enc.target == ">= 0.5x"
    assert enc.detail["pure_python_engine_mb_s"] > 0
    e2e = by_prefix["HTTPS upload MB/s"]
    assert e2e.ours > 0 and e2e.baseline is None
    rss = by_prefix["WCS peak RSS"]
    assert rss.ours > 0 and rss.baseline is not None and rss.baseline > 0
    assert rss.lower_is_better and rss.unit == "MiB"
