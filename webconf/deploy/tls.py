"""TLS contexts for every webconf listener and client, built in one place.

The policy is the same everywhere: TLS 1.2 or 1.3 only; on TLS 1.2 only forward-secret
AEAD suites (ECDHE with AES-GCM or ChaCha20); no compression (CRIME) and no renegotiation.
Trust is the deployment's own CA (`certs/ca.pem`) and nothing else: clients never consult
the system store, and the internal API accepts only client certificates that CA issued (and,
past the handshake, only the focus's: the WCS pins its name and EKU on every request).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from webconf.deploy.config import Config

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
"""TLS 1.2 suites; TLS 1.3 suites are all AEAD and stay at OpenSSL's defaults."""


def _harden(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    return ctx


def _cert_files(cfg: Config, name: str) -> tuple[Path, Path]:
    return cfg.certs_dir / f"{name}.pem", cfg.certs_dir / f"{name}.key"


def server_context(
    cfg: Config, name: str, *, require_client_cert: bool = False
) -> ssl.SSLContext:
    """Server context presenting `certs/<name>.pem`; with `require_client_cert`, mTLS.

    mTLS guards the WCS internal API: the handshake itself fails for a client with no
    certificate or one from any CA but the deployment's.
    """
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    cert, key = _cert_files(cfg, name)
    ctx.load_cert_chain(certfile=cert, keyfile=key)
    if require_client_cert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=cfg.certs_dir / "ca.pem")
    return ctx


def client_context_from_ca(ca_pem_path: Path) -> ssl.SSLContext:
    """Client context trusting only `ca_pem_path`, with host-name checking on.

    For clients that hold nothing of a deployment but its CA certificate.
    """
    ctx = _harden(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # CERT_REQUIRED, check_hostname
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=ca_pem_path)
    return ctx


def client_context(cfg: Config, *, client_cert: str | None = None) -> ssl.SSLContext:
    """Client context for the deployment's servers; `client_cert` names a cert in certs/.

    The focus passes "focus-client" to reach the WCS internal API.
    """
    ctx = client_context_from_ca(cfg.certs_dir / "ca.pem")
    if client_cert is not None:
        cert, key = _cert_files(cfg, client_cert)
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    return ctx
