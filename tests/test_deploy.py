"""`webconf init`: the files it lays out, the PKI it generates, and the TLS policy in use.

The TLS tests run real handshakes over loopback: the point is that a client without the
focus's certificate cannot reach the internal API, and that old protocols are refused,
and only a real handshake proves either.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import os
import sqlite3
import ssl
import stat
from contextlib import suppress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

from conferencing.store.migrations import SCHEMA as WCS_SCHEMA
from webconf.deploy import init as deploy
from webconf.deploy import keys, migrate, pki, tls
from webconf.deploy.config import Config, load_config
from webconf.deploy.init import DeployError, init_deployment

TENANTS = ["contoso.example", "fabrikam.example"]
CERT_STEMS = ["ca", "focus", "wcs", "focus-client"]


def _key_file(cfg: Config, stem: str) -> Path:
    """Where init puts `stem`'s private key: the CA's apart from `certs/` (issue 15)."""
    return cfg.ca_private_dir / "ca.key" if stem == "ca" else cfg.certs_dir / f"{stem}.key"


@pytest.fixture
def cfg(tmp_path: Path) -> Config:
    return init_deployment(tmp_path / "dep", tenants=TENANTS)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


# -- layout ---------------------------------------------------------------------------------

def test_init_writes_every_file(cfg: Config) -> None:
    base = cfg.base_dir
    assert (base / "webconf.toml").is_file()
    for stem in CERT_STEMS:
        assert (cfg.certs_dir / f"{stem}.pem").is_file()
        assert _key_file(cfg, stem).is_file()
    assert (cfg.keys_dir / "root-v1.key").is_file()
    assert (cfg.keys_dir / "cookie-k1.pem").is_file()
    assert (cfg.keys_dir / "sip-nonce.key").is_file()
    for directory in (cfg.var_dir, cfg.share_dir, cfg.log_dir):
        assert directory.is_dir()
        assert _mode(directory) == 0o700
    assert cfg.share_dir == base / "var" / "share"
    # no temp files left behind by the atomic writes
    assert not [p for p in cfg.certs_dir.iterdir() if p.name.startswith(".")]


def test_private_files_are_0600_and_keys_dir_0700(cfg: Config) -> None:
    assert _mode(cfg.keys_dir) == 0o700
    for path in cfg.keys_dir.iterdir():
        assert _mode(path) == 0o600, path
    for stem in CERT_STEMS:
        assert _mode(_key_file(cfg, stem)) == 0o600
        assert _mode(cfg.certs_dir / f"{stem}.pem") == 0o644
    assert _mode(cfg.certs_dir) in (0o700, 0o755)


def test_modes_hold_even_with_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        c = init_deployment(tmp_path / "dep")
    finally:
        os.umask(old)
    assert _mode(c.keys_dir) == 0o700
    assert all(_mode(p) == 0o600 for p in c.keys_dir.iterdir())
    assert all(_mode(p) == 0o600 for p in c.certs_dir.glob("*.key"))
    assert _mode(c.share_dir) == 0o700


def test_config_round_trips(cfg: Config) -> None:
    again = load_config(cfg.base_dir, env={})
    assert again == cfg
    assert again.server.host == "127.0.0.1"
    assert again.focus.sip_port == 5061
    assert again.wcs.https_port == 8443
    assert again.wcs.internal_port == 8444
    assert again.tenants.domains == TENANTS
    assert again.public_url == "https://127.0.0.1:8443"


def test_init_arguments_land_in_the_config(tmp_path: Path) -> None:
    c = init_deployment(tmp_path / "d", host="webconf.test", sip_port=15061, https_port=18443,
                        internal_port=18444)
    assert c.tenants.domains == ["contoso.example"]
    assert (c.server.host, c.focus.sip_port, c.wcs.https_port, c.wcs.internal_port) == (
        "webconf.test", 15061, 18443, 18444)
    sans = _sans(_cert(c.certs_dir / "focus.pem"))
    assert "webconf.test" in sans.get_values_for_type(x509.DNSName)


def test_env_override(cfg: Config) -> None:
    env = {"WEBCONF_WCS_HTTPS_PORT": "9443", "WEBCONF_TENANTS_DOMAINS": "a.example, b.example"}
    c = load_config(cfg.base_dir, env=env)
    assert c.wcs.https_port == 9443
    assert c.tenants.domains == ["a.example", "b.example"]
    assert c.public_url == "https://127.0.0.1:9443"


def test_second_init_needs_force_and_force_keeps_keys(cfg: Config) -> None:
    with pytest.raises(DeployError, match="already exists"):
        init_deployment(cfg.base_dir)
    root_before = keys.load_root_keys(cfg)
    ca_before = (cfg.certs_dir / "ca.pem").read_bytes()
    again = init_deployment(cfg.base_dir, tenants=["contoso.example", "new.example"], force=True)
    assert keys.load_root_keys(again) == root_before
    assert (cfg.certs_dir / "ca.pem").read_bytes() != ca_before
    assert "new.example" in _sans(_cert(cfg.certs_dir / "wcs.pem")).get_values_for_type(
        x509.DNSName)


@pytest.mark.parametrize("kwargs", [
    {"tenants": ["not a domain"]},
    {"host": "bad host!"},
    {"sip_port": 70000},
    {"https_port": 8444},  # clashes with the internal port
    {"database": "postgresql://127.0.0.1/test"},  # not an async driver
    {"database": "not a url"},
    {"database": "postgresql+asyncpg://127.0.0.1:1/test"},  # nothing listens: no config left
])
def test_init_rejects_bad_arguments_and_writes_nothing(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(DeployError):
        init_deployment(tmp_path / "dep", **kwargs)
    assert not (tmp_path / "dep" / "webconf.toml").exists()


def test_run_init_prints_a_summary_without_secrets(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    deploy.add_init_arguments(parser)
    base = tmp_path / "dep"
    args = parser.parse_args([str(base), "--tenant", "contoso.example",
                              "--tenant", "fabrikam.example", "--https-port", "9443"])
    assert deploy.run_init(args) == 0
    out = capsys.readouterr().out
    assert str(base / "certs" / "ca.pem") in out
    assert "https://127.0.0.1:9443" in out
    assert f"webconf user add {base} alice@contoso.example" in out
    assert f"webconf serve {base}" in out
    cfg = load_config(base, env={})
    assert "PRIVATE KEY" not in out
    for secret in [*keys.load_root_keys(cfg).values(), keys.load_nonce_secret(cfg)]:
        assert secret.hex() not in out
    assert deploy.run_init(args) == 1
    assert "already exists" in capsys.readouterr().err


# -- certificates ---------------------------------------------------------------------------

def test_server_cert_names_cover_host_localhost_and_tenants(cfg: Config) -> None:
    for stem in ("focus", "wcs"):
        sans = _sans(_cert(cfg.certs_dir / f"{stem}.pem"))
        dns = sans.get_values_for_type(x509.DNSName)
        ips = sans.get_values_for_type(x509.IPAddress)
        assert ipaddress.ip_address("127.0.0.1") in ips  # the host, and loopback
        assert ipaddress.ip_address("::1") in ips
        assert "localhost" in dns
        for tenant in TENANTS:
            assert tenant in dns


def test_certs_chain_to_the_ca(cfg: Config) -> None:
    ca = _cert(cfg.certs_dir / "ca.pem")
    assert ca.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.startswith(
        "webconf dev CA ")
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    for stem in ("focus", "wcs", "focus-client"):
        leaf = _cert(cfg.certs_dir / f"{stem}.pem")
        assert leaf.signature_hash_algorithm is not None
        ca_key.verify(leaf.signature, leaf.tbs_certificate_bytes,
                      ec.ECDSA(leaf.signature_hash_algorithm))
        leaf.verify_directly_issued_by(ca)
        assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
        lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
        assert lifetime <= datetime.timedelta(days=825, hours=1)
        assert leaf.not_valid_before_utc < datetime.datetime.now(datetime.UTC)


def test_server_certs_pass_an_rfc5280_verifier_for_every_name(cfg: Config) -> None:
    store = Store([_cert(cfg.certs_dir / "ca.pem")])
    for stem in ("focus", "wcs"):
        leaf = _cert(cfg.certs_dir / f"{stem}.pem")
        subjects: list[x509.DNSName | x509.IPAddress] = [
            x509.DNSName(n) for n in ["localhost", *TENANTS]]
        subjects += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
        for subject in subjects:
            chain = PolicyBuilder().store(store).build_server_verifier(subject).verify(leaf, [])
            assert chain[0] == leaf


def test_focus_client_cert_is_for_client_auth_only(cfg: Config) -> None:
    leaf = _cert(cfg.certs_dir / "focus-client.pem")
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "webconf-focus"
    store = Store([_cert(cfg.certs_dir / "ca.pem")])
    PolicyBuilder().store(store).build_client_verifier().verify(leaf, [])
    server_eku = _cert(cfg.certs_dir / "wcs.pem").extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    assert list(server_eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_issue_server_cert_rejects_a_mismatched_ca_key() -> None:
    ca_cert, _ = pki.generate_ca()
    _, other_key = pki.generate_ca()
    with pytest.raises(ValueError, match="does not match"):
        pki.issue_server_cert(ca_cert, other_key, ["localhost"])


# -- keys -----------------------------------------------------------------------------------

def test_keys_load(cfg: Config) -> None:
    roots = keys.load_root_keys(cfg)
    assert list(roots) == [1] and len(roots[1]) == 32
    ring = keys.load_cookie_keys(cfg)
    assert list(ring) == ["k1"] and isinstance(ring["k1"], Ed25519PrivateKey)
    nonce = keys.load_nonce_secret(cfg)
    assert len(nonce) == 32 and nonce != roots[1]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o620, 0o604])
def test_key_loading_refuses_a_key_others_can_touch(cfg: Config, mode: int) -> None:
    path = cfg.keys_dir / "root-v1.key"
    path.chmod(mode)
    with pytest.raises(keys.KeyFileError) as err:
        keys.load_root_keys(cfg)
    assert str(path) in str(err.value) and f"{mode:04o}" in str(err.value)
    cookie = cfg.keys_dir / "cookie-k1.pem"
    cookie.chmod(mode)
    with pytest.raises(keys.KeyFileError, match="0" + f"{mode:o}"):
        keys.load_cookie_keys(cfg)
    nonce = cfg.keys_dir / "sip-nonce.key"
    nonce.chmod(mode)
    with pytest.raises(keys.KeyFileError):
        keys.load_nonce_secret(cfg)


def test_key_loading_refuses_the_wrong_length(cfg: Config) -> None:
    path = cfg.keys_dir / "root-v2.key"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, b"x" * 31)
    os.close(fd)
    with pytest.raises(keys.KeyFileError, match="31 bytes"):
        keys.load_root_keys(cfg)


def test_key_loading_refuses_a_non_ed25519_cookie_key(cfg: Config) -> None:
    _, ec_key_pem = pki.generate_ca()
    path = cfg.keys_dir / "cookie-ec.pem"
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    os.write(fd, ec_key_pem)
    os.close(fd)
    with pytest.raises(keys.KeyFileError, match="Ed25519"):
        keys.load_cookie_keys(cfg)


def test_key_rotation(cfg: Config) -> None:
    keys.add_cookie_key(cfg, "k2")
    keys.add_root_key(cfg, 2)
    assert _mode(cfg.keys_dir / "cookie-k2.pem") == 0o600
    assert _mode(cfg.keys_dir / "root-v2.key") == 0o600
    assert sorted(keys.load_cookie_keys(cfg)) == ["k1", "k2"]
    roots = keys.load_root_keys(cfg)
    assert sorted(roots) == [1, 2] and roots[1] != roots[2]
    with pytest.raises(keys.KeyFileError, match="already exists"):
        keys.add_cookie_key(cfg, "k2")
    with pytest.raises(keys.KeyFileError, match="already exists"):
        keys.add_root_key(cfg, 1)
    with pytest.raises(keys.KeyFileError, match="invalid cookie key id"):
        keys.add_cookie_key(cfg, "../evil")
    rotated = load_config(cfg.base_dir, env={"WEBCONF_KEYS_COOKIE_SIGNING_KID": "k3",
                                            "WEBCONF_KEYS_ROOT_KEY_VERSION": "3"})
    with pytest.raises(keys.KeyFileError, match="cookie-k3.pem"):
        keys.load_cookie_keys(rotated)
    with pytest.raises(keys.KeyFileError, match="root-v3.key"):
        keys.load_root_keys(rotated)


def test_key_loading_without_init_says_so(tmp_path: Path) -> None:
    with pytest.raises(keys.KeyFileError, match="webconf init"):
        keys.load_root_keys(Config(base_dir=tmp_path))


# -- TLS over loopback ----------------------------------------------------------------------

class Refused(Exception):
    """The client got no application data: the handshake or the first read failed."""


async def _talk(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext,
                server_hostname: str = "127.0.0.1") -> tuple[str, str]:
    """Handshake and read the server's greeting; (TLS version, cipher) or Refused."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"hello\n")
            await writer.drain()
            await reader.read(100)
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=server_hostname), 10)
        except (ssl.SSLError, ssl.CertificateError, ConnectionError) as exc:
            raise Refused(f"handshake: {exc!r}") from exc
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
            except (ssl.SSLError, ConnectionError) as exc:
                raise Refused(f"read: {exc!r}") from exc
            if line != b"hello\n":
                raise Refused(f"closed before any data ({line!r})")
            ssl_object = writer.get_extra_info("ssl_object")
            return ssl_object.version(), ssl_object.cipher()[0]
        finally:
            writer.close()
            with suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


BOTH_VERSIONS = pytest.mark.parametrize(
    "version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls12", "tls13"])


def _pinned(client: ssl.SSLContext, version: ssl.TLSVersion) -> ssl.SSLContext:
    client.minimum_version = client.maximum_version = version
    return client


@BOTH_VERSIONS
async def test_internal_api_mtls_accepts_the_focus_client(cfg: Config,
                                                          version: ssl.TLSVersion) -> None:
    server = tls.server_context(cfg, "wcs", require_client_cert=True)
    client = _pinned(tls.client_context(cfg, client_cert="focus-client"), version)
    await _talk(server, client)


@BOTH_VERSIONS
async def test_internal_api_mtls_refuses_a_client_without_cert(cfg: Config,
                                                              version: ssl.TLSVersion) -> None:
    server = tls.server_context(cfg, "wcs", require_client_cert=True)
    with pytest.raises(Refused):
        await _talk(server, _pinned(tls.client_context(cfg), version))


@BOTH_VERSIONS
async def test_internal_api_mtls_refuses_a_foreign_ca_client(
    cfg: Config, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    foreign_ca, foreign_ca_key = pki.generate_ca()
    cert_pem, key_pem = pki.issue_client_cert(foreign_ca, foreign_ca_key)
    (tmp_path / "evil.pem").write_bytes(cert_pem)
    (tmp_path / "evil.key").write_bytes(key_pem)
    client = _pinned(tls.client_context(cfg), version)
    client.load_cert_chain(tmp_path / "evil.pem", tmp_path / "evil.key")
    server = tls.server_context(cfg, "wcs", require_client_cert=True)
    with pytest.raises(Refused):
        await _talk(server, client)


async def test_internal_api_mtls_refuses_a_server_cert_used_as_client_cert(cfg: Config) -> None:
    server = tls.server_context(cfg, "wcs", require_client_cert=True)
    with pytest.raises(Refused):
        await _talk(server, tls.client_context(cfg, client_cert="wcs"))


async def test_client_refuses_a_server_from_another_ca(cfg: Config, tmp_path: Path) -> None:
    foreign_ca, foreign_ca_key = pki.generate_ca()
    cert_pem, key_pem = pki.issue_server_cert(foreign_ca, foreign_ca_key, ["127.0.0.1"])
    (tmp_path / "s.pem").write_bytes(cert_pem)
    (tmp_path / "s.key").write_bytes(key_pem)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "s.pem", tmp_path / "s.key")
    with pytest.raises(Refused):
        await _talk(server, tls.client_context(cfg))
    # ...while the foreign CA's own file does trust it
    (tmp_path / "foreign-ca.pem").write_bytes(foreign_ca)
    await _talk(server, tls.client_context_from_ca(tmp_path / "foreign-ca.pem"))


async def test_client_checks_the_name_against_tenant_domains(cfg: Config) -> None:
    server = tls.server_context(cfg, "focus")
    client = tls.client_context_from_ca(cfg.certs_dir / "ca.pem")
    for name in ["localhost", "::1", *TENANTS]:
        await _talk(server, client, server_hostname=name)
    with pytest.raises(Refused):
        await _talk(server, client, server_hostname="evil.example")


async def test_tls12_uses_ecdhe_aead(cfg: Config) -> None:
    client = tls.client_context(cfg)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    version, cipher = await _talk(tls.server_context(cfg, "focus"), client)
    assert version == "TLSv1.2"
    assert cipher.startswith("ECDHE-")
    assert "AES128-GCM" in cipher or "AES256-GCM" in cipher or "CHACHA20" in cipher


async def test_tls12_refuses_cbc_suites(cfg: Config) -> None:
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cfg.certs_dir / "ca.pem")
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA")
    with pytest.raises(Refused):
        await _talk(tls.server_context(cfg, "focus"), client)


async def test_tls13_works(cfg: Config) -> None:
    client = tls.client_context(cfg)
    client.minimum_version = ssl.TLSVersion.TLSv1_3
    version, _ = await _talk(tls.server_context(cfg, "focus"), client)
    assert version == "TLSv1.3"


def _tls11_client(ca_pem: Path) -> ssl.SSLContext:
    """A client that offers TLS 1.0/1.1 only, with OpenSSL's own floor lowered."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(ca_pem)
    client.minimum_version = ssl.TLSVersion.TLSv1
    client.maximum_version = ssl.TLSVersion.TLSv1_1
    client.set_ciphers("ALL:@SECLEVEL=0")
    return client


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
async def test_tls11_is_refused(cfg: Config) -> None:
    ca_pem = cfg.certs_dir / "ca.pem"
    try:
        client = _tls11_client(ca_pem)
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"local OpenSSL cannot build a TLS 1.1 client: {exc}")
    # Control: the same client against a deliberately permissive server must succeed,
    # or a refusal below would prove nothing about our server's policy.
    permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    permissive.minimum_version = ssl.TLSVersion.TLSv1
    permissive.set_ciphers("ALL:@SECLEVEL=0")
    permissive.load_cert_chain(cfg.certs_dir / "focus.pem", cfg.certs_dir / "focus.key")
    try:
        version, _ = await _talk(permissive, client)
    except Refused as exc:
        pytest.skip(f"local OpenSSL cannot negotiate TLS 1.1 even with a permissive peer: {exc}")
    assert version == "TLSv1.1"
    with pytest.raises(Refused):
        await _talk(tls.server_context(cfg, "focus"), _tls11_client(ca_pem))


def test_init_database_and_share_land_in_the_config_and_are_migrated(tmp_path: Path) -> None:
    db = tmp_path / "elsewhere" / "store.db"
    db.parent.mkdir()
    cfg = init_deployment(tmp_path / "dep", database=f"sqlite+aiosqlite:///{db}",
                          share=str(tmp_path / "mnt" / "share"))
    assert cfg.store_url == f"sqlite+aiosqlite:///{db}"
    assert cfg.share_dir == tmp_path / "mnt" / "share" and cfg.share_dir.is_dir()
    with sqlite3.connect(db) as conn:
        versions = {table: conn.execute(f"SELECT version_num FROM {table}").fetchone()[0]
                    for table in ("alembic_version_wcs", "alembic_version_focus")}
    assert versions == {"alembic_version_wcs": migrate._head(WCS_SCHEMA),
                        "alembic_version_focus": "0001"}
