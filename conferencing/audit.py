"""The audit log (docs/protocol.md §8.1): `DIR/var/log/audit.log`, JSON lines, fsynced.

It answers "who read or changed what, and which keys were used" after the fact: key creation,
wraps, unwrap failures, availability-key use, rotation, purge, item share and delete, and every
download (who, item, bytes). It never holds keys, PINs, cookies, item names or plaintext: a
record names items, participants and tenants by id only, and `record` refuses the field names
that would carry a secret, so a careless caller fails in tests rather than leaking in
production.

Several processes (WCS workers, the `webconf tenant ...` commands) append to one file: each
record is one `write` on an `O_APPEND` descriptor, so lines never interleave. The server
appends from a writer thread that batches whatever is queued into one write and one `fsync`
(a group commit), so a download never waits on the disk; `close` drains the queue.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

AUDIT_LOG_NAME = "audit.log"
QUEUE_LENGTH = 65_536
"""Records waiting for the writer thread; a full queue makes `record` wait (bounded)."""
FULL_QUEUE_WAIT_SECONDS = 5.0

FORBIDDEN_FIELDS = frozenset({
    "key", "dek", "tik", "secret", "pin", "password", "cookie", "token", "name", "filename",
    "plaintext", "content", "authorization",
})
"""Field names no record may carry: what they would hold must never reach the audit log."""

Scalar = str | int | float | bool | None

log = logging.getLogger("webconf.audit")


class AuditLog:
    """Appends audit records to one file; safe to share between threads and processes."""

    def __init__(self, path: Path, *, threaded: bool = True) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._queue: queue.Queue[bytes | None] = queue.Queue(QUEUE_LENGTH)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0
        """Records lost because the queue stayed full (counted, logged; never expected)."""
        if threaded:
            self._thread = threading.Thread(target=self._drain, name="webconf-audit",
                                             daemon=True)
            self._thread.start()

    @classmethod
    def for_deployment(cls, log_dir: Path, *, threaded: bool = True) -> AuditLog:
        return cls(log_dir / AUDIT_LOG_NAME, threaded=threaded)

    def record(self, event: str, **fields: Scalar) -> None:
        """Append one record `{"ts", "event", **fields}`; durable once the writer syncs."""
        line = encode_record(event, fields)
        if self._thread is None:
            with self._lock:
                os.write(self._fd, line)
                os.fsync(self._fd)
            return
        try:
            self._queue.put(line, timeout=FULL_QUEUE_WAIT_SECONDS)
        except queue.Full:
            self.dropped += 1
            log.error("audit queue full: a %s record was dropped", event)

    def close(self) -> None:
        """Write and sync everything queued, then close the file."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _drain(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = None in batch
            data = b"".join(line for line in batch if line is not None)
            if data:
                try:
                    with self._lock:
                        os.write(self._fd, data)
                        os.fsync(self._fd)
                except OSError:
                    log.exception("audit log write failed")


def encode_record(event: str, fields: dict[str, Scalar]) -> bytes:
    """One JSON line; raises ValueError for a forbidden field name or a non-scalar value."""
    for name, value in fields.items():
        if name.lower() in FORBIDDEN_FIELDS:
            raise ValueError(f"audit records never carry a {name!r} field")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ValueError(f"audit field {name!r} must be a scalar")
    record: dict[str, Any] = {"ts": round(time.time(), 3), "event": event, **fields}
    return (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def read_records(path: Path, *, tenant: str | None = None) -> Iterator[dict[str, Any]]:
    """The records of `path` in order (a torn last line from a crash is skipped)."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    with handle:
        for raw in handle:
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            if tenant is not None and record.get("tenant") != tenant:
                continue
            yield record


# -- `webconf audit DIR [--tenant T]` ------------------------------------------------------------

COLUMNS = ("time", "event", "tenant", "who", "item", "bytes")


def format_table(records: list[dict[str, Any]]) -> str:
    """Records as an aligned text table; fields without a column go in `detail`."""
    rows = [(*COLUMNS, "detail")]
    for record in records:
        when = datetime.fromtimestamp(float(record.get("ts", 0)), UTC)
        shown = {"ts", "event", "tenant", "who", "item", "bytes"}
        detail = " ".join(f"{k}={record[k]}" for k in sorted(record) if k not in shown)
        rows.append((when.strftime("%Y-%m-%d %H:%M:%S"), str(record.get("event", "")),
                     str(record.get("tenant") or ""), str(record.get("who") or ""),
                     str(record.get("item") or ""),
                     "" if record.get("bytes") is None else str(record["bytes"]), detail))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def add_audit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("base_dir", metavar="DIR", help="the deployment directory")
    parser.add_argument("--tenant", help="only this tenant's records")
    parser.add_argument("--json", action="store_true", help="print the JSON lines as stored")


def run_audit(args: argparse.Namespace) -> int:
    from webconf.deploy.config import load_config

    cfg = load_config(args.base_dir)
    records = list(read_records(cfg.log_dir / AUDIT_LOG_NAME, tenant=args.tenant))
    if args.json:
        for record in records:
            print(json.dumps(record, separators=(",", ":"), ensure_ascii=False))
    elif records:
        print(format_table(records))
    else:
        print("no audit records" + (f" for {args.tenant}" if args.tenant else ""))
    return 0
