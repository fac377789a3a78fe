"""What went wrong in a load test: set-up failures raise, run errors are counted by kind."""

from __future__ import annotations

import ssl
from collections.abc import Iterator

import aiohttp

from ..download import DownloadError, ItemIntegrityError
from ..sip import SipError
from ..wcs import WcsError


class LoadtestError(Exception):
    """The load test could not be set up (the run itself never raises: it counts errors)."""


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def error_kind(exc: BaseException) -> str:
    """A short name for an error: sip-401, sip-503, sip-connection, timeout, tls, integrity,
    http-404, network, connection, ... (the report counts errors by these)."""
    if isinstance(exc, SipError):
        if exc.status:
            return f"sip-{exc.status}"
        return "timeout" if any(isinstance(e, TimeoutError) for e in _chain(exc)) \
            else "sip-connection"
    if isinstance(exc, ItemIntegrityError):
        return "integrity"
    if isinstance(exc, DownloadError | WcsError):
        status = exc.status if isinstance(exc, WcsError) else 0
        for inner in _chain(exc):
            if isinstance(inner, WcsError) and inner.status:
                status = inner.status
        if status:
            return f"http-{status}"
    for inner in _chain(exc):
        if isinstance(inner, ssl.SSLError | aiohttp.ClientSSLError):
            return "tls"
    for inner in _chain(exc):
        if isinstance(inner, TimeoutError):
            return "timeout"
    if isinstance(exc, DownloadError | WcsError):
        return "network"
    if isinstance(exc, ConnectionError | OSError | aiohttp.ClientError):
        return "connection"
    return type(exc).__name__.lower()
