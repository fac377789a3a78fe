"""Entity tags for item content that say nothing about the share.

A blob's id is its file name on the share, so an ETag made of it would let anyone who can
list the share tie each file to an item and its conference. The tag is instead a keyed hash
of the blob id: HMAC-SHA256 under a key derived from the current root key
(`HKDF-SHA256(ikm=root key, info=b"webconf-etag/v1")`, docs/protocol.md §4.1), truncated
to 128 bits and written as 32 hex digits (the shape the OpenAPI document gives it). It
stays a strong validator (one blob, one tag, and a blob's bytes never change); every node
with the same keys computes the same tag, and a root-key rotation changes every tag once
(clients just download again). The decrypting download's plaintext has a tag of its own
(`document_etag`), so a cache never mixes the two representations.
"""

from __future__ import annotations

import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ETAG_KEY_INFO = b"webconf-etag/v1"
TAG_BYTES = 16
DOCUMENT_PREFIX = b"document\x00"
"""Prefixed to the blob id for the plaintext's tag; no blob id (32 hex digits) starts so."""


class EtagMinter:
    """Computes the quoted strong ETag of a blob id."""

    def __init__(self, root_key: bytes) -> None:
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                         info=ETAG_KEY_INFO).derive(root_key)

    def etag(self, blob_id: str) -> str:
        digest = hmac.digest(self._key, blob_id.encode("utf-8"), "sha256")[:TAG_BYTES]
        return f'"{digest.hex()}"'

    def document_etag(self, blob_id: str) -> str:
        """The tag of the item's plaintext (`/document`, docs/protocol.md §8.3): another
        representation than the ciphertext, so another tag (RFC 9110 §8.8.3), from the
        same key over an input no blob id can be (blob ids are hex digits only)."""
        message = DOCUMENT_PREFIX + blob_id.encode("utf-8")
        digest = hmac.digest(self._key, message, "sha256")[:TAG_BYTES]
        return f'"{digest.hex()}"'
