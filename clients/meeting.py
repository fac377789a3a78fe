"""`MeetingClient`: one participant of one conference, over the public protocols only.

join (SIP/TLS INVITE with Digest, dialog kept open) -> WcsSession with the cookie from the
200 OK -> data channel (WSS, reconnecting) -> share (streamed upload) / receive (each pushed
item downloaded and decrypted while it streams, only verified plaintext released) ->
leave (BYE). Load tests share one SIP connection and one HTTPS pool between many clients.

Presenting (docs/protocol.md §9.1): `presentation` is the conference's state, kept live from
the welcome and `presentation.changed` as `events()` passes them; `set_page` turns the page
(presenters); `follow(False)` browses on one's own (`browse`), `follow(True)` goes back to
the presenter's page; `view` is what this participant looks at.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from webconf.events import (
    ItemRemoved,
    Presentation,
    PresentationChanged,
    SharedItem,
    Welcome,
    parse_event,
)

from .download import DownloadResult, download_document, download_item
from .roster import LiveRoster, Member
from .sip import ConferenceDialog, JoinResult, SipConnection, SipError
from .wcs import Channel, Progress, WcsError, WcsSession, b64url_decode, client_ssl_context

DEFAULT_SIP_PORT = 5061


@dataclass(frozen=True)
class FocusAddress:
    host: str
    port: int = DEFAULT_SIP_PORT

    @classmethod
    def parse(cls, text: str) -> FocusAddress:
        host, sep, port = text.rpartition(":")
        if not sep:
            return cls(text)
        return cls(host.strip("[]"), int(port))


def conference_domain(conference_uri: str) -> str:
    """The tenant domain of `sip:org@domain;...` (the name the focus's cert must carry)."""
    rest = conference_uri.split(":", 1)[1]
    host = rest.split("@", 1)[-1].split(";", 1)[0].split("?", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class MeetingClient:
    def __init__(self, conference_uri: str, address: str, password: str, *,
                 focus: FocusAddress | None = None, ca_pem: str | Path | None = None,
                 ssl_context: ssl.SSLContext | None = None,
                 sip_connection: SipConnection | None = None,
                 http: aiohttp.ClientSession | None = None, timeout: float = 15.0) -> None:
        self.conference_uri = conference_uri
        self.address = address
        self._password = password
        self.domain = conference_domain(conference_uri)
        self.focus = focus or FocusAddress(self.domain)
        self.ssl = ssl_context or client_ssl_context(ca_pem)
        self.timeout = timeout
        self._shared_sip = sip_connection
        self._http = http
        self.sip: SipConnection | None = sip_connection
        self.dialog: ConferenceDialog | None = None
        self.joined: JoinResult | None = None
        self.wcs: WcsSession | None = None
        self.channel: Channel | None = None
        self._roster = LiveRoster()
        self.presentation: Presentation | None = None
        """The conference's presentation as last heard (docs/protocol.md §9.1)."""
        self.following = True
        self._own_view: tuple[str, int] | None = None

    async def join(self) -> JoinResult:
        if self.sip is None:
            self.sip = await SipConnection.open(self.focus.host, self.focus.port,
                                                ssl_context=self.ssl,
                                                server_hostname=self.domain,
                                                timeout=self.timeout)
        self.dialog = ConferenceDialog(self.sip, self.conference_uri, self.address,
                                       self._password)
        self.joined = await self.dialog.join()
        self.wcs = WcsSession(self.joined.webconf_url, self.joined.conference,
                              self.joined.cookie, ssl=self.ssl, session=self._http)
        return self.joined

    @property
    def role(self) -> str:
        """Our role in force: the join's, then as the roster's events changed it (§9.2)."""
        if self.joined is None:
            return ""
        me = self._roster.members.get(self.joined.participant)
        return me.role if me is not None else self.joined.role

    def _session(self) -> WcsSession:
        if self.wcs is None:
            raise RuntimeError("join() first")
        return self.wcs

    async def open_channel(self) -> Channel:
        self.channel = await Channel.connect(self._session())
        return self.channel

    @property
    def roster(self) -> dict[str, Member]:
        """The live participants by id (docs/protocol.md §9.2): loaded when `events()`
        starts, then kept current by the events it yields (a reconnect that could not
        replay what it missed loads it again)."""
        return self._roster.members

    @property
    def locked(self) -> bool:
        """The conference is locked, as of the roster and the events since."""
        return self._roster.locked

    async def load_roster(self) -> dict[str, Member]:
        """(Re)load the roster with `GET .../participants`."""
        self._roster.load(await self._session().participants())
        return self.roster

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Channel events, the welcome's items first (as `item.shared`); the roster
        (`roster`) and the presentation state (`presentation`) follow them."""
        channel = self.channel or await self.open_channel()
        self.track(channel.welcome)
        with contextlib.suppress(WcsError):  # no roster (yet): the meeting goes on
            await self.load_roster()  # after the welcome: events up to its seq are in it
        for entry in channel.welcome.get("items", []):
            yield {"type": "item.shared", **entry, "from_welcome": True}
        async for event in channel.events():
            if event.get("type") == "channel.reconnected" and not event.get("resumed"):
                with contextlib.suppress(WcsError):
                    await self.load_roster()  # events were missed: read it afresh
            else:
                self._roster.apply(event)
            self.track(event)
            yield event

    async def set_role(self, participant_id: str, role: str) -> dict[str, Any]:
        """Give a participant another role (the organizer only)."""
        return await self._session().set_role(participant_id, role)

    async def eject(self, participant_id: str) -> None:
        """Eject a participant (the organizer only; the focus then sends them BYE)."""
        await self._session().eject(participant_id)

    async def lock(self, locked: bool = True) -> dict[str, Any]:
        """Lock (or unlock) the conference: no new joins but the organizer's."""
        return await self._session().update_conference(locked=locked)

    # -- presenting (docs/protocol.md §9.1) ------------------------------------------------
    def track(self, data: dict[str, Any]) -> bool:
        """Apply a channel event to `presentation`; True when it changed."""
        try:
            event = parse_event(data)
        except ValueError:
            return False
        if isinstance(event, Welcome):
            self.presentation = event.presentation
            return True
        if isinstance(event, PresentationChanged):
            current = self.presentation
            if not data.get("synthetic") and current is not None and event.seq <= current.seq:
                return False  # older than what the welcome already showed
            self.presentation = event.state
            return True
        if isinstance(event, ItemRemoved) and self.presentation is not None and (
                self.presentation.item == event.item_id):
            self.presentation = None  # the presented item is gone, and the presentation
            return True
        return False

    def follow(self, enabled: bool) -> None:
        """Follow the presenter's page (True), or browse on one's own from where it is."""
        if not enabled and self.following and self.presentation is not None:
            self._own_view = (self.presentation.item, self.presentation.page)
        self.following = enabled

    def browse(self, item: str, page: int) -> None:
        """Look at another page on one's own (stops following)."""
        self.following = False
        self._own_view = (item, page)

    @property
    def view(self) -> tuple[str, int] | None:
        """(item, page) this participant looks at: the presenter's while following."""
        if self.following:
            shown = self.presentation
            return None if shown is None else (shown.item, shown.page)
        return self._own_view

    async def set_page(self, item: str | None, page: int | None = None, *,
                       via_channel: bool = False) -> dict[str, Any] | None:
        """Show `item` at `page` to everyone (None: stop presenting). Over HTTP (default)
        the new state is returned and refusals raise `WcsError`; `via_channel` sends
        `presentation.set` instead, whose answer is the `presentation.changed` (or an
        `error` event) that `events()` yields."""
        if via_channel:
            channel = self.channel or await self.open_channel()
            message: dict[str, Any] = {"type": "presentation.set", "item": item}
            if item is not None:
                message["page"] = page
            await channel.send(message)
            return None
        return await self._session().set_presentation(item, page)

    async def share(self, path: str | Path, *, name: str | None = None,
                    progress: Progress | None = None) -> dict[str, Any]:
        p = Path(path)
        return await self._session().upload(p, name=name or p.name, progress=progress)

    async def fetch(self, event: dict[str, Any], dest: Path | None, *,
                    progress: Any = None) -> DownloadResult:
        """Download and decrypt a pushed item (`item.shared` event or welcome entry)."""
        entry = SharedItem.from_json(event)
        key, context = b64url_decode(entry.key), b64url_decode(entry.context)
        return await download_item(self._session(), entry.item, key, context, dest,
                                   expected_sha256=entry.item.get("sha256"), progress=progress)

    async def fetch_item(self, item: dict[str, Any], dest: Path | None, *,
                         server_decrypt: bool = False) -> DownloadResult:
        """Download an item from the list, fetching its key from the key endpoint; with
        `server_decrypt`, the plaintext the WCS decrypts (`.../document`) instead."""
        if server_decrypt:
            return await download_document(self._session(), item, dest,
                                           expected_sha256=item.get("sha256"))
        key, context = await self._session().item_key(item["id"])
        return await download_item(self._session(), item, key, context, dest,
                                   expected_sha256=item.get("sha256"))

    async def end_conference(self) -> None:
        """End the conference for everyone (the organizer only; the focus then sends BYE)."""
        await self._session().end_conference()

    async def list_items(self) -> list[dict[str, Any]]:
        return await self._session().list_items()

    async def leave(self) -> int:
        """BYE (the cookie is revoked at the WCS); returns the SIP status."""
        status = 0
        if self.dialog is not None and self.joined is not None:
            try:
                status = await self.dialog.leave()
            except SipError as exc:
                status = exc.status
        return status

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.wcs is not None:
            await self.wcs.close()
        if self.sip is not None and self._shared_sip is None:
            await self.sip.close()
