"""The focus's client of the WCS internal API (docs/protocol.md §4): mTLS, pooled, bounded.

Operations: `admit` (mint a cookie; creates the conference when the organizer is first),
`revoke` (BYE: the cookie stops working), `end`, `heartbeat` and `release` (this focus
process's lease, below), `close`.

The lease (DESIGN §8, focus leases): each client speaks for one focus process, named by
its lease `<node>.<incarnation>` (`lease_name`), a fresh random incarnation per process, so
that a restarted focus, whose dialogs died with its predecessor, never renews the
predecessor's lease. Every admission carries that name (`focus_node`); the focus renews it
with `heartbeat`, and a WCS node revokes the participants of a lease left to go stale.

Plan: once `start_link()` ran (the focus server does it at start), admit, revoke,
heartbeat and release travel over one persistent, pipelined WebSocket to the WCS
(`focus/wcs_link.py`, docs/protocol.md §7.3), many in flight and several per frame. While
that link is down or not yet up, and for `end`, each call is an HTTPS request as before:
one `aiohttp.ClientSession` for the process, created on first use inside the running
loop, over a keep-alive pool of up to 100 TLS connections (plus one connection of its own
for the lease). Both authenticate with the focus's client certificate
(`certs/focus-client.*`) and trust only the deployment CA; an answer means the same
whichever way it came, so callers cannot tell them apart.
Every call is bounded by `focus.wcs_timeout_seconds` in total, connect and TLS handshake
included (on the link: from queueing to the result), and fails one of two ways the SIP
layer can map directly:

- `WcsRefused`: the WCS answered with a 4xx and a JSON error (403 another tenant -> SIP
  403, 404 unknown conference -> SIP 404, 400 -> a bug on our side).
- `WcsUnavailable`: no usable answer (connection refused, TLS failure, timeout, 5xx, 429,
  a malformed success, the link dropped with the call sent): the focus answers 503 with
  Retry-After.

Secrecy: the cookie is a bearer credential. It lives only in `Admission.cookie`
(`webconf.protocol`, the join body's one definition), which `repr()` leaves out; no log
line or exception message is ever built from a response body that can hold one. `revoke`
is idempotent at the WCS, so it alone is retried once.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp

from webconf.deploy.config import Config
from webconf.deploy.tls import client_context
from webconf.protocol import ID_RE, Admission, JoinBodyError

from .wcs_link import LINK_PATH, LinkDown, LinkLost, WcsLink

__all__ = ["Admission", "WcsClient", "WcsRefused", "WcsUnavailable", "new_lease_name"]

log = logging.getLogger("webconf.focus.wcs")

REVOKE_RETRY_DELAY = 0.2
"""Seconds before the one retry of a revoke that found the WCS unavailable."""
WATCH_BATCH = 8192
"""Conference ids per `watch` operation (the WCS's cap, conferencing/api/link.py)."""
LINK_START_WAIT = 2.0
"""How long `start_link` waits, at most, for the link's first connection attempt."""
_BASE = "/internal/v1/conferences"
_NODES = "/internal/v1/focus-nodes"
LEASE_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
"""A focus lease name (docs/protocol.md §7), matched with `fullmatch`."""


def new_lease_name(cfg: Config) -> str:
    """`<node>.<incarnation>`: the node's name and 6 random bytes in base64url (8 characters
    of `[A-Za-z0-9_-]`), new for every focus process."""
    incarnation = base64.urlsafe_b64encode(secrets.token_bytes(6)).decode("ascii")
    name = f"{cfg.node_name}.{incarnation}"
    if not LEASE_RE.fullmatch(name):  # node_name is sanitized; this is a guard, not a path
        raise ValueError(f"invalid lease name {name!r}")
    return name


class WcsRefused(Exception):
    """The WCS refused the request (a 4xx); `code`/`message` are its JSON error's."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"WCS refused with {status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class WcsUnavailable(Exception):
    """No usable answer from the WCS in time: answer the SIP request 503 + Retry-After."""

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        """The HTTP status if the WCS answered at all (5xx, 429), else None."""


def _check_id(kind: str, value: str) -> None:
    if not ID_RE.fullmatch(value) or value in (".", ".."):  # fullmatch: no "id\n"
        raise WcsRefused(400, "bad_request", f"invalid {kind} id")


class WcsClient:
    """One pooled mTLS session to the WCS internal API; `close()` it on shutdown."""

    def __init__(self, cfg: Config, *, timeout: float | None = None,
                 lease_name: str | None = None) -> None:
        self.base_url = cfg.internal_url
        self.timeout = cfg.focus.wcs_timeout_seconds if timeout is None else timeout
        self.lease_name = new_lease_name(cfg) if lease_name is None else lease_name
        """This focus process's lease, recorded with each admission (`focus_node`)."""
        if not LEASE_RE.fullmatch(self.lease_name):
            raise ValueError("invalid lease name")
        # Built now, so a missing or unreadable client certificate fails at startup.
        self._ssl = client_context(cfg, client_cert="focus-client")
        self._session: aiohttp.ClientSession | None = None
        self._lease_session: aiohttp.ClientSession | None = None
        """The lease's own connection: a renewal never queues behind a burst of admits for
        the pool (a lease that misses its timeout costs every participant of the focus)."""
        self.link: WcsLink | None = None
        """The persistent link, once `start_link` made it (None: HTTP only)."""
        self.on_ended: Callable[[str], None] | None = None
        """Told each conference the WCS ended (set before `start_link`; `WcsLink`)."""
        self.on_link_up: Callable[[], None] | None = None
        """Called each time the link comes up (set before `start_link`)."""
        self.on_roster: Callable[[str, int], None] | None = None
        """Told (conference, seq) of roster changes (set before `start_link`; `WcsLink`)."""
        self.on_left: Callable[[str, str], None] | None = None
        """Told (conference, participant) of ended participations (before `start_link`)."""

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=limit, keepalive_timeout=30.0)
        return aiohttp.ClientSession(
            base_url=self.base_url, connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout),
            headers={"User-Agent": "webconf-focus"}, raise_for_status=False)

    def _client(self, *, lease: bool = False) -> aiohttp.ClientSession:
        if lease:
            if self._lease_session is None or self._lease_session.closed:
                self._lease_session = self._new_session(1)
            return self._lease_session
        if self._session is None or self._session.closed:
            self._session = self._new_session(100)
        return self._session

    async def start_link(self, *, wait: float | None = None) -> None:
        """Open the persistent link and keep it open (reconnecting with backoff). Returns
        once the first attempt ended or after `wait` (default: at most 2 s); calls go over
        HTTP until the link is up, and whenever it is down."""
        if self.link is None:
            self.link = WcsLink(f"{self.base_url}{LINK_PATH}", self._ssl, timeout=self.timeout,
                                on_ended=self.on_ended, on_up=self.on_link_up,
                                on_roster=self.on_roster, on_left=self.on_left)
        await self.link.start(min(self.timeout, LINK_START_WAIT) if wait is None else wait)

    async def close(self) -> None:
        link, self.link = self.link, None
        if link is not None:
            await link.close()
        for session in (self._session, self._lease_session):
            if session is not None:
                await session.close()
        self._session = self._lease_session = None

    async def __aenter__(self) -> WcsClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # -- API ------------------------------------------------------------------------------
    async def admit(self, conference_id: str, *, tenant: str, organizer: str, user: str,
                    role: str = "attendee") -> Admission:
        """Admit `user` (`name@tenant`) to `organizer`'s conference `conference_id` (the URI's
        id). The admission names the conference by the WCS's public id (docs/protocol.md §2.1),
        which revocations then use."""
        _check_id("conference", conference_id)
        body = {"tenant": tenant, "organizer": organizer, "user": user, "role": role,
                "focus_node": self.lease_name}
        status, data = await self._call("POST", f"{_BASE}/{conference_id}/participants", body,
                                        op={"op": "admit", "uri_id": conference_id, **body})
        if status != 201:
            raise self._unexpected("admit", status)
        try:
            admission = Admission.from_json(data)
            _check_id("conference", admission.conference)
        except (JoinBodyError, WcsRefused):
            raise WcsUnavailable("WCS admit: malformed response", status) from None  # no body:
            # it may hold the cookie
        return admission

    async def revoke(self, conference_id: str, participant_id: str) -> bool:
        """Revoke the participant's cookie: True if done (or already), False if unknown."""
        _check_id("conference", conference_id)
        _check_id("participant", participant_id)
        path = f"{_BASE}/{conference_id}/participants/{participant_id}"
        op = {"op": "revoke", "conference": conference_id, "participant": participant_id}
        try:
            status, _ = await self._call("DELETE", path, missing_ok=True, op=op)
        except WcsUnavailable:
            await asyncio.sleep(REVOKE_RETRY_DELAY)
            status, _ = await self._call("DELETE", path, missing_ok=True, op=op)
        return self._deleted("revoke", status)

    async def end(self, conference_id: str) -> bool:
        """End the conference (every cookie revoked): True if done, False if unknown."""
        _check_id("conference", conference_id)
        status, _ = await self._call("DELETE", f"{_BASE}/{conference_id}", missing_ok=True)
        return self._deleted("end", status)

    async def watch(self, conferences: list[str]) -> None:
        """Follow these conferences' ends over the link (docs/protocol.md §7.3), in
        batches of `WATCH_BATCH`. Nothing to do while the link is down: the focus sends
        its watch again each time the link comes up. Raises WcsUnavailable/WcsRefused."""
        link = self.link
        for start in range(0, len(conferences), WATCH_BATCH):
            if link is None or not link.up:
                return
            op = {"op": "watch", "conferences": conferences[start:start + WATCH_BATCH]}
            try:
                result = await link.call(op, self.timeout)
            except LinkDown:
                return
            except (LinkLost, TimeoutError) as exc:
                raise WcsUnavailable(f"WCS watch (link): {type(exc).__name__}") from None
            self._link_answer("WATCH", LINK_PATH, result, False, False)

    async def roster(self, *, tenant: str, conference: str | None = None,
                     organizer: str = "", uri_id: str = "") -> dict[str, Any]:
        """The roster body of a conference (docs/protocol.md §7.3), by its public id or by
        its URI; the link follows it from then on. Over the link only (no HTTP route):
        while the link is down, `WcsUnavailable`. Raises WcsRefused (403, 404)."""
        op: dict[str, str] = {"op": "roster", "tenant": tenant}
        if conference is not None:
            _check_id("conference", conference)
            op["conference"] = conference
        else:
            _check_id("conference", uri_id)
            op.update(organizer=organizer, uri_id=uri_id)
        link = self.link
        if link is None or not link.up:
            raise WcsUnavailable("WCS roster: the link is down")
        try:
            result = await link.call(op, self.timeout)
        except (LinkDown, LinkLost, TimeoutError) as exc:
            raise WcsUnavailable(f"WCS roster (link): {type(exc).__name__}") from None
        status, body = self._link_answer("ROSTER", LINK_PATH, result, False, False)
        if status != 200 or not isinstance(body, dict):
            raise WcsUnavailable("WCS roster: malformed result", status)
        return body

    async def heartbeat(self, *, timeout: float | None = None) -> None:
        """Renew this process's lease (the WCS creates it on the first one). Silent on
        failure (`WcsUnavailable`/`WcsRefused`): the caller logs an outage once, not every
        beat. `timeout` bounds this call below the lease's timeout."""
        status, _ = await self._call("PUT", f"{_NODES}/{self.lease_name}", timeout=timeout,
                                     quiet=True, lease=True,
                                     op={"op": "heartbeat", "name": self.lease_name})
        if status != 204:
            raise WcsUnavailable(f"WCS heartbeat: unexpected status {status}", status)

    async def release(self, *, timeout: float | None = None) -> None:
        """Drop this process's lease at a clean stop, once none of its participants is
        left (best effort: a lease that is not released just goes stale)."""
        status, _ = await self._call("DELETE", f"{_NODES}/{self.lease_name}", timeout=timeout,
                                     missing_ok=True, quiet=True, lease=True,
                                     op={"op": "release", "name": self.lease_name})
        if status not in (204, 404):
            raise WcsUnavailable(f"WCS release: unexpected status {status}", status)

    # -- plumbing ---------------------------------------------------------------------------
    def _deleted(self, what: str, status: int) -> bool:
        if status == 204:
            return True
        if status == 404:
            return False
        raise self._unexpected(what, status)

    @staticmethod
    def _unexpected(what: str, status: int) -> WcsUnavailable:
        log.warning("WCS %s: unexpected status %d", what, status)
        return WcsUnavailable(f"WCS {what}: unexpected status {status}", status)

    @staticmethod
    def _down(reason: str, status: int | None, quiet: bool) -> WcsUnavailable:
        if not quiet:
            log.warning("%s", reason)
        return WcsUnavailable(reason, status)

    async def _call(self, method: str, path: str, body: dict[str, str] | None = None, *,
                    missing_ok: bool = False, timeout: float | None = None,
                    quiet: bool = False, lease: bool = False,
                    op: dict[str, str] | None = None) -> tuple[int, Any]:
        """(status, parsed JSON or None) for a 2xx (and a 404 if `missing_ok`); raises
        WcsRefused / WcsUnavailable otherwise. `op`: the same call as a link operation,
        sent over the link when it is up (else, or if it never left, over HTTP).
        `timeout` overrides the client's for this call; `quiet` leaves logging a failure
        to the caller; `lease`: on the lease's own HTTP connection."""
        limit = self.timeout if timeout is None else timeout
        if op is not None and self.link is not None and self.link.up:
            try:
                result = await self.link.call(op, limit)
            except LinkDown:
                pass  # never sent: HTTP below
            except TimeoutError:
                reason = f"WCS {method} {path} (link): no answer within {limit:g} s"
                raise self._down(reason, None, quiet) from None
            except LinkLost as exc:
                raise self._down(f"WCS {method} {path} (link): {exc}", None, quiet) from None
            else:
                return self._link_answer(method, path, result, missing_ok, quiet)
        session = self._client(lease=lease)
        try:
            # aiohttp's total timeout covers connect, TLS and the body; the outer one is a
            # guard against any step it does not bound (a stuck TLS shutdown, say).
            async with asyncio.timeout(limit + 0.5):
                async with session.request(method, path, json=body,
                                           timeout=aiohttp.ClientTimeout(total=limit)) as resp:
                    status = resp.status
                    raw = await resp.read()
        except TimeoutError:
            reason = f"WCS {method} {path}: no answer within {limit:g} s"
            raise self._down(reason, None, quiet) from None
        except (aiohttp.ClientError, OSError) as exc:
            reason = f"WCS {method} {path}: {type(exc).__name__}: {exc}"
            raise self._down(reason, None, quiet) from None
        if status >= 500 or status in (408, 429):
            raise self._down(f"WCS {method} {path}: {status}", status, quiet)
        if status == 404 and missing_ok:
            return status, None
        if status >= 400:
            try:
                error = json.loads(raw)
            except ValueError:
                error = None
            raise WcsRefused(status, *_error_fields(error, status))
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            raise WcsUnavailable(f"WCS {method} {path}: response is not JSON", status) from None

    def _link_answer(self, method: str, path: str, result: dict[str, Any], missing_ok: bool,
                     quiet: bool) -> tuple[int, Any]:
        """A link result read exactly as `_call` reads the HTTP answer it stands for."""
        status = result.get("status")
        if type(status) is not int:
            raise WcsUnavailable(f"WCS {method} {path} (link): malformed result")
        if status >= 500 or status in (408, 429):
            raise self._down(f"WCS {method} {path} (link): {status}", status, quiet)
        if status == 404 and missing_ok:
            return status, None
        if status >= 400:
            raise WcsRefused(status, *_error_fields(result, status))
        return status, result.get("body")


def _error_fields(answer: object, status: int) -> tuple[str, str]:
    """`code`, `message` of a WCS error (an answer `{"error": {"code", "message"}}`, from
    an HTTP body or a link result); generic ones if it holds none."""
    try:
        error = answer["error"]  # type: ignore[index]
        code, message = error["code"], error["message"]
        if isinstance(code, str) and isinstance(message, str):
            return code, message[:200]
    except (KeyError, TypeError):
        pass
    return f"http_{status}", "no JSON error in the response"
