"""The deployment's development PKI: one private CA and the certificates it issues.

`webconf init` makes a CA for one deployment only, so clients trust exactly that
deployment (`curl --cacert DIR/certs/ca.pem`) and nothing it signs is trusted elsewhere.
It issues:

- server certificates for the focus (SIP/TLS) and the WCS (HTTPS and the internal API),
  valid for the host given, `localhost`, 127.0.0.1, ::1 and every tenant domain, because a
  SIP client checks the focus's name against the conference URI's domain;
- the focus's client certificate, the only way past the WCS internal API's mTLS check
  (which also pins its name, `FOCUS_CLIENT_CN`, and its clientAuth EKU).

The CA's private key is written apart from the certificates (`DIR/ca-private/ca.key`, 0600
in a 0700 folder): serving nodes read `certs/` and need no power to issue certificates, so
a copy of what they read must not give it.

Everything is ECDSA P-256 with SHA-256. The profile follows the CA/Browser Forum rules that
strict verifiers enforce (SAN, EKU, AKI/SKI, at most 825 days) so macOS, browsers and
`cryptography`'s own verifier accept the certificates. The functions that build certificates
are pure and return PEM bytes; only `write_deployment_pki` and `read_deployment_ca` touch
the disk.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_VALIDITY = datetime.timedelta(days=3650)
LEAF_VALIDITY = datetime.timedelta(days=825)
"""825 days: the longest server-certificate lifetime Apple platforms accept."""
BACKDATE = datetime.timedelta(hours=1)
"""Tolerates clocks that run a little behind the machine that ran `init`."""
FOCUS_CLIENT_CN = "webconf-focus"

_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")

PemPair = tuple[bytes, bytes]
"""(certificate PEM, private key PEM)."""


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _load_ca(
    ca_cert_pem: bytes, ca_key_pem: bytes
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the CA key must be an ECDSA key")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if ca_key.public_key().public_bytes(*spki) != ca_cert.public_key().public_bytes(*spki):
        raise ValueError("the CA key does not match the CA certificate")
    return ca_cert, ca_key


def normalize_dns_name(name: str) -> str:
    """Lower-case A-label form of a host name; ValueError if it is not a valid DNS name.

    Certificates carry ASCII names only, so an internationalised tenant domain is
    converted to its IDNA (punycode) form here rather than rejected by the x509 encoder.
    """
    candidate = name.strip().rstrip(".").lower()
    if not candidate.isascii():
        try:
            candidate = candidate.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"not a valid DNS name: {name!r}") from None
    labels = candidate.split(".")
    if len(candidate) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"not a valid DNS name: {name!r}")
    return candidate


def _general_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """SAN entries for names given as text: IP literals become IPAddress, the rest DNSName."""
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for raw in names:
        text = raw.strip().strip("[]")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            dns = normalize_dns_name(text)
            if "dns:" + dns not in seen:
                seen.add("dns:" + dns)
                out.append(x509.DNSName(dns))
        else:
            if "ip:" + str(ip) not in seen:
                seen.add("ip:" + str(ip))
                out.append(x509.IPAddress(ip))
    if not out:
        raise ValueError("a server certificate needs at least one name")
    return out


def server_names(host: str, tenant_domains: Sequence[str]) -> list[str]:
    """The names a deployment's server certificates must cover, host first."""
    return [host, "localhost", "127.0.0.1", "::1", *tenant_domains]


def generate_ca(common_name: str | None = None) -> PemPair:
    """A fresh self-signed CA, allowed to sign end-entity certificates only (pathlen 0).

    The random suffix keeps two deployments' CAs apart in a trust store or a browser's
    certificate dialog.
    """
    key = _new_key()
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "webconf"),
        x509.NameAttribute(
            NameOID.COMMON_NAME, common_name or f"webconf dev CA {secrets.token_hex(4)}"
        ),
    ])
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return _cert_pem(cert), _key_pem(key)


def _issue_leaf(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    *,
    common_name: str,
    usage: x509.ObjectIdentifier,
    san: list[x509.GeneralName] | None,
) -> PemPair:
    ca_cert, ca_key = _load_ca(ca_cert_pem, ca_key_pem)
    key = _new_key()
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "webconf"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(min(now + LEAF_VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return _cert_pem(cert), _key_pem(key)


def issue_server_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    names: Sequence[str],
    *,
    common_name: str | None = None,
) -> PemPair:
    """A TLS server certificate for `names` (IP literals and DNS names), signed by the CA.

    Clients match only the SANs; the CN (the first name unless given) is for humans.
    """
    san = _general_names(names)
    if common_name is None:
        first = san[0].value
        common_name = str(first)[:64]
    return _issue_leaf(ca_cert_pem, ca_key_pem, common_name=common_name,
                       usage=ExtendedKeyUsageOID.SERVER_AUTH, san=san)


def issue_client_cert(
    ca_cert_pem: bytes, ca_key_pem: bytes, common_name: str = FOCUS_CLIENT_CN
) -> PemPair:
    """A TLS client certificate (clientAuth only), e.g. the focus's key to the internal API.

    It carries the CN also as a DNS SAN so that verifiers which insist on a SAN accept it.
    """
    return _issue_leaf(ca_cert_pem, ca_key_pem, common_name=common_name,
                       usage=ExtendedKeyUsageOID.CLIENT_AUTH,
                       san=[x509.DNSName(normalize_dns_name(common_name))])


# -- files --------------------------------------------------------------------------------

def write_file_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` with `mode`, replacing any old file in one step.

    The temporary file is created with O_EXCL and its final mode, so a private key is
    never readable by anyone else, not even for an instant, and a reader never sees
    half a file.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits we want (0644 pems)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


CA_KEY_NAME = "ca.key"


def write_deployment_pki(certs_dir: Path, *, host: str, tenant_domains: list[str],
                         ca_private_dir: Path) -> None:
    """Generate a new CA and the focus, WCS and focus-client certificates into `certs_dir`,
    and the CA's private key into `ca_private_dir` alone.

    Files: certs/ca.pem, focus.pem/.key, wcs.pem/.key, focus-client.pem/.key, and
    ca-private/ca.key. Certificates are 0644 (they are public), keys 0600, `certs_dir` 0755,
    `ca_private_dir` 0700. Existing files are replaced; a CA key left in `certs_dir` by an
    older `init` is removed.
    """
    names = server_names(host, tenant_domains)
    _general_names(names)  # validate every name before anything is written
    certs_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(certs_dir, 0o755)  # noqa: S103 -- certificates are public; keys stay 0600
    ca_private_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(ca_private_dir, 0o700)  # mkdir's mode is filtered by the umask
    ca_cert, ca_key = generate_ca()
    issued = {
        "focus": issue_server_cert(ca_cert, ca_key, names),
        "wcs": issue_server_cert(ca_cert, ca_key, names),
        "focus-client": issue_client_cert(ca_cert, ca_key),
    }
    write_file_atomic(ca_private_dir / CA_KEY_NAME, ca_key, 0o600)
    write_file_atomic(certs_dir / "ca.pem", ca_cert, 0o644)
    for stem, (cert_pem, key_pem) in issued.items():
        write_file_atomic(certs_dir / f"{stem}.key", key_pem, 0o600)
        write_file_atomic(certs_dir / f"{stem}.pem", cert_pem, 0o644)
    (certs_dir / CA_KEY_NAME).unlink(missing_ok=True)  # an older layout's; now stale too
    _fsync_dir(certs_dir)


def read_deployment_ca(certs_dir: Path, ca_private_dir: Path) -> PemPair:
    """The deployment CA's (certificate, private key) PEMs, for issuing more certificates;
    checks that the two belong together."""
    ca_cert = (certs_dir / "ca.pem").read_bytes()
    ca_key = (ca_private_dir / CA_KEY_NAME).read_bytes()
    _load_ca(ca_cert, ca_key)
    return ca_cert, ca_key
