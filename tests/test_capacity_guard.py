"""Guard for `webconf.deploy.capacity`'s patch of private `asyncio.sslproto` internals.

The lean TLS receive buffers replace `asyncio.sslproto.SSLProtocol` and reach into its
`_ssl_buffer`/`_ssl_buffer_view`. A CPython release may rename or rework those at any time;
these tests name the CPython in their failure so the patch is revisited, not silently
trusted. They then run a real TLS exchange over loopback with the patch installed.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import platform
import ssl
from asyncio import base_events, selector_events, sslproto
from collections.abc import Iterator
from typing import Any

import pytest

from webconf.deploy import capacity, tls
from webconf.deploy.config import Config

CPYTHON = f"CPython {platform.python_version()} ({platform.python_implementation()})"
FIX = "revisit webconf/deploy/capacity.py (LeanSSLProtocol) for this Python"


@pytest.fixture
def lean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The patch installed for one test, and the stdlib class restored afterwards."""
    monkeypatch.delenv("WEBCONF_LEAN_TLS_BUFFERS", raising=False)
    assert capacity.install_lean_tls_buffers(), (
        f"{CPYTHON}: install_lean_tls_buffers() refused: "
        f"{capacity.lean_tls_contract_problems()}; {FIX}")
    try:
        yield
    finally:
        capacity.uninstall_lean_tls_buffers()
    assert sslproto.SSLProtocol is capacity.LeanSSLProtocol.__bases__[0]


def test_the_private_names_the_patch_touches_exist() -> None:
    base = capacity.LeanSSLProtocol.__bases__[0]
    assert base.__module__ == "asyncio.sslproto", f"{CPYTHON}: SSLProtocol moved; {FIX}"
    assert isinstance(getattr(base, "max_size", None), int), (
        f"{CPYTHON}: asyncio.sslproto.SSLProtocol.max_size is gone; {FIX}")
    assert issubclass(base, asyncio.BufferedProtocol), (
        f"{CPYTHON}: SSLProtocol is no longer a BufferedProtocol; {FIX}")
    assert list(inspect.signature(base.get_buffer).parameters) == ["self", "n"], (
        f"{CPYTHON}: SSLProtocol.get_buffer signature changed; {FIX}")
    assert list(inspect.signature(base.buffer_updated).parameters) == ["self", "nbytes"], (
        f"{CPYTHON}: SSLProtocol.buffer_updated signature changed; {FIX}")
    for name in ("_ssl_buffer", "_ssl_buffer_view"):
        assert name in base.__init__.__code__.co_names, (
            f"{CPYTHON}: SSLProtocol.__init__ no longer sets {name}; {FIX}")
    assert "_ssl_buffer_view" in base.buffer_updated.__code__.co_names, (
        f"{CPYTHON}: SSLProtocol.buffer_updated no longer reads _ssl_buffer_view; {FIX}")
    # The loops must look the class up at call time, or replacing it changes nothing.
    for owner, method in ((selector_events.BaseSelectorEventLoop, "_make_ssl_transport"),
                          (base_events.BaseEventLoop, "start_tls")):
        names = getattr(owner, method).__code__.co_names
        assert "sslproto" in names and "SSLProtocol" in names, (
            f"{CPYTHON}: {owner.__name__}.{method} no longer builds sslproto.SSLProtocol; {FIX}")
    read = selector_events._SelectorSocketTransport._read_ready__get_buffer  # type: ignore[attr-defined]
    assert {"get_buffer", "recv_into", "buffer_updated"} <= set(read.__code__.co_names), (
        f"{CPYTHON}: the selector transport's buffered read changed; {FIX}")


def test_the_patch_finds_its_contract_intact() -> None:
    problems = capacity.lean_tls_contract_problems()
    assert problems == [], f"{CPYTHON}: {problems}; {FIX}"


def test_a_changed_cpython_keeps_the_stdlib_class_and_warns_once(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Emulate a CPython that renamed the receive view: the patch must stay out, not corrupt."""
    base = capacity.LeanSSLProtocol.__bases__[0]

    def renamed_buffer_updated(self: Any, nbytes: int) -> None:
        self._incoming.write(self._recv_view[:nbytes])

    monkeypatch.setattr(base, "buffer_updated", renamed_buffer_updated)
    monkeypatch.setattr(capacity, "_warned", False)
    monkeypatch.delenv("WEBCONF_LEAN_TLS_BUFFERS", raising=False)
    problems = capacity.lean_tls_contract_problems()
    assert problems and any("buffer_updated" in p for p in problems), problems
    with caplog.at_level(logging.WARNING, logger=capacity.__name__):
        assert capacity.install_lean_tls_buffers() is False
        assert capacity.install_lean_tls_buffers() is False
    assert sslproto.SSLProtocol is base
    warnings = [r for r in caplog.records if r.name == capacity.__name__]
    assert len(warnings) == 1
    assert platform.python_version() in warnings[0].getMessage()


async def test_tls_over_loopback_uses_the_shared_buffer(deployment: Config, lean: None) -> None:
    """A real TLS echo with the patch in: bytes intact, no per-connection 256 KiB buffer, and
    the ciphertext arrives through the thread's one shared buffer."""
    capacity._local.view = None  # a fresh zero-filled shared buffer for this thread
    server_protocols: list[Any] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_protocols.append(writer.transport._ssl_protocol)  # type: ignore[attr-defined]
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0,
                                        ssl=tls.server_context(deployment, "wcs"))
    port = server.sockets[0].getsockname()[1]
    client_ctx: ssl.SSLContext = tls.client_context(deployment)
    try:
        client_protocols: list[Any] = []
        for i in range(2):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1")
            client_protocols.append(writer.transport._ssl_protocol)  # type: ignore[attr-defined]
            payload = bytes(range(256)) * 1200 + bytes([i])  # > 16 KiB TLS records
            writer.write(payload)
            await writer.drain()
            assert await reader.readexactly(len(payload)) == payload
            assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            writer.close()
            await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()

    shared = capacity._local.view
    assert shared is not None, f"{CPYTHON}: get_buffer() of the lean protocol was never called"
    assert any(shared), f"{CPYTHON}: no ciphertext was received into the shared buffer; {FIX}"
    protocols = server_protocols + client_protocols
    assert len(protocols) == 4
    for protocol in protocols:
        assert type(protocol) is capacity.LeanSSLProtocol, (
            f"{CPYTHON}: the loop did not instantiate the patched class; {FIX}")
        assert len(protocol._ssl_buffer) == 0  # the base class's 256 KiB buffer was dropped
        assert protocol.get_buffer(-1) is shared
        assert len(shared) == capacity.LeanSSLProtocol.max_size
