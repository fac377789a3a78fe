"""Children that die with their parent: `PR_SET_PDEATHSIG` for the servers we start.

A `webconf serve` left running by a killed test run, demo or load test keeps its ports and
its focus and WCS children (issue 9). So every server process is started with
`preexec_fn=die_with_parent(...)`: between fork and exec the child asks Linux to send it
a signal when its parent goes away, and the setting survives the exec.

Caveats the callers must respect:
- Linux sends the signal when the *thread* that forked the child exits, not the process.
  Fork from the main thread, from an event loop that lives as long as the child, or from a
  thread that lives as long as the process; never from an `asyncio.to_thread` worker.
- If the parent died before the child asked, no signal will come: the child checks its
  parent pid right after asking and signals itself.
- Elsewhere than Linux this is a no-op (`die_with_parent` returns None).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
"""`prctl` option from <linux/prctl.h>."""


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    prctl: Callable[..., int] = libc.prctl
    return prctl


_PRCTL = _load_prctl()
"""Resolved once in the parent, so the forked child only calls a ready function pointer."""


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child receive `sig` when the forking thread exits;
    None where `PR_SET_PDEATHSIG` does not exist."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent_pid = os.getpid()
    signum = int(sig)

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before we asked
            os.kill(os.getpid(), signum)

    return preexec
