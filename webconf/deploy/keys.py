"""The deployment's long-lived secrets, one small file each in `cfg.keys_dir`.

- `root-v<N>.key`   32 random bytes: the service root key, version N. It wraps the tenant
                    keys; losing it crypto-shreds every item, so files are never replaced.
                    The newest version present wraps new tenant keys; `webconf keys
                    rotate-root` moves versions no longer used to `retired/`.
- `cookie-<kid>.pem` Ed25519 private key (PKCS#8 PEM): the cookie-signing key ring. The key
                    named by `keys.cookie_signing_kid` signs; every key in the ring verifies.
- `sip-nonce.key`   32 random bytes: the HMAC secret behind the focus's stateless Digest
                    nonces (every focus node shares it, so any node can verify a nonce).
- `sip-directory.key` 32 random bytes: the AES-256-GCM key that seals the directory's Digest
                    HA1s at rest (focus/ha1_seal.py), so a copy of the database alone signs
                    no one in. Every focus node and `webconf user` use the same one.
- `availability-v<N>.key` 32 random bytes: the Customer Key availability key (docs/protocol.md
                    §8.4). It wraps the tenant keys of Customer Key tenants too, for use
                    only while their HSM cannot be reached; made by the first `webconf
                    tenant customer-key`.

Files are created with O_EXCL and mode 0600 in a 0700 directory, and loading refuses any
file that group or other could read or write: a leaked root key undoes the whole key
hierarchy, so we would rather not start than run with one exposed. Nothing here logs or
formats key bytes.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from webconf.deploy.config import Config

SECRET_BYTES = 32
NONCE_KEY_NAME = "sip-nonce.key"
DIRECTORY_KEY_NAME = "sip-directory.key"
RETIRED_DIR = "retired"
AVAILABILITY_KEY_VERSION = 1
"""The availability key version new wraps use (a later rotation adds v2 beside it)."""
MAX_PIN_BYTES = 256
MAX_PEM_BYTES = 4096
"""An Ed25519 PKCS#8 PEM is ~120 bytes; anything far bigger is not one of ours."""

_ROOT_RE = re.compile(r"^root-v([1-9][0-9]{0,8})\.key$")
_COOKIE_RE = re.compile(r"^cookie-([A-Za-z0-9_.-]{1,64})\.pem$")
_KID_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")


class KeyFileError(Exception):
    """A key file is missing, malformed, or not private to its owner."""


def root_key_path(cfg: Config, version: int) -> Path:
    return cfg.keys_dir / f"root-v{version}.key"


def cookie_key_path(cfg: Config, kid: str) -> Path:
    if not _KID_RE.match(kid):
        raise KeyFileError(f"invalid cookie key id {kid!r} (use letters, digits, '.', '_', '-')")
    return cfg.keys_dir / f"cookie-{kid}.pem"


def nonce_key_path(cfg: Config) -> Path:
    return cfg.keys_dir / NONCE_KEY_NAME


def directory_key_path(cfg: Config) -> Path:
    return cfg.keys_dir / DIRECTORY_KEY_NAME


def availability_key_path(cfg: Config, version: int = AVAILABILITY_KEY_VERSION) -> Path:
    return cfg.keys_dir / f"availability-v{version}.key"


# -- writing --------------------------------------------------------------------------------

def _ensure_keys_dir(cfg: Config) -> Path:
    keys_dir = cfg.keys_dir
    keys_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)  # mkdir's mode is filtered by the umask; a pre-existing dir too
    return keys_dir


def _write_new_secret(path: Path, data: bytes) -> None:
    """Create `path` holding `data`, 0600 from the first instant; fail if it exists.

    Key files are never overwritten: replacing a root key would make every wrapped
    tenant key undecryptable.
    """
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _ed25519_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def add_root_key(cfg: Config, version: int) -> None:
    """Create root key `version` (rotation: then set keys.root_key_version to it)."""
    if version < 1:
        raise KeyFileError(f"root key versions start at 1, got {version}")
    _ensure_keys_dir(cfg)
    _write_new_secret(root_key_path(cfg, version), secrets.token_bytes(SECRET_BYTES))


def add_cookie_key(cfg: Config, kid: str) -> None:
    """Add an Ed25519 key `kid` to the cookie ring (rotation: then make it the signing kid)."""
    path = cookie_key_path(cfg, kid)
    _ensure_keys_dir(cfg)
    _write_new_secret(path, _ed25519_pem())


def create_keys(cfg: Config) -> None:
    """Create the configured root key, cookie-signing key and nonce secret if missing.

    Keys already present are kept, so re-running `init --force` over a deployment never
    destroys the root key its stored items depend on.
    """
    _ensure_keys_dir(cfg)
    if not root_key_path(cfg, cfg.keys.root_key_version).exists():
        add_root_key(cfg, cfg.keys.root_key_version)
    if not cookie_key_path(cfg, cfg.keys.cookie_signing_kid).exists():
        add_cookie_key(cfg, cfg.keys.cookie_signing_kid)
    if not nonce_key_path(cfg).exists():
        _write_new_secret(nonce_key_path(cfg), secrets.token_bytes(SECRET_BYTES))
    if not directory_key_path(cfg).exists():
        _write_new_secret(directory_key_path(cfg), secrets.token_bytes(SECRET_BYTES))


# -- reading --------------------------------------------------------------------------------

def _read_private(path: Path, *, max_bytes: int) -> bytes:
    """Read a key file after checking it is a regular file no one else can read or write."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise KeyFileError(f"missing key file {path} (run `webconf init`?)") from None
    except OSError as exc:
        raise KeyFileError(f"cannot open key file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"key file {path} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"key file {path} has mode {mode:04o}, readable or writable by group/other; "
                f"refusing to use it (run `chmod 600 {path}` if it has not leaked)"
            )
        if st.st_size > max_bytes:
            raise KeyFileError(f"key file {path} is {st.st_size} bytes, too long for a key")
        data = b""
        while len(data) <= max_bytes and (chunk := os.read(fd, max_bytes + 1 - len(data))):
            data += chunk
        if len(data) > max_bytes:
            raise KeyFileError(f"key file {path} is too long for a key")
        return data
    finally:
        os.close(fd)


def _read_secret(path: Path) -> bytes:
    data = _read_private(path, max_bytes=MAX_PEM_BYTES)
    if len(data) != SECRET_BYTES:
        raise KeyFileError(f"key file {path} holds {len(data)} bytes, expected {SECRET_BYTES}")
    return data


def _listing(cfg: Config) -> list[str]:
    try:
        return sorted(os.listdir(cfg.keys_dir))
    except FileNotFoundError:
        raise KeyFileError(f"no keys directory {cfg.keys_dir} (run `webconf init`?)") from None


def load_root_keys(cfg: Config, *, require_configured: bool = True) -> dict[int, bytes]:
    """Every root key version present (not those moved to `retired/`); the configured
    current version must be among them, unless a running server re-reads the directory
    after `webconf keys rotate-root` changed it (`require_configured=False`)."""
    keys: dict[int, bytes] = {}
    for name in _listing(cfg):
        m = _ROOT_RE.match(name)
        if m:
            keys[int(m.group(1))] = _read_secret(cfg.keys_dir / name)
    if require_configured and cfg.keys.root_key_version not in keys:
        raise KeyFileError(
            f"missing key file {root_key_path(cfg, cfg.keys.root_key_version)} "
            f"for keys.root_key_version={cfg.keys.root_key_version}"
        )
    return keys


def retired_keys_dir(cfg: Config) -> Path:
    """Where `webconf keys rotate-root` moves root keys no tenant key uses any more."""
    return cfg.keys_dir / RETIRED_DIR


def load_retired_root_keys(cfg: Config) -> dict[int, bytes]:
    """The root keys in `retired/`: a rerun of an interrupted rotation may still find a
    tenant key wrapped under one of them (docs/protocol.md §8.5)."""
    keys: dict[int, bytes] = {}
    folder = retired_keys_dir(cfg)
    if not folder.is_dir():
        return keys
    for name in sorted(os.listdir(folder)):
        m = _ROOT_RE.match(name)
        if m:
            keys[int(m.group(1))] = _read_secret(folder / name)
    return keys


def retire_root_key(cfg: Config, version: int) -> bool:
    """Move root key `version` to `retired/` (0700): no server loads it from there, but it
    is not destroyed, since a database backup may still hold tenant keys wrapped under it.
    Deleting it from `retired/` is the operator's irreversible step. False if absent."""
    source = root_key_path(cfg, version)
    if not source.exists():
        return False
    folder = retired_keys_dir(cfg)
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    os.rename(source, folder / source.name)
    for directory in (folder, cfg.keys_dir):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return True


def load_cookie_keys(cfg: Config) -> dict[str, Ed25519PrivateKey]:
    """The cookie key ring by kid; the configured signing kid must be among them."""
    ring: dict[str, Ed25519PrivateKey] = {}
    for name in _listing(cfg):
        m = _COOKIE_RE.match(name)
        if not m:
            continue
        path = cfg.keys_dir / name
        pem = _read_private(path, max_bytes=MAX_PEM_BYTES)
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError):
            raise KeyFileError(f"key file {path} is not an unencrypted PEM private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"key file {path} is not an Ed25519 key")
        ring[m.group(1)] = key
    if cfg.keys.cookie_signing_kid not in ring:
        raise KeyFileError(
            f"missing key file {cookie_key_path(cfg, cfg.keys.cookie_signing_kid)} "
            f"for keys.cookie_signing_kid={cfg.keys.cookie_signing_kid!r}"
        )
    return ring


def load_nonce_secret(cfg: Config) -> bytes:
    """The focus's Digest-nonce HMAC secret (the same on every focus node)."""
    return _read_secret(nonce_key_path(cfg))


def load_directory_key(cfg: Config) -> bytes:
    """The key sealing the directory's HA1s. A deployment made before it existed gets it
    on first use (its keys directory must exist: that is a deployment); two processes
    racing to create it agree on the one written first (O_EXCL)."""
    path = directory_key_path(cfg)
    if not path.exists():
        _listing(cfg)  # no keys directory: not a deployment, say so
        try:
            _write_new_secret(path, secrets.token_bytes(SECRET_BYTES))
        except KeyFileError:
            pass  # another process created it first
    return _read_secret(path)


def load_availability_key(cfg: Config, version: int = AVAILABILITY_KEY_VERSION, *,
                          create: bool = False) -> bytes:
    """The Customer Key availability key `version`; `create`: make it first if missing (two
    processes racing agree on the one written first, O_EXCL). Only `webconf tenant
    customer-key` creates it: a WCS that finds none cannot use it."""
    path = availability_key_path(cfg, version)
    if create and not path.exists():
        _listing(cfg)  # no keys directory: not a deployment, say so
        try:
            _write_new_secret(path, secrets.token_bytes(SECRET_BYTES))
        except KeyFileError:
            pass  # another process created it first
    return _read_secret(path)


def read_pin_file(path: Path) -> str:
    """An HSM user PIN from its file: one line, the file private to its owner (0600) like a
    key file, else KeyFileError. Neither the PIN nor the file's bytes appear in any message."""
    data = _read_private(path, max_bytes=MAX_PIN_BYTES)
    try:
        pin = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise KeyFileError(f"PIN file {path} is not UTF-8 text") from None
    if not pin or "\n" in pin or "\x00" in pin:
        raise KeyFileError(f"PIN file {path} must hold the PIN on one line")
    return pin
