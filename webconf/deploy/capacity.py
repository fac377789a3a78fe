"""Process set-up for many concurrent connections: descriptors and TLS receive buffers.

`prepare_server_process()` runs at the start of each server process (WCS, focus):

- RLIMIT_NOFILE: the soft limit is raised to the hard limit. Each participant holds a SIP
  connection at the focus and a data channel at the WCS; the usual soft limit of 1024
  would cap a node at about a thousand participants.
- TLS receive buffers: asyncio's stdlib TLS transport (`asyncio.sslproto.SSLProtocol`,
  Python 3.11+) gives every connection its own zero-filled 256 KiB `bytearray` to receive
  ciphertext into, resident for the connection's whole life: 2.5 GiB per process for
  10,000 idle TLS connections. The buffer is only used between `get_buffer()` and
  `buffer_updated()`, which the selector event loop calls back to back in one callback
  around `recv_into()`, and `buffer_updated()` first copies the bytes into the
  connection's `ssl.MemoryBIO`; so one buffer per thread can serve every connection of
  that thread's loop. `install_lean_tls_buffers()` makes new TLS connections use such a
  protocol (`LeanSSLProtocol`) by replacing the class the event loop instantiates. It does
  nothing where that contract does not hold (Windows' proactor loop keeps the buffer across
  an overlapped read), is idempotent, and does not matter under uvloop (whose TLS layer
  does not come from `asyncio.sslproto`). `WEBCONF_LEAN_TLS_BUFFERS=0` turns it off.
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import threading
from asyncio import sslproto
from typing import Any

_BUFFER_SIZE = sslproto.SSLProtocol.max_size
_local = threading.local()
_EMPTY = bytearray()
_EMPTY_VIEW = memoryview(_EMPTY)
_original: type[sslproto.SSLProtocol] | None = None


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _thread_buffer() -> memoryview:
    view: memoryview | None = getattr(_local, "view", None)
    if view is None:
        view = memoryview(bytearray(_BUFFER_SIZE))
        _local.view = view
    return view


class LeanSSLProtocol(sslproto.SSLProtocol):
    """`SSLProtocol` that receives into its thread's shared buffer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Drop the per-connection buffer the base class just made (it is freed at once).
        self._ssl_buffer = _EMPTY
        self._ssl_buffer_view = _EMPTY_VIEW

    def get_buffer(self, n: int) -> memoryview:
        view = _thread_buffer()
        self._ssl_buffer_view = view  # what the base class's buffer_updated() reads from
        return view

    def buffer_updated(self, nbytes: int) -> None:
        try:
            super().buffer_updated(nbytes)  # copies the bytes into the MemoryBIO first
        finally:
            self._ssl_buffer_view = _EMPTY_VIEW


def install_lean_tls_buffers() -> bool:
    """Use `LeanSSLProtocol` for TLS connections made from now on; True if it is in use."""
    global _original
    if os.environ.get("WEBCONF_LEAN_TLS_BUFFERS", "1").strip().lower() in (
            "0", "false", "no", "off") or sys.platform == "win32":
        return False
    if sslproto.SSLProtocol is not LeanSSLProtocol:
        _original = sslproto.SSLProtocol
        sslproto.SSLProtocol = LeanSSLProtocol  # type: ignore[misc]
    return True


def uninstall_lean_tls_buffers() -> None:
    global _original
    if _original is not None:
        sslproto.SSLProtocol = _original  # type: ignore[misc]
        _original = None


def prepare_server_process() -> None:
    """Descriptors and TLS buffers for ~10,000 connections; call before the event loop."""
    raise_nofile_limit()
    install_lean_tls_buffers()
