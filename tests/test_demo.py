"""`webconf demo` itself, as CI runs it: a whole meeting, verified, exit 0."""

from __future__ import annotations

import subprocess
import sys


def test_demo_prints_a_verified_meeting() -> None:
    proc = subprocess.run([sys.executable, "-m", "webconf", "demo", "--big-mib", "20"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "verified: 20/20 downloads identical" in out
    assert "6 participants joined over SIP" in out
    assert "BYE -> {200}" in out
    # The presentation: every page turned, each turn reaching every attendee.
    for page in range(1, 7):
        assert f"page {page}/6: every attendee on page {page}" in out
    assert "6 pages turned, every attendee on the same page after each turn" in out
    assert "eyJ" not in out  # no cookie ever printed
