"""Digest HA1s sealed at rest under the directory key (docs/protocol.md §2).

An HA1 is password-equivalent for Digest: whoever holds `H(user:realm:password)` answers any
challenge without the password. So the directory never stores one in clear: each is sealed
with AES-256-GCM under `keys/sip-directory.key`, which lives with the other keys and never in
the database. A copy of the database alone therefore cannot sign anyone in.

    sealed = version (1 byte, 1) || nonce (12 random bytes) || AES-256-GCM(HA1 bytes, aad)
    aad    = "webconf-ha1" || u16-length-prefixed realm || username || algorithm

The AAD binds each value to its row and column: moved to another user, another tenant or the
other algorithm's column, it no longer unseals (and that user simply has no credentials).
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SEAL_VERSION = 1
KEY_BYTES = 32
_NONCE_BYTES = 12
_LABEL = b"webconf-ha1"


def _aad(realm: str, username: str, algorithm: str) -> bytes:
    parts = [p.encode("utf-8", "surrogateescape") for p in (realm, username, algorithm)]
    return _LABEL + b"".join(struct.pack(">H", len(p)) + p for p in parts)


class Ha1Seal:
    """Seals and unseals one deployment's HA1s (holds the directory key; never prints it)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the directory key must be {KEY_BYTES} bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "Ha1Seal(<key>)"

    def seal(self, realm: str, username: str, algorithm: str, ha1_hex: str) -> bytes:
        """The stored form of `ha1_hex` for this user and algorithm."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, bytes.fromhex(ha1_hex),
                                    _aad(realm, username, algorithm))
        return bytes([SEAL_VERSION]) + nonce + sealed

    def unseal(self, realm: str, username: str, algorithm: str, stored: bytes) -> str | None:
        """The HA1 hex, or None when `stored` is not this user's sealed HA1 for `algorithm`
        (tampered, moved from another row or column, or sealed under another key)."""
        if len(stored) < 1 + _NONCE_BYTES + 16 or stored[0] != SEAL_VERSION:
            return None
        nonce, sealed = stored[1:1 + _NONCE_BYTES], stored[1 + _NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, sealed, _aad(realm, username, algorithm)).hex()
        except InvalidTag:
            return None
