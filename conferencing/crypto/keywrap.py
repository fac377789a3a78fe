"""Key hierarchy for items at rest (docs/protocol.md §5).

::

    root key (service key file, 0600; later a tenant's Customer Key), version R
      └─ wraps tenant key (per tenant), version T
           └─ wraps DEK (32 random bytes per item, never reused)
                ├─ is the Cobblestone-256 input key of the item's blob (context = item_context)
                └─ HKDF-SHA256 -> item metadata key (names, content types)

Every wrap is AES-256-GCM with a fresh random 96-bit nonce; the stored form is
``nonce(12) || ciphertext || tag(16)``.  The AAD binds each wrapped key to where it belongs, so
a wrapped key copied to another row, tenant or version fails to unwrap:

* DEK:          ``b"webconf-dek/v1" || lp(tenant) || lp(conference_id) || lp(item_id)
                || u32(tenant_key_version)``
* tenant key:   ``b"webconf-tenant-key/v1" || lp(tenant) || u32(tenant_key_version)
                || u32(root_key_version)``
* item field:   ``lp(field) || context`` (context = the item's Cobblestone context), under
                ``HKDF-SHA256(ikm=DEK, salt=None, info=b"webconf-item-meta/v1", length=32)``

``lp(x)`` is the 2-byte big-endian length of the UTF-8 bytes followed by the bytes; ``u32`` is
4-byte big-endian.  Rotation rewraps keys and never re-encrypts blobs; deleting the wrapped DEK
crypto-shreds the item.  Random nonces are safe here: each key wraps few messages (far below the
2**32 random-nonce limit for AES-GCM).
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "KEY_SIZE",
    "KeyWrapError",
    "aead_open",
    "aead_seal",
    "new_key",
    "open_item_field",
    "seal_item_field",
    "unwrap_dek",
    "unwrap_tenant_key",
    "wrap_dek",
    "wrap_tenant_key",
]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

_DEK_PREFIX = b"webconf-dek/v1"
_TENANT_KEY_PREFIX = b"webconf-tenant-key/v1"
_ITEM_META_INFO = b"webconf-item-meta/v1"


class KeyWrapError(Exception):
    """A wrapped key or sealed field failed to open: wrong key, wrong AAD, or tampering."""


def new_key() -> bytes:
    """A fresh 256-bit key (DEK, tenant key or root key) from the OS CSPRNG."""
    return os.urandom(KEY_SIZE)


def _lp(value: str) -> bytes:
    """2-byte big-endian length prefix + UTF-8, so AAD fields can never run into each other."""
    raw = value.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("AAD component longer than 65535 bytes")
    return len(raw).to_bytes(2, "big") + raw


def _u32(value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError("key version must fit in 32 bits")
    return value.to_bytes(4, "big")


def _check_key(key: bytes, what: str) -> None:
    if len(key) != KEY_SIZE:
        raise ValueError(f"{what} must be {KEY_SIZE} bytes, got {len(key)}")


def _seal_with_nonce(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM with an explicit nonce; only for aead_seal and known-answer tests."""
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def aead_seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """AES-GCM seal with a random nonce: ``nonce || ciphertext || tag``."""
    return _seal_with_nonce(key, os.urandom(NONCE_SIZE), plaintext, aad)


def aead_open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    """Inverse of :func:`aead_seal`; every failure is a :class:`KeyWrapError`."""
    if len(sealed) < NONCE_SIZE + TAG_SIZE:
        raise KeyWrapError("sealed value too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
    except InvalidTag:
        raise KeyWrapError("authentication failed") from None


def _dek_aad(tenant: str, conference_id: str, item_id: str, tenant_key_version: int) -> bytes:
    return _DEK_PREFIX + _lp(tenant) + _lp(conference_id) + _lp(item_id) + _u32(tenant_key_version)


def _tenant_key_aad(tenant: str, tenant_key_version: int, root_key_version: int) -> bytes:
    return _TENANT_KEY_PREFIX + _lp(tenant) + _u32(tenant_key_version) + _u32(root_key_version)


def wrap_dek(
    tenant_key: bytes,
    dek: bytes,
    *,
    tenant: str,
    conference_id: str,
    item_id: str,
    tenant_key_version: int,
) -> bytes:
    """Wrap an item's DEK under the tenant key, bound to the item and the tenant-key version."""
    _check_key(tenant_key, "tenant key")
    _check_key(dek, "DEK")
    aad = _dek_aad(tenant, conference_id, item_id, tenant_key_version)
    return aead_seal(tenant_key, dek, aad)


def unwrap_dek(
    tenant_key: bytes,
    wrapped_dek: bytes,
    *,
    tenant: str,
    conference_id: str,
    item_id: str,
    tenant_key_version: int,
) -> bytes:
    """Unwrap a DEK; raises :class:`KeyWrapError` if any binding or byte differs."""
    _check_key(tenant_key, "tenant key")
    aad = _dek_aad(tenant, conference_id, item_id, tenant_key_version)
    dek = aead_open(tenant_key, wrapped_dek, aad)
    if len(dek) != KEY_SIZE:
        raise KeyWrapError("unwrapped DEK has the wrong size")
    return dek


def wrap_tenant_key(
    root_key: bytes,
    tenant_key: bytes,
    *,
    tenant: str,
    tenant_key_version: int,
    root_key_version: int,
) -> bytes:
    """Wrap a tenant key under a root key, bound to the tenant and both key versions."""
    _check_key(root_key, "root key")
    _check_key(tenant_key, "tenant key")
    aad = _tenant_key_aad(tenant, tenant_key_version, root_key_version)
    return aead_seal(root_key, tenant_key, aad)


def unwrap_tenant_key(
    root_key: bytes,
    wrapped_tenant_key: bytes,
    *,
    tenant: str,
    tenant_key_version: int,
    root_key_version: int,
) -> bytes:
    """Unwrap a tenant key; raises :class:`KeyWrapError` if any binding or byte differs."""
    _check_key(root_key, "root key")
    aad = _tenant_key_aad(tenant, tenant_key_version, root_key_version)
    key = aead_open(root_key, wrapped_tenant_key, aad)
    if len(key) != KEY_SIZE:
        raise KeyWrapError("unwrapped tenant key has the wrong size")
    return key


def _item_meta_key(dek: bytes) -> bytes:
    """Separate key for metadata so the DEK itself only ever keys Cobblestone."""
    _check_key(dek, "DEK")
    return HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=_ITEM_META_INFO).derive(
        dek
    )


def seal_item_field(dek: bytes, field: str, value: str, *, context: bytes) -> bytes:
    """Encrypt an item metadata field (name, content type) bound to the field name and item."""
    aad = _lp(field) + context
    return aead_seal(_item_meta_key(dek), value.encode("utf-8"), aad)


def open_item_field(dek: bytes, field: str, sealed: bytes, *, context: bytes) -> str:
    """Decrypt a field sealed by :func:`seal_item_field`; a swapped field or item fails."""
    aad = _lp(field) + context
    raw = aead_open(_item_meta_key(dek), sealed, aad)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyWrapError("sealed field is not UTF-8") from None
