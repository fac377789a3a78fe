"""Requests the focus originates: BYE (a conference ended, or a participation ended
elsewhere) and NOTIFY (focus/subscriptions.py), sans-IO like the core.

The focus is otherwise a pure UAS. It sends BYE when the WCS tells it (docs/protocol.md
§7.3) that a conference ended (`{"ended": id}`) or that a participation whose dialog it
holds ended without that dialog's own BYE (`{"left": ...}`: an eject, a lease
revocation). This module builds requests in a dialog and keeps the BYEs' client
transactions:

- `dialog_route(invite)` keeps, when a dialog is made, what a request in it needs (RFC 3261
  §12.1.1, the UAS side): the remote target (the INVITE's Contact, else its From URI), the
  route set (its Record-Route values, in order), and the From/To values of our requests
  (the INVITE's To with our tag, its From with theirs).
- `RequestWriter.write(...)` serialises one request in a dialog (a fresh Via branch,
  Max-Forwards 70, the dialog's next local CSeq: `Dialog.local_cseq`, shared by the BYE
  and any NOTIFY of a subscription in that dialog).
- `ByeSender.send(dialog, conn, now, reason)` writes the BYE for the dialog's connection
  and remembers its branch. `answered(response)` matches a response by its top Via
  branch and CSeq method; a final one (200, 481, anything >= 200) names the dialog to end
  and why. `expired(now)` names those whose BYE got no final answer within
  `BYE_TIMEOUT_SECONDS` (RFC 3261 Timer F, 64 x T1).

The core ends the dialog (revoking its participation, which the WCS has done already) at
that answer or timeout; while a BYE is out, the dialog is `ending`, so a second notice of
the same end sends nothing.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from webconf.sip.message import Request, Response, SipParseError
from webconf.sip.syntax import parse_name_addr

from .dialogs import Dialog, DialogKey, DialogRoute
from .events import Conn, Send

BYE_TIMEOUT_SECONDS = 32.0
"""RFC 3261 Timer F (64 x T1): a BYE with no final answer by then ends its dialog anyway."""
MAX_FORWARDS = 70
BRANCH_MAGIC = "z9hG4bK"
"""RFC 3261 §8.1.1.7: every branch we make starts with it."""


def dialog_route(invite: Request) -> DialogRoute:
    """The route of the dialog an INVITE makes (read once, when the dialog is created)."""
    remote = invite.headers.get("From") or ""
    target = ""
    contact = invite.headers.get("Contact")
    for value in (contact, remote):
        if not value:
            continue
        try:
            target = str(parse_name_addr(value).uri)
            break
        except SipParseError:
            continue
    return DialogRoute(remote_target=target,
                       route_set=tuple(invite.headers.get_fields("Record-Route")),
                       local=invite.headers.get("To") or "", remote=remote)


def top_branch(message: Request | Response) -> str:
    """The branch of the top Via ("" if none)."""
    via = message.headers.get("Via") or ""
    for part in via.split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "branch":
            return value.strip()
    return ""


class RequestWriter:
    """Serialises the focus's requests in a dialog (its Via names our listener)."""

    def __init__(self, host: str, port: int, tcp_port: int = 0, wss_port: int = 0) -> None:
        self._host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self._port = port
        self._ports = {"TCP": tcp_port, "WSS": wss_port}
        """The listener of each other transport (0: none, use `port`)."""

    def write(self, method: str, route: DialogRoute, *, local_tag: str, call_id: str,
              cseq: int, conn: Conn, headers: Sequence[tuple[str, str]] = (),
              body: bytes = b"") -> tuple[str, bytes] | None:
        """(branch, bytes) of the request; None if it cannot be written (no usable target,
        or a value that would break the message)."""
        if not route.remote_target or not route.remote:
            return None
        branch = BRANCH_MAGIC + secrets.token_hex(10)
        port = self._ports.get(conn.transport) or self._port
        lines = [f"{method} {route.remote_target} SIP/2.0",
                 f"Via: SIP/2.0/{conn.transport} {self._host}:{port};branch={branch}",
                 f"Max-Forwards: {MAX_FORWARDS}",
                 *(f"Route: {value}" for value in route.route_set),
                 f"From: {route.local};tag={local_tag}",
                 f"To: {route.remote}",
                 f"Call-ID: {call_id}",
                 f"CSeq: {cseq} {method}",
                 *(f"{name}: {value}" for name, value in headers),
                 f"Content-Length: {len(body)}", "", ""]
        if any("\r" in line or "\n" in line for line in lines):
            return None
        return branch, "\r\n".join(lines).encode("utf-8", "surrogateescape") + body


@dataclass(slots=True)
class _OutgoingBye:
    dialog: DialogKey
    deadline: float
    reason: str


class ByeSender:
    """The focus's BYE client transactions, by Via branch."""

    def __init__(self, writer: RequestWriter) -> None:
        self._writer = writer
        self._out: dict[str, _OutgoingBye] = {}
        self._ending: set[DialogKey] = set()

    def ending(self, key: DialogKey) -> bool:
        """Whether a BYE of ours is out for this dialog."""
        return key in self._ending

    def send(self, dialog: Dialog, route: DialogRoute, conn: Conn, now: float,
             reason: str = "conference ended") -> Send | None:
        """The BYE for `dialog` on `conn`; None if it cannot be written (no usable target).
        `reason`: what the dialog's end is logged with, at the answer or timeout."""
        written = self._writer.write("BYE", route, local_tag=dialog.local_tag,
                                     call_id=dialog.call_id, cseq=dialog.local_cseq + 1,
                                     conn=conn)
        if written is None:
            return None
        dialog.local_cseq += 1
        branch, data = written
        self._out[branch] = _OutgoingBye(dialog.key, now + BYE_TIMEOUT_SECONDS, reason)
        self._ending.add(dialog.key)
        return Send(conn.id, data)

    def answered(self, response: Response) -> tuple[DialogKey, str] | None:
        """The dialog a final response to one of our BYEs ends, and why (None: not ours,
        or 1xx)."""
        cseq = (response.headers.get("CSeq") or "").split()
        if len(cseq) != 2 or cseq[1] != "BYE" or response.status < 200:
            return None
        out = self._out.pop(top_branch(response), None)
        if out is None:
            return None
        self._ending.discard(out.dialog)
        return out.dialog, out.reason

    def expired(self, now: float) -> list[tuple[DialogKey, str]]:
        """Dialogs whose BYE got no final answer in time, and why (forgotten here)."""
        gone = [branch for branch, out in self._out.items() if now >= out.deadline]
        keys = []
        for branch in gone:
            out = self._out.pop(branch)
            self._ending.discard(out.dialog)
            keys.append((out.dialog, out.reason))
        return keys

    def next_deadline(self) -> float | None:
        return min((out.deadline for out in self._out.values()), default=None)


__all__ = ["BYE_TIMEOUT_SECONDS", "ByeSender", "DialogRoute", "RequestWriter", "dialog_route",
           "top_branch"]
