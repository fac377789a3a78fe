"""Conference service: the one place that ties store, share, keys, cookies and events.

HTTP handlers call these functions with already-parsed input; they hold no SQL and no
crypto. Everything here raises `ServiceError` with a stable `code` that the API layer maps
to a status. Order of effects is chosen for crash safety:

- share: ciphertext to a temp file -> fsync -> rename -> fsync dir -> metadata row
  (wrapped DEK) -> push. A crash at any point leaves either nothing or an orphan blob the
  startup sweep removes; never a row without its blob, never a key without its blob. The
  row is written only if the presenter's cookie and the conference are still current at
  that moment (else the blob is removed and nothing is pushed).
- delete: row (wrapped DEK) first, then the blob: the item is crypto-shredded the moment
  the row is gone.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from webconf import protocol
from webconf.crypto.cobblestone import Encryptor, item_context
from webconf.deploy.config import Config
from webconf.deploy.keys import load_root_keys
from webconf.events import (
    ChannelEvent,
    ItemRemoved,
    ItemShared,
    Participant,
    ParticipantJoined,
    ParticipantLeft,
    Revoked,
    SharedItem,
)
from webconf.protocol import Admission

from . import soffice
from .audit import AuditLog
from .convert import Converter, DeckRequest
from .cookie_cache import CookieCache
from .cookies import CookieAuthority, CookieClaims, CookieError
from .crypto import keywrap
from .endings import EndNotices
from .etags import EtagMinter
from .eventlog import EventFeed
from .events import EventHub
from .keyring import CustomerKeyAccess, TenantKeyring, TenantKeyUnavailable
from .lifecycle import EndReason, Lifecycle
from .metrics import Metrics
from .pdfpages import count_pages, is_pdf
from .share import FileShare, ShareError
from .store import (
    ConferenceRow,
    DownloadSwitches,
    EventRow,
    ItemRow,
    NewEvent,
    ParticipantRow,
    Store,
)

CONTENT_TYPE_RE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]{1,127}/[A-Za-z0-9!#$&^_.+-]{1,127}"
                             r"(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=(\"[^\"\\]*\"|[A-Za-z0-9!#$&^_.+-]+))*$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
UPLOADERS = ("organizer", "presenter")
KEY_RETIRED_RETRIES = 3
"""Times an upload wraps its DEK again after a rotation retired the version it used."""
ADMIT_ATTEMPTS = 3
"""Reads of a conference whose state changed between the read and the admission's
transaction (a lock or an end racing the join) before the join is answered 503."""
CONFERENCE_IDS_KEPT = 65536
"""Conference ids remembered by URI (oldest out first): ~10 MiB at most."""


class ServiceError(Exception):
    """A request the service refuses; `code` is one of the keys of `STATUS_BY_CODE`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Principal:
    """An authenticated participant, bound to one conference of one tenant."""

    claims: CookieClaims

    @property
    def conference_id(self) -> str:
        return self.claims.conference_id

    @property
    def tenant(self) -> str:
        return self.claims.tenant

    @property
    def participant_id(self) -> str:
        return self.claims.participant_id

    @property
    def role(self) -> str:
        return self.claims.role

    @property
    def presenter(self) -> str:
        """The SIP URI an item this principal shares names as its presenter."""
        return self.claims.sub


@dataclass(frozen=True)
class Derivation:
    """Who stores a derived item: the original it was made from (a deck's PDF,
    docs/protocol.md §9.4), in the name of the original's presenter."""

    original: ItemRow

    @property
    def conference_id(self) -> str:
        return self.original.conference_id

    @property
    def tenant(self) -> str:
        return self.original.tenant

    @property
    def participant_id(self) -> str:
        return self.original.presenter_pid

    @property
    def presenter(self) -> str:
        return self.original.presenter


@dataclass(frozen=True)
class ItemKey:
    dek: bytes
    context: bytes


@dataclass(frozen=True)
class BlobRef:
    blob_id: str
    size: int
    etag: str
    fd: int
    """Open for reading (`FileShare.open_blob`): the caller streams from it and closes it."""


def valid_id(value: str) -> bool:
    """The id grammar (docs/protocol.md §4), minus "." and "..": they match it but are URL
    dot-segments, which clients normalize away."""
    return protocol.valid_id(value) and value not in (".", "..")


def new_conference_id() -> str:
    """A conference's public id: 128 random bits, base64url (22 characters of the id grammar),
    so that it tells nothing about its tenant, organizer or URI id and cannot be guessed."""
    return protocol.new_id(16)


def _log(event: ChannelEvent, *, participant_id: str | None = None,
         final: bool = False) -> NewEvent:
    """The log row of a channel event (store/log.py); it must hold no key."""
    return NewEvent(type=str(event.to_json()["type"]), payload=_json(event.to_json()),
                    participant_id=participant_id, final=final)


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


class ConferenceService:
    def __init__(self, cfg: Config, store: Store, share: FileShare, cookies: CookieAuthority,
                 root_keys: dict[int, bytes], events: EventHub, metrics: Metrics,
                 audit: AuditLog | None = None) -> None:
        self.cfg = cfg
        self.audit = audit if audit is not None else AuditLog.for_deployment(cfg.log_dir)
        """Who read or changed what (audit.py): shares, deletes, downloads, key events."""
        self.store = store
        self.share = share
        self.cookies = cookies
        self.root_keys = root_keys
        self.root_key_version = cfg.keys.root_key_version
        self.events = events
        self.feed = EventFeed(store, events, self.render_event,
                              poll_seconds=cfg.wcs.event_poll_seconds)
        """The one path from the event log to this process's channels."""
        store.on_commit = self.feed.wake
        self.feed.row_listeners.append(events.follow_role)
        self.endings = EndNotices(self.feed, store)
        """Which focus links follow which conferences' ends (endings.py)."""
        self.cookie_cache = CookieCache(self.feed, expired=cookies.expired)
        """Verified cookies, dropped at their revocation (cookie_cache.py)."""
        self.lifecycle = Lifecycle(cfg.wcs, store, share, self.audit, self.cookie_cache)
        """Ends, the idle sweep and the grace's shred (lifecycle.py)."""
        self.metrics = metrics
        self.etags = EtagMinter(root_keys[self.root_key_version])
        """Keyed ETags: a blob id on the share must not show through (docs/protocol.md §4.1)."""
        self.keyring = TenantKeyring(
            store, root_keys, cfg.keys.root_key_version,
            cache_seconds=cfg.keys.tenant_key_cache_seconds, audit=self.audit,
            load_root_keys=lambda: load_root_keys(cfg, require_configured=False),
            customer=CustomerKeyAccess.from_config(cfg))
        """Unwrapped tenant keys, each for a bounded time (keyring.py)."""
        self.keyring.unwrap_seconds = metrics.decrypt_seconds.observe
        self._known_tenants: set[str] = set()
        """Tenants whose key row exists (tenants are never deleted): admit skips the query."""
        self._conference_ids: dict[tuple[str, str, str], str] = {}
        """(tenant, organizer, URI id) -> public id, which never changes once created: an
        admission needs no read before its transaction, which checks the state itself."""
        self.converter: Converter | None = None
        """Converts shared decks to PDFs (convert.py); set by the WCS app."""

    # -- tenant keys ----------------------------------------------------------------
    async def _tenant_key(self, tenant: str, version: int | None = None) -> tuple[bytes, int]:
        """The unwrapped tenant key (current version unless given), creating the tenant;
        503 `tenant_key_unavailable` when it cannot be unwrapped (keyring.py)."""
        try:
            if version is None:
                return await self.keyring.current(tenant)
            return await self.keyring.get(tenant, version), version
        except TenantKeyUnavailable as exc:
            raise ServiceError("tenant_key_unavailable",
                               "this tenant's content key is unavailable") from exc

    # -- participants (internal API) ----------------------------------------------------
    async def admit_participant(self, uri_id: str, *, tenant: str, organizer: str,
                                user: str, role: str,
                                focus_node: str | None = None) -> Admission:
        """Admit `user` to `organizer`'s conference `uri_id` (the id in its SIP URI).

        Conferences are scoped by (tenant, organizer, uri_id) (docs/protocol.md §2.1, §7.2):
        an id used elsewhere neither blocks this one nor shows through any answer. The
        admission names the conference by its public id, which nobody can guess.
        """
        if not valid_id(uri_id):
            raise ServiceError("bad_request", "invalid conference id")
        for name, value in (("tenant", tenant), ("organizer", organizer), ("user", user)):
            # NUL: PostgreSQL text cannot hold it, so no backend stores it (a 400, not a 500).
            if not value or len(value) > 512 or "\x00" in value:
                raise ServiceError("bad_request", f"invalid {name}")
        for name, value in (("organizer", organizer), ("user", user)):
            local, at, domain = value.rpartition("@")
            if not at or not local:
                raise ServiceError("bad_request", f"{name} must be user@tenant")
            if domain != tenant:  # decided before any lookup: it reveals nothing
                raise ServiceError("forbidden", f"{name} belongs to another tenant")
        if role not in ("attendee", "presenter", "organizer"):
            raise ServiceError("bad_request", "invalid role")
        if tenant not in self.cfg.tenants.domains:  # before any key is minted for it
            raise ServiceError("unknown_tenant", "tenant is not served by this deployment")
        if tenant not in self._known_tenants:
            await self._tenant_key(tenant)  # creates the tenant and its key on first sight
            self._known_tenants.add(tenant)
        key = (tenant, organizer, uri_id)
        known = self._conference_ids.get(key)
        if known is not None:  # its state is checked in the admission's own transaction
            admission = await self._admit_into(known, organizer, tenant=tenant, user=user,
                                               role=role, focus_node=focus_node)
            if admission is not None:
                return admission
        for _ in range(ADMIT_ATTEMPTS):
            conf = await self._conference_to_join(tenant, organizer, uri_id, user)
            if len(self._conference_ids) >= CONFERENCE_IDS_KEPT:
                del self._conference_ids[next(iter(self._conference_ids))]
            self._conference_ids[key] = conf.id
            admission = await self._admit_into(conf.id, conf.organizer, tenant=tenant,
                                               user=user, role=role, focus_node=focus_node)
            if admission is not None:
                return admission
        raise ServiceError("unavailable", "the conference changed during the join; retry")

    async def _conference_to_join(self, tenant: str, organizer: str, uri_id: str,
                                  user: str) -> ConferenceRow:
        """The conference `user` joins: created by its organizer's first join, reopened by
        the organizer after its end (§8.6); refused while locked or ended for others."""
        now = time.time()
        conf = await self.store.conference_by_uri(tenant, organizer, uri_id)
        if conf is None:
            if user != organizer:
                raise ServiceError("not_found", "unknown conference")
            conf = await self.store.create_conference(ConferenceRow(
                id=new_conference_id(), tenant=tenant, organizer=organizer, uri_id=uri_id,
                created_at=now, ended_at=None))
        if conf.locked and conf.ended_at is None and user != conf.organizer:
            # docs/protocol.md §9.2: the focus answers the INVITE with 403.
            raise ServiceError("conference_locked", "the organizer has locked the conference")
        if conf.ended_at is not None:
            if user != conf.organizer:  # only the organizer reopens (§8.6)
                raise ServiceError("not_found", "conference has ended")
            grace_before = now - self.cfg.wcs.content_grace_seconds
            if conf.ended_at < grace_before:  # the sweep has not come yet: start empty
                await self.lifecycle.shred(conf.id, tenant=tenant, ended_before=grace_before)
            await self.store.reopen_conference(conf.id)
        return conf

    async def _admit_into(self, conference_id: str, organizer: str, *, tenant: str,
                          user: str, role: str, focus_node: str | None) -> Admission | None:
        """Mint the cookie and commit the participant, if the conference is still open to
        `user` when the row is written (None: ended or locked meanwhile, nothing kept)."""
        now = time.time()
        effective_role = "organizer" if user == organizer else (
            role if role in ("attendee", "presenter") else "attendee")
        pid = protocol.new_id(12)
        cookie, claims = self.cookies.mint(
            sub=f"sip:{user}", tenant=tenant, conference_id=conference_id, participant_id=pid,
            role=effective_role, now=now)
        if not await self.store.add_participant_if_open(ParticipantRow(
                id=pid, conference_id=conference_id, tenant=tenant, user=user,
                role=effective_role, jti=claims.jti, joined_at=now,
                expires_at=float(claims.expires_at), left_at=None, focus_node=focus_node),
                events=[_log(ParticipantJoined(Participant(
                    id=pid, user=user, role=effective_role)))]):
            return None
        return Admission(conference=conference_id, participant=pid, role=effective_role,
                         cookie=cookie, expires_at=rfc3339(claims.expires_at),
                         webconf_url=self.cfg.public_url)

    async def revoke_participant(self, conference_id: str, participant_id: str, *,
                                 reason: str = "left") -> bool:
        """Revoke the participant's cookie and close its channels; False if unknown.
        `reason` is the `revoked` event's ("left", or "ejected" by the organizer)."""
        def events(p: ParticipantRow) -> list[NewEvent]:
            return [_log(Revoked(reason=reason), participant_id=p.id, final=True),
                    _log(ParticipantLeft(Participant(id=p.id, user=p.user, role=p.role)))]

        try:
            p = await self.store.revoke_participant(conference_id, participant_id,
                                                    time.time(), events)
        finally:  # this node refuses the cookie from the commit on, not from the log read
            self.cookie_cache.drop_participant(conference_id, participant_id)
        if p is None:
            existing = await self.store.participant(participant_id)
            return existing is not None and existing.conference_id == conference_id
        return True

    async def end_conference(self, conference_id: str,
                             reason: EndReason = "internal") -> bool:
        """End it now (lifecycle.py, docs/protocol.md §8.6); False if unknown or ended."""
        return await self.lifecycle.end(conference_id, reason)

    async def end_by_organizer(self, who: Principal) -> None:
        """`DELETE /v1/conferences/{conf}`: the organizer ends the meeting for everyone."""
        if who.role != "organizer":
            raise ServiceError("forbidden", "only the organizer may end the conference")
        await self.lifecycle.end(who.conference_id, "organizer")

    # -- focus leases (docs/protocol.md §7) ------------------------------------------
    async def heartbeat_focus_node(self, name: str) -> None:
        await self.store.heartbeat_focus_node(name, time.time())

    async def release_focus_node(self, name: str) -> None:
        """A focus stopping cleanly (its dialogs already ended) drops its lease."""
        await self.store.drop_focus_node(name)

    async def expire_focus_leases(self, now: float, timeout_seconds: float, *,
                                  stale_before: float | None = None) -> dict[str, int]:
        """Revoke the participants of every focus process whose heartbeat is older than
        `timeout_seconds` (or `stale_before`): a dead focus leaves no live cookie behind.
        Each stale lease is claimed by exactly one WCS; returns {lease: participants
        revoked}.

        Also revoked: participants whose lease row is gone (a WCS died between claiming a
        lease and revoking all of its participants) or never came (their focus's first
        renewal failed), once they were admitted longer ago than the timeout."""
        before = now - timeout_seconds if stale_before is None else stale_before
        out: dict[str, int] = {}
        claimed = await self.store.claim_stale_focus_nodes(before)
        for name in claimed:
            out[name] = await self._revoke_all(
                await self.store.focus_node_participants(name))
        for p in await self.store.leaseless_participants(before):
            node = p.focus_node or ""
            out[node] = out.get(node, 0) + await self._revoke_all([p])
        return out

    async def _revoke_all(self, participants: list[ParticipantRow]) -> int:
        revoked = 0
        for p in participants:
            if await self.revoke_participant(p.conference_id, p.id):
                revoked += 1
        return revoked

    # -- the event log ----------------------------------------------------------------
    async def render_event(self, row: EventRow) -> str | None:
        """The channel message of a log row, with its seq. An `item.shared` row names only
        its item: the key is unwrapped now, from `items`; an item deleted since is skipped
        (its `item.removed` follows in the log)."""
        payload = json.loads(row.payload)
        if row.type == ItemShared.TYPE:
            item = await self.store.item(row.conference_id, str(payload["item"]["id"]))
            if item is None:
                return None
            key = await self._unwrap(item)
            payload = ItemShared(SharedItem(
                item=self._item_view(item, key.dek, key.context), key=b64url(key.dek),
                context=b64url(key.context))).to_json()
        payload["seq"] = row.seq
        return _json(payload)

    async def announce(self, conference_id: str, event: ChannelEvent) -> bool:
        """Log an event that no other change carries (a failed conversion, §9.4); False
        for an unknown or ended conference."""
        return await self.store.append_events(conference_id, [_log(event)], time.time())

    async def trim_events(self, now: float) -> int:
        """Drop log rows past the retention (`wcs.event_retention_seconds`)."""
        return await self.store.trim_events(now - self.cfg.wcs.event_retention_seconds)

    # -- authentication -------------------------------------------------------------
    async def authenticate(self, token: str | None, conference_id: str) -> Principal:
        principal, _, _ = await self._authenticate(token, conference_id, None)
        return principal

    async def authenticate_for_item(self, token: str | None, conference_id: str,
                                    item_id: str) -> tuple[Principal, ItemRow]:
        """`authenticate` and `_item` in one database round trip: a download's whole
        metadata cost (the same checks, in the same order)."""
        principal, row, _ = await self.authenticate_for_download(token, conference_id, item_id)
        return principal, row

    async def authenticate_for_download(
            self, token: str | None, conference_id: str,
            item_id: str) -> tuple[Principal, ItemRow, DownloadSwitches]:
        """`authenticate_for_item`, with the item's download switches from the same query
        (docs/protocol.md §8.3); the caller applies them (`downloads.check_download`)."""
        if not valid_id(item_id):
            await self.authenticate(token, conference_id)  # a bad cookie is told first
            raise ServiceError("not_found", "unknown item")
        principal, row, switches = await self._authenticate(token, conference_id, item_id)
        if row is None or row.tenant != principal.tenant:
            raise ServiceError("not_found", "unknown item")
        return principal, row, switches or DownloadSwitches()

    async def _authenticate(self, token: str | None, conference_id: str, item_id: str | None
                            ) -> tuple[Principal, ItemRow | None, DownloadSwitches | None]:
        """The cookie check of docs/protocol.md §3. A cookie that passed it shortly before
        is taken from the cache (cookie_cache.py: same `exp` rule, dropped at revocation);
        a download still reads its item and its switches."""
        if not token:
            raise ServiceError("unauthorized", "missing cookie")
        cached = self.cookie_cache.get(token, conference_id)
        if cached is not None:
            self.metrics.cookie_cache_hits.inc()
            if item_id is None:
                return Principal(cached), None, None
            item, switches = await self.store.item_access(conference_id, item_id)
            return Principal(cached), item, switches
        self.metrics.cookie_cache_misses.inc()
        try:
            claims = self.cookies.verify(token, conference_id=conference_id)
        except CookieError as exc:
            code = "forbidden" if exc.reason == "token is for another conference" else (
                "unauthorized")
            raise ServiceError(code, exc.reason) from None
        ticket = self.cookie_cache.begin(claims)  # before the query: see cookie_cache.py
        try:
            state = await self.store.cookie_state(claims.jti, conference_id, item_id)
            if state.revoked:
                raise ServiceError("unauthorized", "cookie revoked")
            if state.conference_tenant is None:
                raise ServiceError("unauthorized", "unknown conference")
            if not secrets.compare_digest(state.conference_tenant.encode(),
                                          claims.tenant.encode()):
                raise ServiceError("forbidden", "conference belongs to another tenant")
            if state.conference_ended:
                raise ServiceError("unauthorized", "conference has ended")
            if state.role is not None and state.role != claims.role:
                # The role in force is the store's (docs/protocol.md §9.2), not the one
                # minted into the cookie; the cache keeps it until a role change drops it.
                claims = dataclasses.replace(claims, role=state.role)
            self.cookie_cache.put(ticket, token, claims)
        finally:
            self.cookie_cache.end(ticket)
        return Principal(claims), state.item, state.switches

    # -- items -------------------------------------------------------------------
    async def share_item(self, who: Principal, *, name: str, content_type: str,
                         body: AsyncIterator[bytes], max_bytes: int,
                         sha256: str | None = None) -> dict[str, Any]:
        """Encrypt `body` while it streams in, store the blob, record and push the item."""
        if who.role not in UPLOADERS:
            raise ServiceError("forbidden", "only presenters and the organizer may share")
        name = _check_name(name, self.cfg.wcs.max_item_name_bytes)
        if not CONTENT_TYPE_RE.match(content_type):
            raise ServiceError("bad_request", "invalid Content-Type")
        if sha256 is not None and not SHA256_RE.match(sha256):
            raise ServiceError("bad_request", "X-Content-SHA256 must be 64 lowercase hex digits")
        view = await self.store_item(who, name=name, content_type=content_type, body=body,
                                     max_bytes=max_bytes, sha256=sha256)
        kind = soffice.deck_kind(name, content_type)
        if kind is not None and self.converter is not None:  # docs/protocol.md §9.4
            await self.converter.submit(DeckRequest(
                conference_id=who.conference_id, item_id=view["id"], kind=kind,
                pdf_name=soffice.pdf_name(name, self.cfg.wcs.max_item_name_bytes)))
        return view

    async def store_item(self, who: Principal | Derivation, *, name: str, content_type: str,
                         body: AsyncIterator[bytes], max_bytes: int,
                         sha256: str | None = None) -> dict[str, Any]:
        """The one path from plaintext to a shared item, for uploads and derived items
        alike: encrypt while `body` streams, store the blob, commit the row (the event in
        its transaction), audit; the item's view."""
        await self._tenant_key(who.tenant)  # 503 before the body: no key, no upload (§8.4)
        item_id = protocol.new_id(12)
        dek = keywrap.new_key()
        context = item_context(who.tenant, who.conference_id, item_id)
        encryptor = Encryptor(dek, context)
        quota = self.cfg.wcs.max_conference_bytes
        room = quota - await self.store.conference_bytes(who.conference_id)
        writer = await self.share.create()
        plaintext_size = 0
        encrypt_seconds = 0.0
        hasher = hashlib.sha256() if sha256 is not None else None
        try:
            async for chunk in body:
                plaintext_size += len(chunk)
                if plaintext_size > max_bytes:
                    raise ServiceError("too_large", f"upload exceeds {max_bytes} bytes")
                if plaintext_size > room:
                    raise _over_quota(quota)
                started = time.perf_counter()
                if hasher is not None:
                    hasher.update(chunk)
                out = encryptor.update(chunk)
                encrypt_seconds += time.perf_counter() - started
                await writer.write(out)
            await writer.write(encryptor.finalize())
            if hasher is not None and not hmac.compare_digest(hasher.hexdigest(), sha256 or ""):
                raise ServiceError("bad_request",
                                   "X-Content-SHA256 does not match the uploaded content")
            await writer.commit()
        except BaseException:
            await writer.abort()
            raise
        finally:
            self.metrics.encrypt_seconds.observe(encrypt_seconds)
        try:  # from here on the blob is on the share: nothing may fail and leave it there
            sealed_pages = None
            if is_pdf(name, content_type):  # read back through the key, never in plaintext
                pages = await count_pages(self.share.blob_path(writer.blob_id), dek, context)
                if pages is not None:
                    sealed_pages = keywrap.seal_item_field(dek, "pages", str(pages),
                                                           context=context)
            for attempt in range(KEY_RETIRED_RETRIES + 1):
                tenant_key, tenant_key_version = await self._tenant_key(who.tenant)
                now = time.time()
                row = ItemRow(
                    id=item_id, conference_id=who.conference_id, tenant=who.tenant,
                    presenter_pid=who.participant_id, presenter=who.presenter,
                    blob_id=writer.blob_id,
                    wrapped_dek=keywrap.wrap_dek(tenant_key, dek, tenant=who.tenant,
                                                 conference_id=who.conference_id,
                                                 item_id=item_id,
                                                 tenant_key_version=tenant_key_version),
                    tenant_key_version=tenant_key_version,
                    sealed_name=keywrap.seal_item_field(dek, "name", name, context=context),
                    sealed_content_type=keywrap.seal_item_field(
                        dek, "content_type", content_type, context=context),
                    sealed_sha256=None if sha256 is None else keywrap.seal_item_field(
                        dek, "sha256", sha256, context=context),
                    plaintext_size=plaintext_size, ciphertext_size=writer.size, created_at=now,
                    derived_from=who.original.id if isinstance(who, Derivation) else None,
                    sealed_pages=sealed_pages)
                # A rotation retired the version between our read and our commit (§8.5):
                # wrap again under the version now current.
                if await self._commit_item(who, row, last=attempt == KEY_RETIRED_RETRIES):
                    break
        except BaseException:
            await self.share.remove(writer.blob_id)
            raise
        self.audit.record("item.share", tenant=who.tenant, conference=who.conference_id,
                          who=who.participant_id, item=row.id, bytes=plaintext_size,
                          **({} if row.derived_from is None else
                             {"derived_from": row.derived_from}))
        return self._item_view(row, dek, context)

    async def _commit_item(self, who: Principal | Derivation, row: ItemRow, *,
                           last: bool = True) -> bool:
        """Record the item only if `who` may still share now, not just when the upload
        began: an upload can outlive its cookie's revocation or its conference's end
        (docs/protocol.md §4.1); a derived item, its original's deletion (§9.4). The
        store checks these in the transaction of the insert."""
        jti = None
        if isinstance(who, Principal):
            if self.cookies.expired(who.claims.expires_at):  # the rule `verify` applies (§3)
                raise ServiceError("unauthorized", "token expired")
            jti = who.claims.jti
        # The log row names the item only: no key in the log (or in a NOTIFY).
        outcome = await self.store.commit_item(row, jti=jti, events=[NewEvent(
            type=ItemShared.TYPE, payload=_json({"type": ItemShared.TYPE,
                                                 "item": {"id": row.id}}))],
            max_conference_bytes=self.cfg.wcs.max_conference_bytes, uploaders=UPLOADERS)
        if outcome == "forbidden":  # demoted while the body streamed (§9.2)
            raise ServiceError("forbidden", "only presenters and the organizer may share")
        if outcome == "quota":  # a concurrent upload took the room first
            raise _over_quota(self.cfg.wcs.max_conference_bytes)
        if outcome == "revoked":
            raise ServiceError("unauthorized", "cookie revoked")
        if outcome == "conference_ended":
            raise ServiceError("unauthorized", "conference has ended")
        if outcome == "original_gone":
            raise ServiceError("not_found", "the original item was deleted")
        if outcome == "key_retired":
            if last:
                raise ServiceError("tenant_key_unavailable",
                                   "this tenant's content key is unavailable")
            return False
        return True

    async def list_items(self, who: Principal) -> list[dict[str, Any]]:
        views = []
        for row in await self.store.items(who.conference_id):
            key = await self._unwrap(row)
            views.append(self._item_view(row, key.dek, key.context))
        return views

    async def items_with_keys(self, who: Principal) -> list[SharedItem]:
        """Every current item with its key, for the channel's `welcome`."""
        out = []
        for row in await self.store.items(who.conference_id):
            key = await self._unwrap(row)
            out.append(SharedItem(item=self._item_view(row, key.dek, key.context),
                                  key=b64url(key.dek), context=b64url(key.context)))
        return out

    async def item_key(self, row: ItemRow) -> ItemKey:
        """The key of an item `authenticate_for_item` found."""
        return await self._unwrap(row)

    def item_name_and_type(self, row: ItemRow, key: ItemKey) -> tuple[str, str]:
        """The item's name and content type, unsealed (the decrypting download's headers)."""
        return (keywrap.open_item_field(key.dek, "name", row.sealed_name, context=key.context),
                keywrap.open_item_field(key.dek, "content_type", row.sealed_content_type,
                                        context=key.context))

    async def item_blob(self, row: ItemRow) -> BlobRef:
        """The ciphertext of an item `authenticate_for_item` found; not while its tenant key
        is unavailable (a revoked Customer Key makes content unreadable, docs/protocol.md
        §8.4: the blob too, not only its key)."""
        await self._tenant_key(row.tenant, row.tenant_key_version)
        try:
            fd, size = await self.share.open_blob(row.blob_id)
        except ShareError:
            raise ServiceError("not_found", "item content missing from the share") from None
        return BlobRef(blob_id=row.blob_id, size=size, etag=self.etags.etag(row.blob_id),
                       fd=fd)

    async def delete_item(self, who: Principal, item_id: str) -> None:
        if who.role not in UPLOADERS:
            raise ServiceError("forbidden", "only presenters and the organizer may delete")
        row = await self._item(who, item_id)
        if who.role != "organizer" and row.presenter_pid != who.participant_id:
            raise ServiceError("forbidden", "presenters may delete only their own items")
        deleted = await self.store.delete_item(who.conference_id, item_id, time.time(),
                                               [_log(ItemRemoved(item_id))])
        if deleted is None:
            raise ServiceError("not_found", "unknown item")
        self.audit.record("item.delete", tenant=who.tenant, conference=who.conference_id,
                          who=who.participant_id, item=item_id)
        await self.share.remove(deleted.blob_id)
        if self.converter is not None:
            self.converter.cancel(item_id)
        # A deck's PDF goes with the deck (docs/protocol.md §9.4); a conversion still
        # running finds the deck gone at its commit and stores nothing.
        for derived in await self.store.derived_items(who.conference_id, item_id):
            gone = await self.store.delete_item(who.conference_id, derived.id, time.time(),
                                                [_log(ItemRemoved(derived.id))])
            if gone is not None:
                self.audit.record("item.delete", tenant=who.tenant,
                                  conference=who.conference_id, who=who.participant_id,
                                  item=derived.id, derived_from=item_id)
                await self.share.remove(gone.blob_id)

    async def _item(self, who: Principal, item_id: str) -> ItemRow:
        if not valid_id(item_id):
            raise ServiceError("not_found", "unknown item")
        row = await self.store.item(who.conference_id, item_id)
        if row is None or row.tenant != who.tenant:
            raise ServiceError("not_found", "unknown item")
        return row

    async def _unwrap(self, row: ItemRow) -> ItemKey:
        if not row.wrapped_dek:  # a purge destroyed it; its row goes next (§8.5)
            raise ServiceError("not_found", "unknown item")
        try:
            tenant_key, _ = await self._tenant_key(row.tenant, row.tenant_key_version)
        except ServiceError:
            # A rotation may have rewrapped the DEK and retired its old version since the
            # row was read (§8.5): the row read again names the version to use.
            fresh = await self.store.item(row.conference_id, row.id)
            if fresh is None or fresh.tenant_key_version == row.tenant_key_version:
                raise
            row = fresh
            tenant_key, _ = await self._tenant_key(row.tenant, row.tenant_key_version)
        started = time.perf_counter()
        try:
            dek = keywrap.unwrap_dek(tenant_key, row.wrapped_dek, tenant=row.tenant,
                                     conference_id=row.conference_id, item_id=row.id,
                                     tenant_key_version=row.tenant_key_version)
        except keywrap.KeyWrapError:
            raise ServiceError("internal", "item key failed to unwrap") from None
        finally:
            self.metrics.decrypt_seconds.observe(time.perf_counter() - started)
        return ItemKey(dek=dek, context=item_context(row.tenant, row.conference_id, row.id))

    def _item_view(self, row: ItemRow, dek: bytes, context: bytes) -> dict[str, Any]:
        base = f"{self.cfg.public_url}/v1/conferences/{row.conference_id}/items/{row.id}"
        view: dict[str, Any] = {
            "id": row.id,
            "name": keywrap.open_item_field(dek, "name", row.sealed_name, context=context),
            "content_type": keywrap.open_item_field(dek, "content_type",
                                                    row.sealed_content_type, context=context),
            "size": row.plaintext_size,
            "ciphertext_size": row.ciphertext_size,
            "presenter": row.presenter,
            "created_at": rfc3339(row.created_at),
            "url": f"{base}/content",
            "key_url": f"{base}/key",
        }
        if row.sealed_sha256 is not None:
            view["sha256"] = keywrap.open_item_field(dek, "sha256", row.sealed_sha256,
                                                     context=context)
        if row.derived_from is not None:
            view["derived_from"] = row.derived_from
        if row.sealed_pages is not None:
            view["pages"] = item_pages(row, dek, context)
        return view

    # -- housekeeping -----------------------------------------------------------------
    async def sweep_share(self, min_age_seconds: float = 0.0) -> dict[str, int]:
        """Remove share files that no row references and last written `min_age_seconds`
        ago or before (`FileShare.sweep`); the rows are read first, so a row committed
        meanwhile belongs to a file younger than the cutoff, which stays."""
        known = await self.store.blob_ids()
        return await asyncio.to_thread(self.share.sweep, known, min_age_seconds=min_age_seconds)


def item_pages(row: ItemRow, dek: bytes, context: bytes) -> int | None:
    """A PDF's page count (docs/protocol.md §9.1), unsealed; None when it was not counted."""
    if row.sealed_pages is None:
        return None
    return int(keywrap.open_item_field(dek, "pages", row.sealed_pages, context=context))


def _over_quota(quota: int) -> ServiceError:
    return ServiceError("conference_quota",
                        f"the conference's content would exceed {quota} bytes")


def _check_name(name: str, max_bytes: int) -> str:
    if not name or len(name.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ServiceError("bad_request", "item name is empty or too long")
    if any(ord(c) < 0x20 or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in name):
        raise ServiceError("bad_request", "item name contains control characters")
    return name


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

