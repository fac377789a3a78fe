"""The core's SUBSCRIBE handling (docs/protocol.md §9.3), a part of `FocusCore`.

`FocusCore` (focus/core.py) inherits these methods; they use its connection table, its
replies and its Digest path, and `focus/subscriptions.py` for the notifier's state:

- a SUBSCRIBE is checked first (`subscriptions.check`: 489, 406, 423, 400);
- in a subscription's dialog it refreshes or ends it (on the connection it was made on;
  anywhere else 403: a Call-ID and tags must not be enough to end someone's subscription);
- in a join dialog, on a connection that dialog is bound to, it needs no new
  authentication (as a re-INVITE there); on any other connection 403;
- otherwise it names a conference URI (else `404 Not a Conference URI`) and goes through
  the INVITE's Digest path (challenge, throttle, lookup, verify, same tenant, else 403);
- then `FetchRoster`: the WCS resolves the conference (404 unknown or ended, 403 another
  tenant, 503 unreachable) and its roster answers 200 (`Expires`: the granted expiry),
  followed by the first NOTIFY.
Roster change notices (`roster_changed`) fetch the roster again, one fetch per
conference at a time; a participation that ended elsewhere (`participant_left`) gets a
BYE on its dialog (the core's `_bye`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from webconf.protocol import CONFERENCE_OPAQUE, valid_id
from webconf.sip.message import Request, SipParseError, address_facts
from webconf.sip.syntax import parse_name_addr

from . import subscriptions
from .conference_info import parse_roster
from .dialogs import AwaitingCredentials, ConnState, Dialog, DialogKey
from .events import AdmitFailure, AdmitUnavailable, FetchRoster, Log, Output, Send
from .requests import dialog_route
from .subscriptions import AwaitingRoster, Refusal, Subscriptions, new_tag

if TYPE_CHECKING:
    from .memos import Memos

MAX_FETCHES_PER_CONNECTION = 32
"""SUBSCRIBEs of one connection waiting for the WCS at once; past it, 503."""


class SubscribeHandling:
    """SUBSCRIBE, its roster fetches and the link's notices (mixed into `FocusCore`)."""

    _subs: Subscriptions
    _fetches: dict[int, AwaitingRoster | str]
    """Roster fetches out: a SUBSCRIBE's, or a conference's after a change notice."""
    _conns: dict[int, ConnState]
    _dialogs: dict[DialogKey, Dialog]
    _memos: Memos

    if TYPE_CHECKING:
        def _final(self, state: ConnState, req: Request, branch: str, status: int,
                   reason: str | None = None, *, headers: Sequence[tuple[str, str]] = (),
                   to_tag: str | None = None) -> Send: ...

        def _guard(self, outputs: list[Output]) -> list[Output]: ...

        def _ticket(self) -> int: ...

        def _lookup(self, state: ConnState, lookup: AwaitingCredentials,
                    now: float) -> list[Output]: ...

        def _bye(self, dialog: Dialog, reason: str, now: float) -> list[Output]: ...

        def _dialog_for(self, req: Request) -> Dialog | None: ...

        def _to_tag(self, req: Request) -> str | None: ...

        def _from_tag(self, req: Request) -> str | None: ...

    def _subscribe(self, state: ConnState, req: Request, branch: str,
                   now: float) -> list[Output]:
        conn = state.conn
        in_dialog = self._to_tag(req) is not None
        granted = subscriptions.check(req)
        tag = None if in_dialog else new_tag()
        if isinstance(granted, Refusal):
            return [self._final(state, req, branch, granted.status, granted.reason,
                                headers=granted.headers, to_tag=tag)]
        if in_dialog:
            key = (req.headers.get("Call-ID") or "", self._to_tag(req) or "",
                   self._from_tag(req) or "")
            sub = self._subs.get(key)
            if sub is not None and sub.conn.id == conn.id:
                return [self._final(state, req, branch, 200, headers=[
                    ("Expires", str(granted)), ("Contact", sub.contact)]),
                    *self._subs.refresh(sub, granted, now)]
            dialog = self._dialog_for(req)
            if sub is None and dialog is None:
                return [self._final(state, req, branch, 481)]
            if sub is not None or dialog is None or conn.id not in dialog.conn_ids:
                return [self._final(state, req, branch, 403, "Not Your Connection")]
            return self._want_roster(state, req, branch, dialog.user, granted, dialog)
        opaque = req.uri.params.get("opaque") or ""
        conference_id = opaque[len(CONFERENCE_OPAQUE):] if opaque.startswith(
            CONFERENCE_OPAQUE) else ""
        if not req.uri.user or not valid_id(conference_id):
            return [self._final(state, req, branch, 404, "Not a Conference URI", to_tag=tag)]
        caller = address_facts(req.headers.get("From") or "")
        if caller is None:
            return [self._final(state, req, branch, 400, "Bad From", to_tag=tag)]
        algorithms = self._memos.algorithms(req.headers.get("User-Agent") or "")
        lookup = AwaitingCredentials(self._ticket(), conn.id, req, branch, caller.host.lower(),
                                     caller.user or "", algorithms, None)
        return self._lookup(state, lookup, now)

    def _subscribe_authenticated(self, state: ConnState, req: Request, branch: str,
                                 user: str) -> list[Output]:
        """Digest and the tenant check passed (focus/core.py `_authenticated`)."""
        granted = subscriptions.check(req)
        return self._want_roster(state, req, branch, user,
                                 granted if isinstance(granted, int) else 0, None)

    def _want_roster(self, state: ConnState, req: Request, branch: str, user: str,
                     expires: int, dialog: Dialog | None) -> list[Output]:
        conn = state.conn
        tag = None if dialog is not None else new_tag()
        if state.fetches >= MAX_FETCHES_PER_CONNECTION or not self._subs.room_for(conn.id,
                                                                                  user):
            return [self._final(state, req, branch, 503, "Too Many Subscriptions",
                                headers=[("Retry-After", "5")], to_tag=tag)]
        try:
            entity = str(parse_name_addr(req.headers.get("To") or "").uri)
        except SipParseError:
            entity = str(req.uri)
        uri = req.uri
        tenant = uri.host.lower()
        contact = dialog.contact if dialog is not None else self._memos.contact(
            uri, conn.transport.lower())
        ticket = self._ticket()
        self._fetches[ticket] = AwaitingRoster(ticket, conn, req, branch, user, expires, entity,
                                               contact, dialog)
        state.fetches += 1
        if dialog is not None:
            return [FetchRoster(ticket, dialog.realm, conference=dialog.wcs_conference)]
        opaque = uri.params.get("opaque") or ""
        return [FetchRoster(ticket, tenant, organizer=f"{uri.user}@{tenant}",
                            uri_id=opaque[len(CONFERENCE_OPAQUE):])]

    def roster_fetched(self, ticket: int, body: Mapping[str, Any],
                       now: float) -> list[Output]:
        """The WCS's roster body for `FetchRoster(ticket)`."""
        try:
            roster = parse_roster(body)
        except ValueError:
            return self.roster_failed(ticket, AdmitUnavailable(), now)
        pending = self._fetches.pop(ticket, None)
        if isinstance(pending, str):  # a change: notify, and fetch again if one is due
            out = self._subs.roster(roster, now)
            if self._subs.fetch_again(pending):
                out += self._fetch_change(pending)
            return self._guard(out)
        state = self._conns.get(pending.conn.id) if pending is not None else None
        if pending is None or state is None:
            return []
        state.fetches -= 1
        req = pending.request
        if pending.dialog is not None:
            key, to_tag = pending.dialog.key, None
            route = pending.dialog.route or dialog_route(req)
        else:
            to_tag = new_tag()
            key = (req.headers.get("Call-ID") or "", to_tag, self._from_tag(req) or "")
            route = dialog_route(req)
        headers = [("Expires", str(pending.expires)), ("Contact", pending.contact)]
        if pending.dialog is None:  # a new dialog: its route set, as for the INVITE's 200
            headers += [("Record-Route", rr) for rr in req.headers.get_fields("Record-Route")]
        reply = self._final(state, req, pending.branch, 200, to_tag=to_tag, headers=headers)
        return self._guard([reply, *self._subs.start(pending, key, route, roster.conference,
                                                     roster, now)])

    def roster_failed(self, ticket: int, failure: AdmitFailure, now: float) -> list[Output]:
        """`FetchRoster(ticket)` got no roster: the SUBSCRIBE's answer (404 unknown or ended
        conference, 403 another tenant, 503 the WCS out of reach)."""
        pending = self._fetches.pop(ticket, None)
        if pending is None:
            return []
        if isinstance(pending, str):  # the next notice fetches again
            return [Log({"event": "roster.unavailable", "conference": pending},
                        level="warning")]
        state = self._conns.get(pending.conn.id)
        if state is None:
            return []
        state.fetches -= 1
        headers: list[tuple[str, str]] = []
        if isinstance(failure, AdmitUnavailable):
            status, reason = 503, "WCS Unavailable"
            headers.append(("Retry-After", "5"))
        else:
            status = failure.status if failure.status in (403, 404) else 500
            reason = {404: "Conference Not Found", 403: "Forbidden"}.get(status, "")
        tag = None if pending.dialog is not None else new_tag()
        return self._guard([self._final(state, pending.request, pending.branch, status,
                                        reason or None, headers=headers, to_tag=tag)])

    def roster_changed(self, conference: str, seq: int, now: float) -> list[Output]:
        """The link's `{"roster": conference, "seq": seq}`: fetch it if a subscription
        here follows it and none is out already."""
        if not self._subs.due(conference, seq) or conference in self._fetches.values():
            return []
        return self._fetch_change(conference)

    def resync(self, now: float) -> list[Output]:
        """The link came up again: read the roster of every subscribed conference (changes
        while it was down were not told)."""
        out: list[Output] = []
        for conference in sorted(self._subs.conferences()):
            if conference not in self._fetches.values():
                out += self._fetch_change(conference)
        return out

    def _fetch_change(self, conference: str) -> list[Output]:
        subs = self._subs.of(conference)
        if not subs:
            return []
        sub = subs[0]
        ticket = self._ticket()
        self._fetches[ticket] = conference
        return [FetchRoster(ticket, sub.user.rpartition("@")[2], conference=conference)]

    def participant_left(self, conference: str, participant: str, now: float) -> list[Output]:
        """The link's `{"left": ...}`: BYE the participant's dialog if it is held here and
        no BYE is out for it (its own BYE, which started this, has ended it already)."""
        for dialog in self._dialogs.values():
            if dialog.participant_id == participant and dialog.wcs_conference == conference:
                return self._guard(self._bye(dialog, "revoked", now))
        return []


__all__ = ["MAX_FETCHES_PER_CONNECTION", "SubscribeHandling"]
