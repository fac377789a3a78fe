"""Group commit: admissions and revocations that arrive together share one transaction.

A join burst (9:00, or many joins pipelined over the focus's one link) used to cost one
transaction per admission, each a dozen round trips between the event loop and the
database driver. Here callers queue their operation and wait; one task takes whatever
queued while it was idle or busy (up to `MAX_BATCH`) and writes it as ONE transaction, then
answers every caller, only after the COMMIT returned: nothing is acknowledged that a crash
could lose.

- SQLite: the whole batch is one synchronous function run by a dedicated writer thread on a
  direct `sqlite3` connection of its own (the pragmas of webconf/deploy/db.py): one hop to
  the thread per batch, not per statement. It holds the store's write lock meanwhile, so
  the store's other writers (through aiosqlite) queue behind it instead of in SQLite's
  busy handler.
- PostgreSQL: one async transaction per batch, with multi-row statements (executemany,
  `unnest` arrays) whose count does not grow with the batch.

The event log stays exact (log.py, docs/protocol.md §4.4): the batch locks its conferences
first (in id order, so two batches cannot deadlock; every other writer locks just one
conference, first), then inserts and updates the participants, then bumps each
conference's `last_seq` once by its event count and appends its events numbered in the
callers' order; PostgreSQL sends one NOTIFY per conference, on commit. A revocation learns
from UPDATE ... RETURNING whether this batch revoked the participant: an already-gone one
(or a duplicate later in the batch) gets None and appends nothing.

A batch that fails (one operation violating a constraint, a callback raising) is retried
one operation per transaction, so a bad operation fails only its own caller; when the
database cannot be reached (`is_unavailable`), or the transaction cannot begin (SQLite's
lock held elsewhere past the busy timeout), every caller gets the original exception (the
API's 503 for an outage) without retries. A caller cancelled before its batch began has
nothing written; `close` commits what is queued and then refuses new operations.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy import bindparam, exc, insert, select, text, update
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql import ClauseElement

from webconf.deploy.db import (
    SQLITE_BUSY_TIMEOUT_SECONDS,
    is_unavailable,
    sqlite_path,
    sqlite_pragmas,
)

from . import log
from .log import NewEvent
from .schema import conference_events, conferences, participants, revoked_cookies

logger = logging.getLogger("webconf.store")

MAX_BATCH = 256
"""Operations per transaction, at most: bounds a transaction's time and its retry."""


class ParticipantLike(Protocol):
    """What the writer reads of a participant row (store.ParticipantRow)."""

    @property
    def jti(self) -> str: ...

    @property
    def expires_at(self) -> float: ...


P = TypeVar("P", bound=ParticipantLike)
"""The participant row type (store.ParticipantRow), made from a row's columns."""


@dataclass(eq=False)
class Admit:
    """Insert a participant row (`values`, its columns) and append `events`. With
    `only_if_open`, only if the conference, read in the same transaction, has not ended
    and, unless the user is its organizer, is not locked: its result says whether it was
    admitted (without: None). The admission's checks and its row are then one atomic
    step, so a join cannot slip in between a lock (or an end) and its commit."""

    conference_id: str
    values: Mapping[str, Any]
    events: Sequence[NewEvent]
    now: float
    only_if_open: bool = False
    future: asyncio.Future[Any] | None = field(default=None, repr=False)


def _open_for(admit: Admit, organizer: str, locked: bool, ended_at: float | None) -> bool:
    """Whether a guarded admission may go in, given its conference's row."""
    return ended_at is None and (not locked or admit.values["user"] == organizer)


@dataclass(eq=False)
class Revoke(Generic[P]):
    """Mark the participant left and its cookie revoked; append `events(it)`. Its result is
    the participant, or None when unknown, already gone or revoked earlier in the batch."""

    conference_id: str
    pid: str
    now: float
    events: Callable[[P], Sequence[NewEvent]]
    future: asyncio.Future[Any] | None = field(default=None, repr=False)


Op = Admit | Revoke[Any]


class NotStarted(Exception):
    """The batch's transaction could not even begin (SQLite's write lock stayed taken past
    the busy timeout): no operation is to blame, so none is retried alone. Its callers get
    `error`, the original exception."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


Outcome = tuple[list[Any], dict[str, list[log.EventRow]]]
"""Each operation's result in batch order, and each conference's new log rows (in seq
order; the last one's seq is the conference's new last seq)."""


class Target(Protocol):
    """Writes one batch as one transaction and returns only after it committed."""

    async def run(self, batch: Sequence[Op]) -> Outcome: ...

    async def close(self) -> None: ...


class GroupWriter:
    """The queue of pending operations and the task that commits them in batches."""

    def __init__(self, target: Target,
                 announce: Callable[[str, int, Sequence[log.EventRow]], None], *,
                 max_batch: int = MAX_BATCH) -> None:
        self._target = target
        self._announce = announce
        self._max_batch = max_batch
        self._pending: list[Op] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.transactions = 0
        """Committed transactions (batches and lone retries): a test and a bench read it."""
        self.operations = 0
        """Operations acknowledged as committed."""
        self.retried_batches = 0
        """Batches that failed and were retried one operation per transaction."""

    async def submit(self, op: Op) -> Any:
        """Queue `op`; its result once the transaction holding it committed, or its error."""
        if self._closed:
            raise RuntimeError("the store is closed")
        loop = asyncio.get_running_loop()
        op.future = loop.create_future()
        self._pending.append(op)
        if self._task is None:
            # Started on the next turn of the loop: whatever else is submitted in this turn
            # joins the first batch.
            self._task = loop.create_task(self._drain(), name="store-group-commit")
        return await op.future

    async def close(self) -> None:
        """Refuse new operations, commit (or fail) the queued ones, stop the target."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)
        await self._target.close()

    def _take(self) -> list[Op]:
        """The next batch: queued operations whose caller still waits (a caller cancelled
        before its transaction began has nothing written for it)."""
        batch: list[Op] = []
        taken = 0
        for op in self._pending:
            taken += 1
            if op.future is not None and not op.future.done():
                batch.append(op)
                if len(batch) == self._max_batch:
                    break
        del self._pending[:taken]
        return batch

    async def _drain(self) -> None:
        batch: list[Op] = []
        try:
            while self._pending:
                batch = self._take()
                if batch:
                    await self._commit(batch)
                batch = []
        except BaseException as error:  # cancelled with the loop: answer every caller
            stopped = RuntimeError("the store's writer stopped")
            stopped.__cause__ = error
            _fail(batch + self._pending, stopped)
            self._pending.clear()
            raise
        finally:
            self._task = None

    async def _commit(self, batch: list[Op]) -> BaseException | None:
        """Write `batch`, answer its callers; the error if the database is unavailable
        (or the transaction could not begin): the rest of a retry is failed with it."""
        try:
            results, logged = await self._target.run(batch)
        except NotStarted as not_started:
            _fail(batch, not_started.error)
            return not_started.error
        except Exception as error:
            if len(batch) == 1 or is_unavailable(error):
                _fail(batch, error)
                return error if is_unavailable(error) else None
            self.retried_batches += 1
            for i, op in enumerate(batch):
                if op.future is not None and op.future.done():
                    continue  # its caller went away meanwhile: nothing to write for it
                outage = await self._commit([op])
                if outage is not None:
                    _fail(batch[i + 1:], outage)
                    return outage
            return None
        self.transactions += 1
        self.operations += len(batch)
        for conference_id, rows in logged.items():
            try:
                self._announce(conference_id, rows[-1].seq, rows)
            except Exception:  # a wake hook must not keep callers from their answers
                logger.exception(json.dumps({"event": "store.announce_failed"}))
        for op, result in zip(batch, results, strict=True):
            if op.future is not None and not op.future.done():
                op.future.set_result(result)
        return None


def _fail(batch: Sequence[Op], error: BaseException) -> None:
    for op in batch:
        if op.future is not None and not op.future.done():
            op.future.set_exception(error)


def _collect(pending: dict[str, list[tuple[NewEvent, float]]], conference_id: str,
             events: Sequence[NewEvent], now: float) -> None:
    if events:
        pending.setdefault(conference_id, []).extend((e, now) for e in events)


def _event_rows(conference_id: str, last: int,
                events: list[tuple[NewEvent, float]]) -> list[log.EventRow]:
    """The conference's new log rows, numbered up to `last` in the callers' order."""
    first = last - len(events) + 1
    return [log.EventRow(conference_id, first + i, e.type, e.participant_id, e.final,
                         e.payload, now) for i, (e, now) in enumerate(events)]


# -- SQLite: one synchronous function per batch, in the writer thread ------------------------

_SQLITE = sqlite.dialect(paramstyle="named")


def _sql(statement: ClauseElement) -> str:
    """The statement as SQLite SQL with `:name` parameters: the schema stays the one
    source of table and column names."""
    return str(statement.compile(dialect=_SQLITE))


_PARTICIPANT_COLUMNS = tuple(c.name for c in participants.c)
_INSERT_PARTICIPANT = _sql(insert(participants))
_REVOKE = _sql(update(participants).where(
    participants.c.id == bindparam("pid"), participants.c.conference_id == bindparam("conf"),
    participants.c.left_at.is_(None)).values(left_at=bindparam("now")).returning(
    *participants.c))
_INSERT_REVOKED = _sql(insert(revoked_cookies))
_BUMP = _sql(update(conferences).where(conferences.c.id == bindparam("conf")).values(
    last_seq=conferences.c.last_seq + bindparam("n")).returning(conferences.c.last_seq))
_INSERT_EVENT = _sql(insert(conference_events))
_CONFERENCE_STATE = _sql(select(conferences.c.organizer, conferences.c.locked,
                                conferences.c.ended_at).where(
    conferences.c.id == bindparam("conf")))


class SqliteTarget(Generic[P]):
    """Batches written by a dedicated thread on its own `sqlite3` connection."""

    def __init__(self, url: URL, lock: asyncio.Lock,
                 make_participant: Callable[..., P]) -> None:
        database = url.database or ""
        if not database or database == ":memory:":
            raise ValueError("the store needs a SQLite database file, not an in-memory one")
        self._database = database
        self._uri = database.startswith("file:")
        self._path: Path | None = sqlite_path(url.render_as_string(hide_password=False))
        self._lock = lock
        self._make = make_participant
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._conn: sqlite3.Connection | None = None
        """Opened, used and closed by the writer thread only."""

    async def run(self, batch: Sequence[Op]) -> Outcome:
        loop = asyncio.get_running_loop()
        async with self._lock:  # the store's other writers wait here, not in busy retries
            job = loop.run_in_executor(self._executor, self._write, batch)
            try:
                return await asyncio.shield(job)
            except asyncio.CancelledError:
                # Keep the lock until the thread is done: SQLite has one writer at a time.
                await asyncio.wait([job])
                raise

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=True)  # idle by now: the thread just exits

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            # isolation_level=None: no implicit transactions, the batch says BEGIN itself.
            conn = sqlite3.connect(self._database, timeout=SQLITE_BUSY_TIMEOUT_SECONDS,
                                   uri=self._uri, isolation_level=None)
            sqlite_pragmas(conn, None, path=self._path)
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write(self, batch: Sequence[Op]) -> Outcome:
        """The batch's transaction (in the writer thread). IMMEDIATE takes SQLite's write
        lock up front, which is the lock on every conference of the batch."""
        try:
            conn = self._connect()
            _run(conn, "BEGIN IMMEDIATE")
        except sqlite3.Error as error:
            raise NotStarted(_wrapped("connect", error)) from error
        except exc.DBAPIError as error:
            raise NotStarted(error) from error
        try:
            results: list[Any] = []
            pending: dict[str, list[tuple[NewEvent, float]]] = {}
            for op in batch:
                if isinstance(op, Admit):
                    if op.only_if_open:
                        state = _run(conn, _CONFERENCE_STATE,
                                     {"conf": op.conference_id}).fetchone()
                        if state is None or not _open_for(op, *state):
                            results.append(False)
                            continue
                    _run(conn, _INSERT_PARTICIPANT, op.values)
                    results.append(True if op.only_if_open else None)
                    _collect(pending, op.conference_id, op.events, op.now)
                    continue
                row = _run(conn, _REVOKE, {"pid": op.pid, "conf": op.conference_id,
                                           "now": op.now}).fetchall()
                if not row:
                    results.append(None)
                    continue
                p = self._make(**dict(zip(_PARTICIPANT_COLUMNS, row[0], strict=True)))
                _run(conn, _INSERT_REVOKED, {"jti": p.jti, "revoked_at": op.now,
                                             "expires_at": p.expires_at})
                results.append(p)
                _collect(pending, op.conference_id, op.events(p), op.now)
            logged: dict[str, list[log.EventRow]] = {}
            for conference_id, events in pending.items():
                last = int(_run(conn, _BUMP, {"conf": conference_id,
                                              "n": len(events)}).fetchall()[0][0])
                rows = logged[conference_id] = _event_rows(conference_id, last, events)
                _run_many(conn, _INSERT_EVENT, [r.__dict__ for r in rows])
            _run(conn, "COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return results, logged


def _wrapped(statement: str, error: sqlite3.Error) -> exc.StatementError:
    """The SQLAlchemy exception the store's engine would raise for `error`
    (IntegrityError, OperationalError...), so callers see the same exceptions."""
    return exc.DBAPIError.instance(statement, None, error, sqlite3.Error,
                                   hide_parameters=True)


def _run(conn: sqlite3.Connection, sql: str,
         params: Mapping[str, Any] | None = None) -> sqlite3.Cursor:
    try:
        return conn.execute(sql, params or {})
    except sqlite3.Error as error:
        raise _wrapped(sql, error) from error


def _run_many(conn: sqlite3.Connection, sql: str,
              params: Sequence[Mapping[str, Any]]) -> None:
    try:
        conn.executemany(sql, params)
    except sqlite3.Error as error:
        raise _wrapped(sql, error) from error


# -- PostgreSQL: one async transaction per batch, a fixed number of statements ---------------

_PG_LOCK = text(
    "SELECT id, organizer, locked, ended_at FROM conferences "
    "WHERE id = ANY(CAST(:ids AS TEXT[])) ORDER BY id FOR UPDATE")
"""Locks the batch's conferences in id order (the rows are locked as the sort emits them);
their state decides the guarded admissions (`Admit.only_if_open`)."""
_PG_REVOKE = text(
    "WITH revoked AS (UPDATE participants AS p SET left_at = v.now "
    "FROM unnest(CAST(:pids AS TEXT[]), CAST(:confs AS TEXT[]), "
    "CAST(:nows AS DOUBLE PRECISION[])) AS v(id, conference_id, now) "
    "WHERE p.id = ANY(CAST(:pids AS TEXT[])) AND p.id = v.id "
    "AND p.conference_id = v.conference_id AND p.left_at IS NULL RETURNING p.*), "
    "cookies AS (INSERT INTO revoked_cookies (jti, revoked_at, expires_at) "
    "SELECT jti, left_at, expires_at FROM revoked) "
    "SELECT * FROM revoked")
"""Marks left the (distinct) participants of the batch's revocations that are still
active and revokes their cookies: its rows are the ones this transaction revoked."""
_PG_LOG = text(
    "WITH bumped AS (UPDATE conferences AS c SET last_seq = c.last_seq + v.n "
    "FROM unnest(CAST(:ids AS TEXT[]), CAST(:ns AS BIGINT[])) AS v(id, n) "
    "WHERE c.id = v.id RETURNING c.id, c.last_seq, v.n), "
    "logged AS (INSERT INTO conference_events "
    "(conference_id, seq, type, participant_id, final, payload, created_at) "
    "SELECT e.conference_id, b.last_seq - b.n + e.k, e.type, e.participant_id, e.final, "
    "e.payload, e.created_at FROM unnest(CAST(:e_ids AS TEXT[]), CAST(:e_ks AS BIGINT[]), "
    "CAST(:e_types AS TEXT[]), CAST(:e_pids AS TEXT[]), CAST(:e_finals AS BOOLEAN[]), "
    "CAST(:e_payloads AS TEXT[]), CAST(:e_times AS DOUBLE PRECISION[])) "
    "AS e(conference_id, k, type, participant_id, final, payload, created_at) "
    "JOIN bumped AS b ON b.id = e.conference_id) "
    "SELECT id, last_seq, pg_notify(:channel, id || ' ' || last_seq) FROM bumped")
"""One statement for the log: bumps each conference's last seq by its event count, appends
its events numbered `k` = 1..n after the old last seq (log.event_row's columns), and queues
its one NOTIFY, whose payload is log.notify_payload's "<conference id> <seq>"."""


def _log_params(pending: dict[str, list[tuple[NewEvent, float]]]) -> dict[str, Any]:
    """The arrays of `_PG_LOG`: per conference its event count, per event its row."""
    ids = list(pending)
    rows = [(i, k, e, now) for i in ids for k, (e, now) in enumerate(pending[i], 1)]
    return {"ids": ids, "ns": [len(pending[i]) for i in ids],
            "e_ids": [r[0] for r in rows], "e_ks": [r[1] for r in rows],
            "e_types": [r[2].type for r in rows], "e_pids": [r[2].participant_id for r in rows],
            "e_finals": [r[2].final for r in rows], "e_payloads": [r[2].payload for r in rows],
            "e_times": [r[3] for r in rows], "channel": log.NOTIFY_CHANNEL}


class PgTarget(Generic[P]):
    """Batches written as one transaction on the store's async engine."""

    def __init__(self, engine: AsyncEngine, make_participant: Callable[..., P]) -> None:
        self._engine = engine
        self._make = make_participant

    async def close(self) -> None:
        return None

    async def run(self, batch: Sequence[Op]) -> Outcome:
        revokes: dict[tuple[str, str], Revoke[Any]] = {}
        for op in batch:
            if isinstance(op, Revoke):
                revokes.setdefault((op.conference_id, op.pid), op)  # the first in order
        async with self._engine.begin() as conn:
            states = {r.id: r for r in (await conn.execute(
                _PG_LOCK, {"ids": sorted({op.conference_id for op in batch})})).all()}
            refused: set[int] = set()
            for i, op in enumerate(batch):
                if isinstance(op, Admit) and op.only_if_open:
                    state = states.get(op.conference_id)
                    if state is None or not _open_for(op, state.organizer, state.locked,
                                                      state.ended_at):
                        refused.add(i)
            admits = [dict(op.values) for i, op in enumerate(batch)
                      if isinstance(op, Admit) and i not in refused]
            if admits:
                await conn.execute(insert(participants), admits)
            revoked: dict[tuple[str, str], P] = {}
            if revokes:
                ops = list(revokes.values())
                rows = (await conn.execute(_PG_REVOKE, {
                    "pids": [op.pid for op in ops], "confs": [op.conference_id for op in ops],
                    "nows": [op.now for op in ops]})).all()
                for r in rows:
                    revoked[(r.conference_id, r.id)] = self._make(**dict(r._mapping))
            results: list[Any] = []
            pending: dict[str, list[tuple[NewEvent, float]]] = {}
            for i, op in enumerate(batch):
                if isinstance(op, Admit):
                    if i in refused:
                        results.append(False)
                        continue
                    results.append(True if op.only_if_open else None)
                    _collect(pending, op.conference_id, op.events, op.now)
                    continue
                p = revoked.pop((op.conference_id, op.pid), None)  # duplicates: None
                results.append(p)
                if p is not None:
                    _collect(pending, op.conference_id, op.events(p), op.now)
            logged: dict[str, list[log.EventRow]] = {}
            if pending:
                rows = (await conn.execute(_PG_LOG, _log_params(pending))).all()
                logged = {r.id: _event_rows(r.id, int(r.last_seq), pending[r.id])
                          for r in rows}
        return results, logged
