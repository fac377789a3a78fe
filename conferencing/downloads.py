"""Who may download, and the record of each download (docs/protocol.md §8.3).

Two switches, both read with the item in the download's one query (store.DownloadSwitches),
so a change is seen by the next request on every node:

- the tenant's `server_decrypt` (`webconf tenant set`, tenant_settings.py) turns the
  decrypting download (`/document`) off for everyone: 403 `server_decrypt_disabled`;
- the conference's `downloads` (its organizer's `PATCH /v1/conferences/{conf}`,
  conference_settings.py) forbids
  attendees both downloads (`/content` and `/document`): 403 `downloads_disabled`.
  Presenters and the organizer still download; the key endpoint and the channel, which
  attendees need to follow the meeting, stay open.

Every download that sent a response body is audited as `item.download` with the bytes it
actually sent, also when it was cut short.
"""

from __future__ import annotations

import json
import logging
from typing import Literal

from .audit import AuditLog
from .metrics import Metrics
from .service import Principal, ServiceError
from .store import DownloadSwitches, ItemRow

DownloadPath = Literal["content", "document"]

log = logging.getLogger("webconf.wcs.download")


def check_download(who: Principal, switches: DownloadSwitches, path: DownloadPath) -> None:
    """Refuse (403) a download the switches forbid; the tenant's switch is told first."""
    if path == "document" and not switches.server_decrypt:
        raise ServiceError("server_decrypt_disabled",
                           "this tenant does not serve decrypted downloads")
    if not switches.downloads and who.role == "attendee":
        raise ServiceError("downloads_disabled",
                           "the organizer has turned downloads off for attendees")


def record_download(audit: AuditLog, who: Principal, row: ItemRow, sent: int,
                    path: DownloadPath) -> None:
    """The audit record of one download: who, which item, the bytes actually sent."""
    audit.record("item.download", tenant=who.tenant, conference=who.conference_id,
                 who=who.participant_id, item=row.id, bytes=sent, path=path)


def report_tampered(metrics: Metrics, who: Principal, row: ItemRow, kind: str,
                    chunk: int | None, sent: int) -> None:
    """Log and count a blob that failed verification: ids and what failed, no secret."""
    metrics.documents_tampered.labels(kind).inc()
    log.error(json.dumps({"event": "document.tampered", "tenant": who.tenant,
                          "conference": who.conference_id, "item": row.id,
                          "blob": row.blob_id, "kind": kind, "chunk": chunk, "sent": sent}))
