"""Who may call the internal API: the focus, by its client certificate (docs/protocol.md §7.2).

The mTLS handshake proves only that the client holds a certificate the deployment CA issued
(and OpenSSL refuses one whose EKU lists purposes but not clientAuth). That is not enough:
the CA issues server certificates too, and may issue others later. So every request must
also come over a connection whose certificate names the focus, `webconf-focus`
(`pki.FOCUS_CLIENT_CN`) as a DNS SAN, lists clientAuth in an EKU extension (OpenSSL would
accept a certificate with no EKU at all for any purpose) and is no CA; else 403.
"""

from __future__ import annotations

import functools
import ssl

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from webconf.deploy.pki import FOCUS_CLIENT_CN

from ..service import ServiceError
from .errors import Handler

FOCUS_CLIENT_NAME = FOCUS_CLIENT_CN
"""The DNS SAN of the only client the internal API serves (`webconf init` issues it)."""


@functools.lru_cache(maxsize=32)
def is_focus_client(der: bytes) -> bool:
    """Whether the DER certificate is the focus's client certificate (module docstring)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return (FOCUS_CLIENT_NAME in names and ExtendedKeyUsageOID.CLIENT_AUTH in usages
            and not is_ca)


def peer_certificate(request: web.Request) -> bytes | None:
    """The DER certificate the client presented on this request's TLS connection."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    return ssl_object.getpeercert(binary_form=True)


@web.middleware
async def focus_client_only(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse (403) any request whose TLS peer is not the focus."""
    der = peer_certificate(request)
    if der is None or not is_focus_client(der):
        raise ServiceError("forbidden", "this client certificate may not use the internal API")
    return await handler(request)
