"""The metadata store: conferences, participants, items, tenant keys, revocations.

A thin typed layer over SQLAlchemy Core (async). It knows rows, not HTTP and not crypto:
everything it stores is already wrapped or sealed by the service layer. Only portable SQL
is used so the same code runs on SQLite (embedded) and PostgreSQL (scale-out).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import Select, and_, delete, exists, func, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from webconf.deploy.db import open_engine
from webconf.deploy.migrate import (
    SchemaError,
    SchemaStatus,
    check,
    mismatch_message,
    upgrade,
    upgrade_hint,
)

from . import log
from .fastread import FastReadUnavailable, SqliteReads
from .hot_queries import (
    COMPILED,
    COOKIE_STATE,
    COOKIE_STATE_ITEM,
    EVENTS_AFTER,
    ITEM_ACCESS,
    ITEMS_OF,
    LAST_SEQ,
    REVOKED,
)
from .log import EventRow, NewEvent
from .migrations import SCHEMA
from .participation import ParticipantRow, ParticipationQueries, RoleChange, RosterRows
from .schema import (
    conference_events,
    conferences,
    focus_nodes,
    items,
    participants,
    revoked_cookies,
    tenant_keys,
    tenant_settings,
    tenants,
)
from .writer import Admit, GroupWriter, PgTarget, Revoke, SqliteTarget, Target


@dataclass(frozen=True)
class TenantKeyRow:
    tenant: str
    version: int
    wrapped_key: bytes | None
    """Under root key `root_key_version`; None for a Customer Key version."""
    root_key_version: int | None
    customer_wraps: str | None = None
    """A Customer Key version's wraps (crypto/customer_wrap.py; docs/protocol.md §8.4)."""


@dataclass(frozen=True)
class ConferenceRow:
    id: str
    """The WCS's public id: what the cookie, the HTTP API and the item keys name."""
    tenant: str
    organizer: str
    """`user@tenant`: the conference URI's user part and host."""
    uri_id: str
    """The id in the conference URI, unique only per (tenant, organizer) (§2.1)."""
    created_at: float
    ended_at: float | None
    last_seq: int = 0
    """The seq of its newest logged event (log.py)."""
    downloads: bool = True
    """Attendees may download its items (the organizer's switch, docs/protocol.md §8.3)."""
    locked: bool = False
    """Only its organizer may join (the organizer's lock, docs/protocol.md §9.2)."""


@dataclass(frozen=True)
class ItemRow:
    id: str
    conference_id: str
    tenant: str
    presenter_pid: str
    presenter: str
    blob_id: str
    wrapped_dek: bytes
    tenant_key_version: int
    sealed_name: bytes
    sealed_content_type: bytes
    sealed_sha256: bytes | None
    plaintext_size: int
    ciphertext_size: int
    created_at: float
    derived_from: str | None = None
    """The item this one was made from (a deck's PDF, docs/protocol.md §9.4)."""
    sealed_pages: bytes | None = None
    """A PDF's page count, sealed like the name (docs/protocol.md §9.1)."""


@dataclass(frozen=True)
class DownloadSwitches:
    """Who may download an item, read with the item itself (docs/protocol.md §8.3): a
    switch flipped is seen by the next download on every node, with no cache to expire."""

    downloads: bool = True
    """The conference's organizer lets attendees download (`conferences.downloads`)."""
    server_decrypt: bool = True
    """The tenant's operator serves the decrypting download (`tenant_settings`)."""


@dataclass(frozen=True)
class CookieState:
    """What a cookie check needs to know, read in one query."""

    revoked: bool
    conference_tenant: str | None
    conference_ended: bool
    item: ItemRow | None = None
    """The item asked for with the cookie (`cookie_state(..., item_id=)`), if it exists."""
    switches: DownloadSwitches | None = None
    """With `item_id`: the download switches of the item's conference and tenant."""
    role: str | None = None
    """The cookie's participant's role now (docs/protocol.md §9.2: it may have changed
    since the cookie was minted); None if no participant holds the `jti`."""


class StoreSchemaError(SchemaError):
    """The store's tables are behind or ahead of the code; the message is one line."""


def _schema_error(url: str, status: SchemaStatus, where: str | None) -> StoreSchemaError:
    if status.state == "unversioned":
        shown = make_url(url).render_as_string(hide_password=True)
        return StoreSchemaError(status, (
            f"the database at {shown} has an older schema, made before migrations: "
            f"move it aside and {upgrade_hint(where)}"))
    return StoreSchemaError(status, mismatch_message(status, where))


ItemCommit = Literal["committed", "revoked", "conference_ended", "key_retired", "quota",
                     "original_gone", "forbidden"]
"""What `Store.commit_item` did: inserted the row, or refused it and why (`key_retired`:
the tenant key version its DEK is wrapped under was retired meanwhile: rewrap and retry;
`original_gone`: a derived item's original was deleted meanwhile; `forbidden`: the
uploader's role no longer shares)."""

EventHook = Callable[[str, int, Sequence[EventRow]], None]
"""Told (conference id, seq, rows) after a transaction that appended events commits:
`rows` are the rows it appended when the writer has them at hand (the group commit),
else empty (read them from the log)."""


def tenant_key_row(row: Any) -> TenantKeyRow:
    m = row._mapping
    return TenantKeyRow(m["tenant"], m["version"], m["wrapped_key"], m["root_key_version"],
                        m["customer_wraps"])


def _row(cls: Any, row: Any) -> Any:
    return cls(**dict(row._mapping))


def item_of(m: Any) -> ItemRow:
    """The item in a row of either reader (columns by name, maybe among others)."""
    return ItemRow(**{c.name: m[c.name] for c in items.c})


def switches_of(m: Any) -> DownloadSwitches:
    """From a row of either reader: SQLite's own gives 0/1 where the engine gives bools."""
    return DownloadSwitches(downloads=m["switch_downloads"] in (None, True, 1),
                            server_decrypt=m["switch_server_decrypt"] in (None, True, 1))


class Store(ParticipationQueries):
    """Async access to the metadata database (roles, roster and settings:
    participation.py)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None
        self.on_commit: EventHook | None = None
        self._reads = SqliteReads(engine.url) if engine.dialect.name == "sqlite" else None
        """Per-request point reads without a thread hop (fastread.py), on SQLite."""
        """This node's event feed: woken at once by its own writes (others', by NOTIFY)."""
        target: Target = (
            PgTarget(engine, ParticipantRow) if self._write_lock is None
            else SqliteTarget(engine.url, self._write_lock, ParticipantRow))
        self.writer = GroupWriter(target, self._announce)
        """Admissions and revocations: group commit (writer.py). On SQLite it shares
        `_write_lock` with the other writers."""

    def _announce(self, conference_id: str, seq: int,
                  rows: Sequence[EventRow] = ()) -> None:
        if seq and self.on_commit is not None:
            self.on_commit(conference_id, seq, rows)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction. SQLite takes one writer at a time: this process's writers
        queue here, in order, instead of in SQLite's busy handler, which sleeps 1-100 ms
        between retries (the joins benchmark's latency came from those sleeps)."""
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    @classmethod
    async def open(cls, url: str, *, create: bool = True, where: str | None = None) -> Store:
        """Connect to `url` (SQLAlchemy async URL). `create`: migrate the store's tables to
        head first (webconf/deploy/migrate.py, the one way they are made); else only check
        that they are at head, as `serve` does. `StoreSchemaError` (one line naming
        `webconf db upgrade`, `where` being the deployment directory) for a schema behind
        or ahead of the code."""
        if create:
            try:
                await upgrade(url, [SCHEMA])
            except SchemaError as exc:
                raise _schema_error(url, exc.status, where) from None
        engine = open_engine(url)
        try:
            await check(engine, SCHEMA, where)
        except SchemaError as exc:
            await engine.dispose()
            raise _schema_error(url, exc.status, where) from None
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        """Commit (or fail) the queued admissions and revocations, stop the writer, and
        close the connections."""
        try:
            await self.writer.close()
        finally:
            if self._reads is not None:
                self._reads.close()
            await self.engine.dispose()

    # -- tenants ---------------------------------------------------------------
    async def tenant_key(self, tenant: str, version: int | None = None) -> TenantKeyRow | None:
        """The tenant's wrapped key: the given version, or the current one."""
        async with self.engine.connect() as conn:
            if version is None:
                q = (
                    select(tenant_keys)
                    .join(tenants, tenants.c.domain == tenant_keys.c.tenant)
                    .where(tenants.c.domain == tenant)
                    .where(tenant_keys.c.version == tenants.c.current_key_version)
                )
            else:
                q = select(tenant_keys).where(
                    tenant_keys.c.tenant == tenant, tenant_keys.c.version == version
                )
            row = (await conn.execute(q)).first()
        if row is None:
            return None
        return tenant_key_row(row)

    async def create_tenant(self, tenant: str, wrapped_key: bytes, root_key_version: int,
                            now: float) -> bool:
        """Create a tenant with key version 1; False if another writer created it first."""
        try:
            async with self._write() as conn:
                await conn.execute(insert(tenants).values(
                    domain=tenant, current_key_version=1, created_at=now))
                await conn.execute(insert(tenant_keys).values(
                    tenant=tenant, version=1, wrapped_key=wrapped_key,
                    root_key_version=root_key_version, created_at=now))
        except IntegrityError:
            return False
        return True

    async def tenant_shreds_content_at_end(self, tenant: str) -> bool:
        """The tenant's `shred_content_at_end` setting (docs/protocol.md §8.6; no row: no)."""
        async with self.engine.connect() as conn:
            value = await conn.scalar(select(tenant_settings.c.shred_content_at_end).where(
                tenant_settings.c.tenant == tenant))
        return bool(value)

    async def set_tenant_settings(self, tenant: str, values: dict[str, Any],
                                  now: float) -> None:
        """Set columns of the tenant's `tenant_settings` row, creating it (defaults for the
        rest) on first use (conferencing/tenant_settings.py names the columns)."""
        async with self._write() as conn:
            changed = await conn.execute(update(tenant_settings).where(
                tenant_settings.c.tenant == tenant).values(**values, updated_at=now))
            if changed.rowcount:
                return
            try:
                async with conn.begin_nested():
                    await conn.execute(insert(tenant_settings).values(
                        tenant=tenant, **values, updated_at=now))
            except IntegrityError:  # a concurrent `set` made the row: change it
                await conn.execute(update(tenant_settings).where(
                    tenant_settings.c.tenant == tenant).values(**values, updated_at=now))

    async def tenant_settings(self, tenant: str) -> dict[str, Any]:
        """The tenant's settings row as a dict (empty: no row, every default)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(tenant_settings).where(
                tenant_settings.c.tenant == tenant))).first()
        return {} if row is None else dict(row._mapping)

    # -- conferences -------------------------------------------------------------
    async def conference(self, conference_id: str) -> ConferenceRow | None:
        """The conference of this public id."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                select(conferences).where(conferences.c.id == conference_id))).first()
        return None if row is None else _row(ConferenceRow, row)

    async def conference_by_uri(self, tenant: str, organizer: str,
                                uri_id: str) -> ConferenceRow | None:
        """The conference of this organizer's URI id (docs/protocol.md §2.1)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(conferences).where(
                conferences.c.tenant == tenant, conferences.c.organizer == organizer,
                conferences.c.uri_id == uri_id))).first()
        return None if row is None else _row(ConferenceRow, row)

    async def create_conference(self, row: ConferenceRow) -> ConferenceRow:
        """Insert the conference, or return the one a concurrent writer created for the
        same (tenant, organizer, uri_id)."""
        try:
            async with self._write() as conn:
                await conn.execute(insert(conferences).values(**row.__dict__))
            return row
        except IntegrityError:
            existing = await self.conference_by_uri(row.tenant, row.organizer, row.uri_id)
            if existing is None:  # pragma: no cover - the conflict was on the random id
                raise
            return existing

    async def reopen_conference(self, conference_id: str) -> None:
        async with self._write() as conn:
            # A reopened meeting starts unlocked (docs/protocol.md §9.2).
            await conn.execute(update(conferences).where(conferences.c.id == conference_id)
                               .values(ended_at=None, locked=False))

    async def end_conference(self, conference_id: str, now: float,
                             events: Sequence[NewEvent] = (), *,
                             idle_before: float | None = None) -> list[ParticipantRow] | None:
        """End the conference if it is not ended yet (with `idle_before`: only if nobody
        joined since then and nobody holds a live cookie, `idle_condition`): mark every
        active participant left, revoke their cookies and append `events`, in one
        transaction. Returns the participants it ended, or None when this call ended
        nothing (ended already, by another node, or no longer idle)."""
        async with self._write() as conn:
            await log.lock_conference(conn, conference_id)
            q = update(conferences).where(
                conferences.c.id == conference_id, conferences.c.ended_at.is_(None))
            if idle_before is not None:
                q = q.where(idle_condition(idle_before, now))
            if not (await conn.execute(q.values(ended_at=now))).rowcount:
                return None
            # UPDATE ... RETURNING: exactly the rows this statement marked left. A revocation
            # that commits meanwhile (PostgreSQL runs writers at once) keeps its own row, so
            # no cookie is revoked twice (a unique violation).
            rows = (await conn.execute(update(participants).where(
                participants.c.conference_id == conference_id,
                participants.c.left_at.is_(None)).values(left_at=now).returning(
                *participants.c))).all()
            ended = [_row(ParticipantRow, r) for r in rows]
            if ended:
                await conn.execute(insert(revoked_cookies), [
                    {"jti": p.jti, "revoked_at": now, "expires_at": p.expires_at}
                    for p in ended])
            seq = await log.append(conn, conference_id, events, now)
        self._announce(conference_id, seq)
        return ended

    async def idle_conferences(self, before: float, now: float,
                               limit: int = 100) -> list[str]:
        """Open conferences that nobody joined since `before` and where no cookie is live
        (candidates: `end_conference(idle_before=)` decides again, atomically)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(conferences.c.id).where(
                conferences.c.ended_at.is_(None), idle_condition(before, now))
                .order_by(conferences.c.created_at).limit(limit))).all()
        return [r.id for r in rows]

    async def ended_with_content(self, ended_before: float, limit: int = 100) -> list[str]:
        """Conferences ended before `ended_before` that still hold items (to shred)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(conferences.c.id).where(
                conferences.c.ended_at.is_not(None), conferences.c.ended_at < ended_before,
                exists().where(items.c.conference_id == conferences.c.id))
                .order_by(conferences.c.ended_at).limit(limit))).all()
        return [r.id for r in rows]

    # -- participants ----------------------------------------------------------------
    async def add_participant(self, row: ParticipantRow,
                              events: Sequence[NewEvent] = ()) -> None:
        """Insert the participant and append `events`, atomically; returns once committed.
        Concurrent calls share a transaction (writer.py), each failing alone."""
        await self.writer.submit(Admit(row.conference_id, row.__dict__, tuple(events),
                                       row.joined_at))

    async def add_participant_if_open(self, row: ParticipantRow,
                                      events: Sequence[NewEvent] = ()) -> bool:
        """`add_participant`, only if its conference has not ended and, unless `row.user`
        is the organizer, is not locked, as read in the same transaction; False (nothing
        written) otherwise, or when the conference does not exist."""
        return bool(await self.writer.submit(Admit(
            row.conference_id, row.__dict__, tuple(events), row.joined_at,
            only_if_open=True)))

    async def participant(self, pid: str) -> ParticipantRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(
                select(participants).where(participants.c.id == pid))).first()
        return None if row is None else _row(ParticipantRow, row)

    async def active_participants(self, conference_id: str) -> list[ParticipantRow]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(participants).where(
                participants.c.conference_id == conference_id,
                participants.c.left_at.is_(None)).order_by(participants.c.joined_at))).all()
        return [_row(ParticipantRow, r) for r in rows]

    async def revoke_participant(
            self, conference_id: str, pid: str, now: float,
            events: Callable[[ParticipantRow], Sequence[NewEvent]] = lambda _: (),
    ) -> ParticipantRow | None:
        """Mark the participant left and its cookie revoked, and append `events(it)`,
        atomically; returns once committed. Concurrent calls share a transaction
        (writer.py). `events` runs inside it (on SQLite in the writer thread): keep it pure.

        Returns the participant if this call revoked it, None if unknown or already gone.
        """
        p: ParticipantRow | None = await self.writer.submit(
            Revoke(conference_id, pid, now, events))
        return p

    async def cookie_state(self, jti: str, conference_id: str,
                           item_id: str | None = None) -> CookieState:
        """Revocation and conference state for one cookie, in one round trip; with
        `item_id`, that item of the conference too (a download's one query)."""
        params = {"jti": jti, "conf": conference_id, "item": item_id}
        statement = COOKIE_STATE if item_id is None else COOKIE_STATE_ITEM
        m: Any
        try:
            fast = self._fast_rows(COMPILED[statement], params)
            m = fast[0] if fast else None
            if m is None:
                fast = self._fast_rows(COMPILED[REVOKED], params)
                return CookieState(bool(fast[0][0]), None, False)
        except FastReadUnavailable:
            async with self.engine.connect() as conn:
                row = (await conn.execute(statement, params)).first()
                if row is None:
                    is_revoked = bool(await conn.scalar(REVOKED, params))
                    return CookieState(is_revoked, None, False)
            m = row._mapping
        item = None
        switches = None
        if item_id is not None:
            switches = switches_of(m)
            if m["id"] is not None:
                item = item_of(m)
        return CookieState(bool(m["revoked"]), m["conference_tenant"],
                           m["conference_ended_at"] is not None, item, switches,
                           m["participant_role"])

    async def purge_expired_revocations(self, expired_before: float) -> int:
        """Drop the revocation rows of cookies whose `exp` is before `expired_before`;
        return how many went. The caller picks a horizon at which the verifier already
        refuses such cookies by their `exp` alone (`CookieAuthority.revocation_horizon`)."""
        async with self._write() as conn:
            result = await conn.execute(
                delete(revoked_cookies).where(revoked_cookies.c.expires_at < expired_before))
        return int(result.rowcount or 0)

    # -- items ---------------------------------------------------------------------
    async def commit_item(self, row: ItemRow, *, jti: str | None,
                          events: Sequence[NewEvent] = (),
                          max_conference_bytes: int | None = None,
                          uploaders: Sequence[str] = ("organizer", "presenter")) -> ItemCommit:
        """Insert the item's row only if its presenter may still share: the conference not
        ended, the presenter's participant row current and its cookie `jti` not revoked.
        A derived item (`row.derived_from`, no `jti`) needs its original instead: the
        presenter may have left since the deck was shared, which stays shared too.

        The checks and the insert share one transaction, and the conference and participant
        rows are locked (`FOR UPDATE` on PostgreSQL; SQLite's single writer on SQLite), so a
        revocation, a demotion (the role must still be one of `uploaders`, §9.2) or an end
        that commits first is seen, and one that commits later finds the item and shreds
        it with the rest (docs/protocol.md §4.1). The tenant key
        version the DEK is wrapped under must still exist (§8.5). With
        `max_conference_bytes`, "quota" when the conference's items and this one would
        hold more plaintext bytes: the locked conference row orders concurrent commits,
        so two uploads cannot both squeeze past (docs/protocol.md §8.6)."""
        async with self._write() as conn:
            ended_at = (await conn.execute(
                select(conferences.c.ended_at).where(conferences.c.id == row.conference_id)
                .with_for_update())).first()
            if ended_at is None or ended_at[0] is not None:
                return "conference_ended"
            if jti is None:
                original = (await conn.execute(select(items.c.id).where(
                    items.c.id == row.derived_from,
                    items.c.conference_id == row.conference_id).with_for_update())).first()
                if row.derived_from is None or original is None:
                    return "original_gone"
            else:
                outcome = await _presenter_current(conn, row, jti, uploaders)
                if outcome is not None:
                    return outcome
            # Shared lock on the key row: a rotation retiring this version waits for us, or
            # has deleted it and we see it gone (docs/protocol.md §8.5).
            key = (await conn.execute(select(tenant_keys.c.version).where(
                tenant_keys.c.tenant == row.tenant,
                tenant_keys.c.version == row.tenant_key_version).with_for_update(
                read=True))).first()
            if key is None:
                return "key_retired"
            if max_conference_bytes is not None and (
                    await _stored_bytes(conn, row.conference_id) + row.plaintext_size
                    > max_conference_bytes):
                return "quota"
            await conn.execute(insert(items).values(**row.__dict__))
            seq = await log.append(conn, row.conference_id, events, row.created_at)
        self._announce(row.conference_id, seq)
        return "committed"

    async def item(self, conference_id: str, item_id: str) -> ItemRow | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(select(items).where(
                items.c.id == item_id, items.c.conference_id == conference_id))).first()
        return None if row is None else _row(ItemRow, row)

    async def item_access(self, conference_id: str,
                          item_id: str) -> tuple[ItemRow | None, DownloadSwitches]:
        """The item and its download switches, in one query (a cached cookie's download)."""
        rows = await self.hot_rows(ITEM_ACCESS, {"conf": conference_id, "item": item_id})
        if not rows:
            return None, DownloadSwitches()
        m = rows[0]
        return (None if m["id"] is None else item_of(m)), switches_of(m)

    async def items(self, conference_id: str) -> list[ItemRow]:
        return [item_of(r) for r in await self.hot_rows(ITEMS_OF, {"conf": conference_id})]

    async def delete_item(self, conference_id: str, item_id: str, now: float,
                          events: Sequence[NewEvent] = ()) -> ItemRow | None:
        """Delete the item's row, and with it the wrapped DEK (the crypto-shred), and
        append `events`."""
        async with self._write() as conn:
            await log.lock_conference(conn, conference_id)
            row = (await conn.execute(select(items).where(
                items.c.id == item_id, items.c.conference_id == conference_id))).first()
            if row is None:
                return None
            await conn.execute(delete(items).where(items.c.id == item_id))
            seq = await log.append(conn, conference_id, events, now)
        self._announce(conference_id, seq)
        deleted: ItemRow = _row(ItemRow, row)
        return deleted

    async def derived_items(self, conference_id: str, item_id: str) -> list[ItemRow]:
        """The items made from `item_id` (its deck's PDF, docs/protocol.md §9.4)."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(items).where(
                items.c.conference_id == conference_id,
                items.c.derived_from == item_id))).all()
        return [_row(ItemRow, r) for r in rows]

    async def append_events(self, conference_id: str, events: Sequence[NewEvent],
                            now: float) -> bool:
        """Log events that no other change carries (a failed conversion); False, and
        nothing logged, for an unknown or ended conference."""
        async with self._write() as conn:
            ended_at = (await conn.execute(
                select(conferences.c.ended_at).where(conferences.c.id == conference_id)
                .with_for_update())).first()
            if ended_at is None or ended_at[0] is not None:
                return False
            seq = await log.append(conn, conference_id, events, now)
        self._announce(conference_id, seq)
        return True

    async def conference_bytes(self, conference_id: str) -> int:
        """Plaintext bytes of the conference's items (what `wcs.max_conference_bytes`
        caps)."""
        async with self.engine.connect() as conn:
            return await _stored_bytes(conn, conference_id)

    async def delete_items(self, conference_id: str, *,
                           ended_before: float | None = None) -> list[ItemRow]:
        """Delete the conference's item rows (the wrapped DEKs: the crypto-shred; the
        caller removes the blobs after). With `ended_before`: only if the conference is
        still ended since before then, checked under its lock, so a reopen that commits
        first keeps its content."""
        async with self._write() as conn:
            await log.lock_conference(conn, conference_id)
            if ended_before is not None:
                ended_at = await conn.scalar(select(conferences.c.ended_at).where(
                    conferences.c.id == conference_id))
                if ended_at is None or ended_at >= ended_before:
                    return []
            rows = (await conn.execute(
                select(items).where(items.c.conference_id == conference_id))).all()
            await conn.execute(delete(items).where(items.c.conference_id == conference_id))
        return [_row(ItemRow, r) for r in rows]

    # -- the event log (log.py) --------------------------------------------------------
    async def events_after(self, conference_id: str, after: int,
                           limit: int = 256) -> list[EventRow]:
        """The conference's logged events with seq > `after`, oldest first, at most `limit`."""
        rows = await self.hot_rows(EVENTS_AFTER, {"conf": conference_id, "after": after,
                                                  "limit": limit, "offset": 0})
        return [EventRow(conference_id=r["conference_id"], seq=r["seq"], type=r["type"],
                         participant_id=r["participant_id"], final=bool(r["final"]),
                         payload=r["payload"], created_at=r["created_at"]) for r in rows]

    def _fast_rows(self, sql: str, params: Mapping[str, Any]) -> list[Any]:
        """A hot read's rows from SQLite on the loop (fastread.py); `FastReadUnavailable`
        on PostgreSQL or when it cannot run now (the caller reads through the engine)."""
        if self._reads is None:
            raise FastReadUnavailable("not SQLite")
        return self._reads.rows(sql, params)

    async def hot_rows(self, statement: Select[Any],
                       params: Mapping[str, Any]) -> Sequence[Any]:
        """The rows (columns by name) of one of `hot_queries.COMPILED`'s statements: on the
        loop on SQLite (fastread.py), else, or when that cannot run now, by the engine."""
        try:
            return self._fast_rows(COMPILED[statement], params)
        except FastReadUnavailable:
            async with self.engine.connect() as conn:
                return [r._mapping for r in (await conn.execute(statement, params)).all()]

    async def last_seqs(self, conference_ids: Sequence[str]) -> dict[str, int]:
        """The newest seq of each of these conferences (unknown ones are left out)."""
        if len(conference_ids) == 1:  # a channel's welcome, a feed's start: the hot case
            rows = await self.hot_rows(LAST_SEQ, {"conf": conference_ids[0]})
            return {r["id"]: int(r["last_seq"]) for r in rows}
        out: dict[str, int] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(conference_ids), 500):
                batch = list(conference_ids[start:start + 500])
                rows = (await conn.execute(select(conferences.c.id, conferences.c.last_seq)
                                           .where(conferences.c.id.in_(batch)))).all()
                out.update({r.id: int(r.last_seq) for r in rows})
        return out

    async def log_holds(self, conference_id: str, after: int) -> tuple[int, bool]:
        """(the conference's last seq, whether the log still holds every event after
        `after`): what a channel resuming from `after` needs to know."""
        async with self.engine.connect() as conn:
            last = int(await conn.scalar(select(conferences.c.last_seq).where(
                conferences.c.id == conference_id)) or 0)
            if after >= last:
                return last, after == last
            held = int(await conn.scalar(select(func.count()).select_from(
                conference_events).where(conference_events.c.conference_id == conference_id,
                                         conference_events.c.seq > after)) or 0)
        return last, held == last - after

    async def trim_events(self, before: float) -> int:
        """Drop logged events older than `before` (the retention); return how many went."""
        async with self._write() as conn:
            result = await conn.execute(
                delete(conference_events).where(conference_events.c.created_at < before))
        return int(result.rowcount or 0)

    # -- focus leases ------------------------------------------------------------------
    async def heartbeat_focus_node(self, name: str, now: float) -> None:
        """Create or renew the lease of focus process `name`."""
        async with self._write() as conn:
            renewed = await conn.execute(update(focus_nodes).where(
                focus_nodes.c.name == name).values(heartbeat_at=now))
            if not renewed.rowcount:
                try:
                    async with conn.begin_nested():
                        await conn.execute(insert(focus_nodes).values(
                            name=name, started_at=now, heartbeat_at=now))
                except IntegrityError:  # a concurrent first heartbeat made it
                    pass

    async def claim_stale_focus_nodes(self, before: float) -> list[str]:
        """Delete and return the leases whose last heartbeat is before `before`. One
        statement, so of several WCS nodes claiming at once each lease goes to one."""
        async with self._write() as conn:
            rows = (await conn.execute(delete(focus_nodes).where(
                focus_nodes.c.heartbeat_at < before).returning(focus_nodes.c.name))).all()
        return [r.name for r in rows]

    async def drop_focus_node(self, name: str) -> None:
        async with self._write() as conn:
            await conn.execute(delete(focus_nodes).where(focus_nodes.c.name == name))

    async def leaseless_participants(self, joined_before: float) -> list[ParticipantRow]:
        """Active participants admitted by a focus (before `joined_before`) whose lease
        row does not exist: orphans of an interrupted expiry, or of a focus that died
        before its first renewal."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(participants).where(
                participants.c.focus_node.is_not(None), participants.c.left_at.is_(None),
                participants.c.joined_at < joined_before,
                ~exists().where(focus_nodes.c.name == participants.c.focus_node)))).all()
        return [_row(ParticipantRow, r) for r in rows]

    async def focus_node_participants(self, name: str) -> list[ParticipantRow]:
        """The active participants whose dialogs the focus process `name` holds."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(participants).where(
                participants.c.focus_node == name, participants.c.left_at.is_(None)))).all()
        return [_row(ParticipantRow, r) for r in rows]

    async def blob_ids(self) -> set[str]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(items.c.blob_id))).all()
        return {r.blob_id for r in rows}

    async def counts(self) -> dict[str, int]:
        """Row counts, for health and metrics."""
        out: dict[str, int] = {}
        async with self.engine.connect() as conn:
            for name, table in (("conferences", conferences), ("items", items)):
                out[name] = int(await conn.scalar(select(func.count()).select_from(table)) or 0)
            out["active_participants"] = int(await conn.scalar(
                select(func.count()).select_from(participants).where(
                    participants.c.left_at.is_(None))) or 0)
        return out


def idle_condition(before: float, now: float) -> Any:
    """A conference nobody joined since `before` (created before it) and in which no
    participant still holds a live cookie (active and not expired at `now`)."""
    return and_(conferences.c.created_at < before, ~exists().where(
        participants.c.conference_id == conferences.c.id,
        (participants.c.joined_at >= before)
        | (participants.c.left_at.is_(None) & (participants.c.expires_at > now))))


async def _presenter_current(conn: AsyncConnection, row: ItemRow, jti: str,
                             uploaders: Sequence[str]) -> ItemCommit | None:
    """"revoked" unless the uploader's participation and cookie `jti` are current (locked);
    "forbidden" if the uploader was demoted meanwhile (docs/protocol.md §9.2)."""
    presenter = (await conn.execute(
        select(participants.c.left_at, participants.c.role).where(
            participants.c.id == row.presenter_pid,
            participants.c.conference_id == row.conference_id,
            participants.c.jti == jti).with_for_update())).first()
    revoked = await conn.scalar(select(exists().where(revoked_cookies.c.jti == jti)))
    if presenter is None or presenter.left_at is not None or revoked:
        return "revoked"
    if presenter.role not in uploaders:
        return "forbidden"
    return None


async def _stored_bytes(conn: AsyncConnection, conference_id: str) -> int:
    return int(await conn.scalar(select(func.coalesce(func.sum(items.c.plaintext_size), 0))
                                 .where(items.c.conference_id == conference_id)) or 0)


__all__: Sequence[str] = (
    "ConferenceRow", "CookieState", "DownloadSwitches", "EventRow", "ItemCommit", "ItemRow",
    "NewEvent", "ParticipantRow", "RoleChange", "RosterRows", "Store",
    "StoreSchemaError", "TenantKeyRow",
)
