"""Only the focus reaches the internal API (issue 15, finding 8; docs/protocol.md §7.2).

The mTLS handshake admits any certificate the deployment CA issued; past it, the WCS pins
the focus's own: DNS SAN `webconf-focus`, EKU clientAuth, not a CA. Admissions name only
configured tenants, and the CA's private key stays out of what a serving node reads.
Real WCS, real TLS, certificates issued by the deployment's own CA.
"""

from __future__ import annotations

import argparse
import datetime
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conferencing.api.peer import is_focus_client
from webconf.deploy import init as deploy
from webconf.deploy import pki, tls
from webconf.deploy.config import Config
from webconf.deploy.init import init_deployment

from .conftest import TENANTS, Wcs, running_wcs

ORGANIZER = "alice@contoso.example"


def deployment_ca(cfg: Config) -> tuple[bytes, bytes]:
    return pki.read_deployment_ca(cfg.certs_dir, cfg.ca_private_dir)


def client_ctx(cfg: Config, tmp_path: Path, pair: tuple[bytes, bytes]) -> ssl.SSLContext:
    cert_pem, key_pem = pair
    (tmp_path / "client.pem").write_bytes(cert_pem)
    (tmp_path / "client.key").write_bytes(key_pem)
    ctx = tls.client_context(cfg)
    ctx.load_cert_chain(tmp_path / "client.pem", tmp_path / "client.key")
    return ctx


def cert_without_eku(cfg: Config, san: str) -> tuple[bytes, bytes]:
    """A leaf of the deployment CA with the focus's name but no EKU at all, which OpenSSL
    accepts for any purpose: only the WCS's own check refuses it."""
    ca_pem, ca_key_pem = deployment_ca(cfg)
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, san)]))
            .issuer_name(ca.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


async def internal_call(wcs: Wcs, ctx: ssl.SSLContext, method: str, path: str,
                        body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """(status, JSON body), or (0, None) when the TLS handshake itself refused the client."""
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session:
        try:
            async with session.request(method, f"{wcs.internal_url}{path}", json=body) as resp:
                data = await resp.json() if resp.content_type == "application/json" else None
                return resp.status, data
        except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
            return 0, None


ADMIT = ("POST", "/internal/v1/conferences/ID1/participants",
         {"tenant": "contoso.example", "organizer": ORGANIZER, "user": ORGANIZER})


async def assert_refused(wcs: Wcs, ctx: ssl.SSLContext, *, handshake_ok: bool) -> None:
    for method, path, body in (("GET", "/internal/v1/healthz", None), ADMIT,
                               ("DELETE", "/internal/v1/conferences/ID1", None)):
        status, data = await internal_call(wcs, ctx, method, path, body)
        if handshake_ok:
            assert status == 403, (path, data)
            assert data["error"]["code"] == "forbidden"
        else:
            assert status in (0, 403), (path, data)


async def test_the_focus_certificate_works(wcs: Wcs) -> None:
    status, data = await internal_call(wcs, tls.client_context(wcs.cfg,
                                                               client_cert="focus-client"),
                                       *ADMIT)
    assert status == 201, data
    async with wcs.internal.get(f"{wcs.internal_url}/internal/v1/healthz") as resp:
        assert resp.status == 200


@pytest.mark.parametrize("name", ["mallory", "webconf-focus.example", "webconf-wcs"])
async def test_another_client_name_from_the_same_ca_is_refused(
        wcs: Wcs, tmp_path: Path, name: str) -> None:
    ca_pem, ca_key = deployment_ca(wcs.cfg)
    ctx = client_ctx(wcs.cfg, tmp_path, pki.issue_client_cert(ca_pem, ca_key, name))
    await assert_refused(wcs, ctx, handshake_ok=True)
    assert wcs.server is not None and wcs.server.service is not None
    assert await wcs.server.service.store.tenant_key("contoso.example") is None  # no admit


async def test_a_server_certificate_with_the_focus_name_is_refused(
        wcs: Wcs, tmp_path: Path) -> None:
    """serverAuth only: OpenSSL refuses it in the handshake; the WCS would refuse it too."""
    ca_pem, ca_key = deployment_ca(wcs.cfg)
    pair = pki.issue_server_cert(ca_pem, ca_key, [pki.FOCUS_CLIENT_CN])
    await assert_refused(wcs, client_ctx(wcs.cfg, tmp_path, pair), handshake_ok=False)
    # ...and the WCS's own check says no to it as well, whatever OpenSSL does.
    der = x509.load_pem_x509_certificate(pair[0]).public_bytes(serialization.Encoding.DER)
    assert not is_focus_client(der)


async def test_a_certificate_without_eku_is_refused(wcs: Wcs, tmp_path: Path) -> None:
    ctx = client_ctx(wcs.cfg, tmp_path, cert_without_eku(wcs.cfg, pki.FOCUS_CLIENT_CN))
    await assert_refused(wcs, ctx, handshake_ok=True)


async def test_an_unknown_tenant_is_refused_and_gets_no_key(wcs: Wcs) -> None:
    for tenant, user in (("evil.invalid", "mallory@evil.invalid"),
                         ("CONTOSO.example", "alice@CONTOSO.example")):
        async with wcs.internal.post(
                f"{wcs.internal_url}/internal/v1/conferences/EV1/participants",
                json={"tenant": tenant, "organizer": user, "user": user}) as resp:
            assert resp.status == 403
            assert (await resp.json())["error"]["code"] == "unknown_tenant"
        assert wcs.server is not None and wcs.server.service is not None
        assert await wcs.server.service.store.tenant_key(tenant) is None
    # Configured tenants still work.
    for tenant in TENANTS:
        await wcs.admit("EV1", f"alice@{tenant}")


def _holds_ca_key(cfg: Config, directory: Path) -> list[Path]:
    """Files in `directory` holding the private key of the deployment CA's certificate."""
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    ca_public = x509.load_pem_x509_certificate(
        (cfg.certs_dir / "ca.pem").read_bytes()).public_key().public_bytes(*spki)
    found = []
    for path in directory.iterdir():
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (ValueError, TypeError):
            continue
        if key.public_key().public_bytes(*spki) == ca_public:
            found.append(path)
    return found


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_init_keeps_the_ca_key_out_of_certs(tmp_path: Path) -> None:
    cfg = init_deployment(tmp_path / "dep", tenants=TENANTS)
    assert _holds_ca_key(cfg, cfg.certs_dir) == []
    assert not (cfg.certs_dir / "ca.key").exists()
    assert _holds_ca_key(cfg, cfg.ca_private_dir) == [cfg.ca_private_dir / "ca.key"]
    assert _mode(cfg.ca_private_dir) == 0o700
    assert _mode(cfg.ca_private_dir / "ca.key") == 0o600
    assert not cfg.ca_private_dir.is_relative_to(cfg.certs_dir)


def test_init_force_moves_an_old_layout_and_can_still_issue(tmp_path: Path) -> None:
    cfg = init_deployment(tmp_path / "dep", tenants=TENANTS)
    # An older init left the CA key in certs/.
    (cfg.certs_dir / "ca.key").write_bytes((cfg.ca_private_dir / "ca.key").read_bytes())
    again = init_deployment(cfg.base_dir, tenants=TENANTS, force=True)
    assert not (again.certs_dir / "ca.key").exists()
    assert _holds_ca_key(again, again.certs_dir) == []
    ca_pem, ca_key = pki.read_deployment_ca(again.certs_dir, again.ca_private_dir)
    issued = x509.load_pem_x509_certificate(pki.issue_client_cert(ca_pem, ca_key)[0])
    issued.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))


def test_summary_names_the_ca_key_folder(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    deploy.add_init_arguments(parser)
    assert deploy.run_init(parser.parse_args([str(tmp_path / "dep")])) == 0
    out = capsys.readouterr().out
    assert str(tmp_path / "dep" / "ca-private" / "ca.key") in out


async def test_a_serving_node_needs_no_ca_key(deployment: Config) -> None:
    """What `serve` reads holds no CA key: the WCS runs with the folder gone."""
    for path in deployment.ca_private_dir.iterdir():
        path.unlink()
    deployment.ca_private_dir.rmdir()
    async with running_wcs(deployment) as wcs:
        alice = await wcs.admit("NK1", ORGANIZER)
        async with wcs.http.get(wcs.items_url("NK1"), headers=alice.headers) as resp:
            assert resp.status == 200
