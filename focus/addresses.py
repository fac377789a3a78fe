"""Addresses the focus core writes or repairs: the Contact it hands out, and From/To values
that agents send in a form they cannot read back themselves.

Kept apart from the core (focus/core.py), which calls `bracket_addr_spec` on every
request's From and To before they are echoed in a response, and `make_contact` once per
(conference URI, transport).
"""

from __future__ import annotations

from typing import Protocol

from webconf.sip.message import SipURI
from webconf.sip.syntax import is_token

__all__ = ["ContactSettings", "bracket_addr_spec", "make_contact"]


def bracket_addr_spec(value: str) -> str:
    """A From/To value in addr-spec form whose ";" parameters cannot be header parameters,
    rewritten as `<uri;params>;tag=...`; any other value unchanged.

    RFC 3261 §20.10 puts a URI containing ";" inside angle brackets, but pjsua2 (pjsip 2.15)
    dialing `sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2` sends that To
    bare, and then cannot parse the same To echoed in our responses (`opaque=app:conf:...`
    is no token), so it never sees the 401 or the 200 and the join times out. A value like
    that can only mean URI parameters; valid values (bare or bracketed) are left alone.
    """
    text = value.strip()
    if not text or "<" in text or '"' in text:
        return value
    start = text.find("@") + 1  # a user part may hold ";" (RFC 3261 user-unreserved)
    cut = text.find(";", start)
    if cut < 0:
        return value
    uri, params = text[:cut], [p.strip() for p in text[cut + 1:].split(";")]

    def header_param(param: str) -> bool:
        name, eq, val = param.partition("=")
        return is_token(name.strip()) and (not eq or is_token(val.strip()) or (
            val.strip().startswith("[") and val.strip().endswith("]")))

    if all(header_param(p) for p in params):
        return value
    is_tag = [p.partition("=")[0].strip().lower() == "tag" for p in params]
    inside = [p for p, tag in zip(params, is_tag, strict=True) if not tag]
    outside = [p for p, tag in zip(params, is_tag, strict=True) if tag]
    return "<" + ";".join([uri, *inside]) + ">" + "".join(";" + p for p in outside)


class ContactSettings(Protocol):
    """What `make_contact` reads of the core's settings (`FocusSettings`)."""

    @property
    def contact_host(self) -> str: ...
    @property
    def contact_port(self) -> int: ...
    @property
    def tcp_contact_port(self) -> int: ...
    @property
    def wss_contact_port(self) -> int: ...


def make_contact(settings: ContactSettings, uri: SipURI, transport: str) -> str:
    """The focus's Contact for a dialog with the conference `uri` over `transport` (the
    connection's, lower case): its reachable address with the conference's user part, gruu
    and opaque, plus `isfocus` (docs/protocol.md §2). Over WebSocket the transport parameter
    is `ws` for WS and WSS alike (RFC 7118 §5.2), on the WebSocket listener's port."""
    host = settings.contact_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    scheme = "sips" if uri.scheme == "sips" else "sip"
    port = settings.contact_port
    if transport == "tcp" and settings.tcp_contact_port:
        port = settings.tcp_contact_port
    elif transport in ("ws", "wss"):
        transport, port = "ws", settings.wss_contact_port or port
    params = [f"transport={transport}"] + [
        name if value is None else f"{name}={value}"
        for name, value in uri.params.items() if name in ("gruu", "opaque")]
    contact = SipURI(host=host, scheme=scheme, user=uri.user, port=port)
    return f"<{contact};{';'.join(params)}>;isfocus"
