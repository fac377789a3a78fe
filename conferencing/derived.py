"""The service's side of deck conversion (docs/protocol.md §9.4): the `DeckHost` that
`conferencing.convert` calls.

- `write_original`: the deck's plaintext, decrypted from the share and verified chunk by
  chunk (conferencing/document.py), written into the job's private directory only;
- `share_pdf`: the PDF through `ConferenceService.store_item`, the same encrypt-and-commit
  path as an upload (a fresh key, the blob, the row with `derived_from`, `item.shared` in
  its transaction), in the name of the deck's presenter;
- `report_failure`: `item.conversion` `failed` in the conference's event log.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from webconf.events import ItemConversion

from . import soffice
from .convert import ConversionRefused, DeckRequest
from .document import DocumentCorrupt, open_document, plaintext
from .service import ConferenceService, Derivation, ServiceError
from .share import ShareError

READ_BYTES = 1024 * 1024

_REFUSALS = {"too_large": soffice.TOO_LARGE, "conference_quota": soffice.QUOTA,
             "tenant_key_unavailable": soffice.KEY_UNAVAILABLE}
"""Service errors that keep a PDF from being stored, and what the presenter is told."""


class ServiceDeckHost:
    """`convert.DeckHost` over the conference service."""

    def __init__(self, service: ConferenceService) -> None:
        self.service = service

    async def write_original(self, request: DeckRequest, path: Path) -> bool:
        service = self.service
        row = await service.store.item(request.conference_id, request.item_id)
        if row is None:
            return False
        try:
            key = await service.item_key(row)
            doc = await open_document(service.share, row.blob_id, key.dek, key.context,
                                      row.ciphertext_size)
        except (ServiceError, ShareError):
            return False
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                async for view in plaintext(service.share, doc, 0, doc.size):
                    await asyncio.to_thread(_write_all, fd, bytes(view))
            except DocumentCorrupt:  # a blob tampered with on the share
                raise ConversionRefused(soffice.INTERNAL, "corrupt") from None
            finally:
                os.close(fd)
        finally:
            doc.close()
        return True

    async def share_pdf(self, request: DeckRequest, pdf: Path) -> bool:
        service = self.service
        original = await service.store.item(request.conference_id, request.item_id)
        if original is None:
            return False
        sha256 = await asyncio.to_thread(_sha256, pdf)
        try:
            await service.store_item(Derivation(original), name=request.pdf_name,
                                     content_type=soffice.PDF_TYPE, body=_chunks(pdf),
                                     max_bytes=service.cfg.wcs.max_upload_bytes,
                                     sha256=sha256)
        except ServiceError as exc:
            reason = _REFUSALS.get(exc.code)
            if reason is None:  # the deck or its conference went meanwhile
                return False
            raise ConversionRefused(reason) from None
        service.metrics.items_shared.inc()
        return True

    async def report_failure(self, request: DeckRequest, reason: str) -> None:
        await self.service.announce(request.conference_id,
                                    ItemConversion(request.item_id, "failed", reason))


async def _chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as f:
        while chunk := await asyncio.to_thread(f.read, READ_BYTES):
            yield chunk


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(READ_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
