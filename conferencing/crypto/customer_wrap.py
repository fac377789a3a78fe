"""The wraps of a tenant key protected by a Customer Key (docs/protocol.md §8.4), sans I/O.

A protected tenant key (TIK) version is stored as one JSON document in
`tenant_keys.customer_wraps`::

    {"v": 1,
     "hsm": [{"label": "<HSM key label>", "iv": "<b64 12 bytes>", "wrapped": "<b64>"}, ...],
     "availability": {"version": A, "wrapped": "<b64 nonce || ciphertext || tag>"}}

Each `hsm` entry is the TIK encrypted *inside the customer's HSM* with AES-256-GCM
(CKM_AES_GCM, 128-bit tag) under the AES key of that label; `wrapped` is ciphertext || tag.
The `availability` entry is the same TIK sealed in software under the service's availability
key, version A (keywrap.aead_seal). The AADs bind every wrap to its tenant and TIK version
(and the HSM one to its key label), so a wrap copied to another row fails to open:

* HSM:          ``b"webconf-tenant-key-hsm/v1" || lp(tenant) || u32(T) || lp(label)``
* availability: ``b"webconf-tenant-key-availability/v1" || lp(tenant) || u32(T) || u32(A)``

This module builds and parses the document and does the software half; the HSM half is
conferencing/hsm.py.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from . import keywrap

__all__ = [
    "FORMAT_VERSION",
    "GCM_IV_SIZE",
    "AvailabilityWrap",
    "CustomerWraps",
    "HsmWrap",
    "WrapFormatError",
    "availability_aad",
    "decode",
    "encode",
    "hsm_aad",
    "open_availability",
    "seal_availability",
]

FORMAT_VERSION = 1
GCM_IV_SIZE = 12
MAX_DOCUMENT_BYTES = 16_384
"""A few wraps of a 32-byte key; anything far bigger is not one of ours."""

_HSM_PREFIX = b"webconf-tenant-key-hsm/v1"
_AVAILABILITY_PREFIX = b"webconf-tenant-key-availability/v1"


class WrapFormatError(Exception):
    """A `customer_wraps` document that is not one this code wrote."""


@dataclass(frozen=True)
class HsmWrap:
    label: str
    iv: bytes
    wrapped: bytes
    """ciphertext || 16-byte GCM tag, as the HSM returned it."""


@dataclass(frozen=True)
class AvailabilityWrap:
    version: int
    wrapped: bytes
    """nonce || ciphertext || tag (keywrap.aead_seal)."""


@dataclass(frozen=True)
class CustomerWraps:
    hsm: tuple[HsmWrap, ...]
    availability: AvailabilityWrap


def hsm_aad(tenant: str, tenant_key_version: int, label: str) -> bytes:
    return _HSM_PREFIX + keywrap._lp(tenant) + keywrap._u32(tenant_key_version) + keywrap._lp(
        label)


def availability_aad(tenant: str, tenant_key_version: int, availability_version: int) -> bytes:
    return (_AVAILABILITY_PREFIX + keywrap._lp(tenant) + keywrap._u32(tenant_key_version)
            + keywrap._u32(availability_version))


def seal_availability(availability_key: bytes, tik: bytes, *, tenant: str,
                      tenant_key_version: int, availability_version: int) -> AvailabilityWrap:
    """The TIK under the availability key, bound to its tenant and version."""
    keywrap._check_key(availability_key, "availability key")
    keywrap._check_key(tik, "tenant key")
    aad = availability_aad(tenant, tenant_key_version, availability_version)
    return AvailabilityWrap(availability_version, keywrap.aead_seal(availability_key, tik, aad))


def open_availability(availability_key: bytes, wrap: AvailabilityWrap, *, tenant: str,
                      tenant_key_version: int) -> bytes:
    """Inverse of :func:`seal_availability`; :class:`keywrap.KeyWrapError` on any mismatch."""
    keywrap._check_key(availability_key, "availability key")
    aad = availability_aad(tenant, tenant_key_version, wrap.version)
    tik = keywrap.aead_open(availability_key, wrap.wrapped, aad)
    if len(tik) != keywrap.KEY_SIZE:
        raise keywrap.KeyWrapError("unwrapped tenant key has the wrong size")
    return tik


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise WrapFormatError(f"{what} is not a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise WrapFormatError(f"{what} is not base64") from None


def encode(wraps: CustomerWraps) -> str:
    """The JSON document stored in `tenant_keys.customer_wraps`."""
    return json.dumps({
        "v": FORMAT_VERSION,
        "hsm": [{"label": w.label, "iv": _b64(w.iv), "wrapped": _b64(w.wrapped)}
                for w in wraps.hsm],
        "availability": {"version": wraps.availability.version,
                         "wrapped": _b64(wraps.availability.wrapped)},
    }, separators=(",", ":"))


def decode(document: str) -> CustomerWraps:
    """Parse a stored document; :class:`WrapFormatError` for anything malformed."""
    if len(document) > MAX_DOCUMENT_BYTES:
        raise WrapFormatError("customer wraps document too long")
    try:
        raw = json.loads(document)
    except ValueError:
        raise WrapFormatError("customer wraps document is not JSON") from None
    if not isinstance(raw, dict) or raw.get("v") != FORMAT_VERSION:
        raise WrapFormatError("unknown customer wraps format")
    entries, avail = raw.get("hsm"), raw.get("availability")
    if not isinstance(entries, list) or not entries or not isinstance(avail, dict):
        raise WrapFormatError("customer wraps document lacks its wraps")
    hsm = []
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
            raise WrapFormatError("malformed HSM wrap")
        iv = _unb64(entry.get("iv"), "iv")
        if len(iv) != GCM_IV_SIZE:
            raise WrapFormatError("HSM wrap IV has the wrong size")
        hsm.append(HsmWrap(entry["label"], iv, _unb64(entry.get("wrapped"), "wrapped")))
    version = avail.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise WrapFormatError("malformed availability wrap")
    return CustomerWraps(tuple(hsm), AvailabilityWrap(version, _unb64(avail.get("wrapped"),
                                                                      "wrapped")))
