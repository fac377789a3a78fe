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
  These are private CPython internals (checked on 3.11-3.13): before installing,
  `lean_tls_contract_problems()` probes them, and on a CPython where they changed the patch
  stays out and logs one warning. `tests/test_capacity_guard.py` fails loudly on such a CPython.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import platform
import resource
import ssl
import sys
import threading
from asyncio import base_events, selector_events, sslproto
from typing import Any

_BUFFER_SIZE: int = getattr(sslproto.SSLProtocol, "max_size", 256 * 1024)
_local = threading.local()
_EMPTY = bytearray()
_EMPTY_VIEW = memoryview(_EMPTY)
_original: type[sslproto.SSLProtocol] | None = None
_warned = False
log = logging.getLogger(__name__)


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


def _code_names(owner: object, attr: str) -> frozenset[str]:
    """The global and attribute names a function's code refers to; empty if it is gone."""
    code = getattr(getattr(owner, attr, None), "__code__", None)
    return frozenset(code.co_names) if code is not None else frozenset()


def _params(owner: object, attr: str) -> list[str] | None:
    func = getattr(owner, attr, None)
    return list(inspect.signature(func).parameters) if callable(func) else None


def _probe_buffer_contract(base: type[sslproto.SSLProtocol]) -> list[str]:
    """Build an unconnected base protocol and check where it receives and what it copies."""
    probe: Any = None
    try:
        factory: Any = base  # no loop and no waiter: __init__ only stores them
        probe = factory(None, asyncio.Protocol(), ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
                        None, server_side=True)
        own = probe._ssl_buffer
        if not (isinstance(own, bytearray) and probe._ssl_buffer_view.obj is own):
            return ["__init__ no longer sets _ssl_buffer/_ssl_buffer_view"]
        probe._ssl_buffer_view = memoryview(bytearray(b"lean-probe"))
        probe.buffer_updated(len(b"lean-probe"))  # state UNWRAPPED: only the copy happens
        if probe._incoming.read() != b"lean-probe":
            return ["buffer_updated() no longer copies _ssl_buffer_view[:nbytes] into _incoming"]
    except Exception as exc:  # any change in the internals shows up here
        return [f"probing SSLProtocol failed: {type(exc).__name__}: {exc}"]
    finally:  # 3.12+ makes the app transport in __init__; it warns if dropped unclosed
        app_transport = getattr(probe, "_app_transport", None)
        if app_transport is not None:
            app_transport._closed = True
    return []


def lean_tls_contract_problems() -> list[str]:
    """What of the private asyncio contract `LeanSSLProtocol` relies on no longer holds.

    Empty on the CPythons the patch was written for. Checks: the class the loops instantiate
    is looked up at call time as `sslproto.SSLProtocol`; the selector transport calls
    `get_buffer`, `recv_into` and `buffer_updated` back to back; the base protocol keeps its
    receive buffer in `_ssl_buffer`/`_ssl_buffer_view` and `buffer_updated()` copies from
    the view into its MemoryBIO `_incoming` before anything else.
    """
    base = LeanSSLProtocol.__bases__[0]
    problems: list[str] = []
    if not isinstance(getattr(base, "max_size", None), int):
        problems.append("SSLProtocol.max_size is not an int")
    if not issubclass(base, asyncio.BufferedProtocol):
        problems.append("SSLProtocol is no longer a BufferedProtocol")
    if _params(base, "get_buffer") != ["self", "n"]:
        problems.append("SSLProtocol.get_buffer(self, n) changed")
    if _params(base, "buffer_updated") != ["self", "nbytes"]:
        problems.append("SSLProtocol.buffer_updated(self, nbytes) changed")
    if "_ssl_buffer_view" not in _code_names(base, "buffer_updated"):
        problems.append("SSLProtocol.buffer_updated() no longer reads _ssl_buffer_view")
    for module, owner, method in (
            (selector_events, selector_events.BaseSelectorEventLoop, "_make_ssl_transport"),
            (base_events, base_events.BaseEventLoop, "start_tls")):
        if getattr(module, "sslproto", None) is not sslproto or not (
                {"sslproto", "SSLProtocol"} <= _code_names(owner, method)):
            problems.append(f"{module.__name__}: {method}() no longer instantiates "
                            "sslproto.SSLProtocol")
    transport = getattr(selector_events, "_SelectorSocketTransport", None)
    if not {"get_buffer", "recv_into", "buffer_updated"} <= _code_names(
            transport, "_read_ready__get_buffer"):
        problems.append("_SelectorSocketTransport._read_ready__get_buffer() changed")
    if not problems:
        problems += _probe_buffer_contract(base)
    return problems


def install_lean_tls_buffers() -> bool:
    """Use `LeanSSLProtocol` for TLS connections made from now on; True if it is in use."""
    global _original, _warned
    if os.environ.get("WEBCONF_LEAN_TLS_BUFFERS", "1").strip().lower() in (
            "0", "false", "no", "off") or sys.platform == "win32":
        return False
    if sslproto.SSLProtocol is not LeanSSLProtocol and (
            problems := lean_tls_contract_problems()):
        if not _warned:
            _warned = True
            log.warning("lean TLS receive buffers off: CPython %s changed asyncio.sslproto "
                        "internals (%s); each TLS connection keeps its own %d KiB buffer",
                        platform.python_version(), "; ".join(problems), _BUFFER_SIZE // 1024)
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
