"""The page-turn benchmark still runs: `bench.present.run(smoke=True)`, 20 attendees in two
client processes, three page turns, against a real stack. Numbers must be positive and
every attendee must hear every turn; timings are not asserted (the machine may be busy)."""

from __future__ import annotations

import pytest

from bench import present

pytestmark = pytest.mark.slow


@pytest.mark.timeout(180)
def test_present_smoke() -> None:
    (row,) = present.run(smoke=True)
    assert row.metric == "page turn to 20 attendees: presentation.changed p99"
    assert row.unit == "ms" and row.lower_is_better and row.ours > 0
    d = row.detail
    assert d["errors"] == 0, d["error_kinds"]
    assert d["attendees_joined"] == 20 and d["rounds"] == 3
    assert d["arrivals"] == 20 * 3
    assert 0 < d["p50_ms"] <= d["p95_ms"] <= row.ours <= d["max_ms"]
