"""Requests the focus originates: the BYE that ends a dialog when its conference ends.

The focus is otherwise a pure UAS; the WCS telling it that a conference ended
(docs/protocol.md §7.3, `{"ended": id}` on the link) is the one reason it sends a request.
This module builds that BYE and keeps its client transactions, sans-IO like the core:

- `dialog_route(invite)` keeps, when a dialog is made, what a request in it needs (RFC 3261
  §12.1.1, the UAS side): the remote target (the INVITE's Contact, else its From URI), the
  route set (its Record-Route values, in order), and the From/To values of our requests
  (the INVITE's To with our tag, its From with theirs).
- `ByeSender.send(dialog, conn, now)` writes the BYE (our own CSeq 1: the focus has sent
  nothing in the dialog before; a fresh Via branch; Max-Forwards 70) for the dialog's
  connection, and remembers its branch.
- `answered(response)` matches a response by its top Via branch and CSeq method; a final
  one (200, 481, anything >= 200) names the dialog to end. `expired(now)` names those
  whose BYE got no final answer within `BYE_TIMEOUT_SECONDS` (RFC 3261 Timer F, 64 x T1).

The core ends the dialog (revoking its participation, which the WCS has done already) at
that answer or timeout; while a BYE is out, the dialog is `ending`, so a second notice of
the same end sends nothing.
"""

from __future__ import annotations

import secrets
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


@dataclass(slots=True)
class _OutgoingBye:
    dialog: DialogKey
    deadline: float


class ByeSender:
    """The focus's BYE client transactions, by Via branch."""

    def __init__(self, host: str, port: int, tcp_port: int = 0, wss_port: int = 0) -> None:
        self._host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self._port = port
        self._ports = {"TCP": tcp_port, "WSS": wss_port}
        """The listener of each other transport (0: none, use `port`)."""
        self._out: dict[str, _OutgoingBye] = {}
        self._ending: set[DialogKey] = set()

    def ending(self, key: DialogKey) -> bool:
        """Whether a BYE of ours is out for this dialog."""
        return key in self._ending

    def send(self, dialog: Dialog, route: DialogRoute, conn: Conn, now: float) -> Send | None:
        """The BYE for `dialog` on `conn`; None if it cannot be written (no usable target)."""
        if not route.remote_target or not route.remote:
            return None
        branch = BRANCH_MAGIC + secrets.token_hex(10)
        port = self._ports.get(conn.transport) or self._port
        lines = [f"BYE {route.remote_target} SIP/2.0",
                 f"Via: SIP/2.0/{conn.transport} {self._host}:{port};branch={branch}",
                 f"Max-Forwards: {MAX_FORWARDS}",
                 *(f"Route: {value}" for value in route.route_set),
                 f"From: {route.local};tag={dialog.local_tag}",
                 f"To: {route.remote}",
                 f"Call-ID: {dialog.call_id}",
                 "CSeq: 1 BYE",
                 "Content-Length: 0", "", ""]
        if any("\r" in line or "\n" in line for line in lines):
            return None
        self._out[branch] = _OutgoingBye(dialog.key, now + BYE_TIMEOUT_SECONDS)
        self._ending.add(dialog.key)
        return Send(conn.id, "\r\n".join(lines).encode("utf-8", "surrogateescape"))

    def answered(self, response: Response) -> DialogKey | None:
        """The dialog a final response to one of our BYEs ends (None: not ours, or 1xx)."""
        cseq = (response.headers.get("CSeq") or "").split()
        if len(cseq) != 2 or cseq[1] != "BYE" or response.status < 200:
            return None
        via = response.headers.get("Via") or ""
        branch = ""
        for part in via.split(";")[1:]:
            name, _, value = part.strip().partition("=")
            if name.strip().lower() == "branch":
                branch = value.strip()
        out = self._out.pop(branch, None)
        if out is None:
            return None
        self._ending.discard(out.dialog)
        return out.dialog

    def expired(self, now: float) -> list[DialogKey]:
        """Dialogs whose BYE got no final answer in time (forgotten here)."""
        gone = [branch for branch, out in self._out.items() if now >= out.deadline]
        keys = []
        for branch in gone:
            out = self._out.pop(branch)
            self._ending.discard(out.dialog)
            keys.append(out.dialog)
        return keys

    def next_deadline(self) -> float | None:
        return min((out.deadline for out in self._out.values()), default=None)


__all__ = ["BYE_TIMEOUT_SECONDS", "ByeSender", "DialogRoute", "dialog_route"]
