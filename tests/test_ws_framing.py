"""SIP over WebSocket, sans-IO (docs/protocol.md §10.1): `MessageFramer` (one SIP message per
WebSocket message, RFC 7118 §5) and the focus core on a `WSS` connection: the same join, a
Contact with `transport=ws` on the WebSocket port, and the focus's BYE with a WSS Via."""

from __future__ import annotations

from focus.core import FocusCore, FocusSettings
from focus.events import Admit, Close, Conn, Send
from webconf.sip import digest
from webconf.sip.framing import FramingError, KeepAlive, NeedData, SipFramer
from webconf.sip.message import Request, parse_message
from webconf.sip.ws_framing import MessageFramer, framer_for

from .test_focus_core import NOW, admission, invite, join, responses

WSS = Conn(7, "127.0.0.1", 40000, transport="WSS")


def test_framer_for_transports() -> None:
    assert isinstance(framer_for("WSS"), MessageFramer)
    assert isinstance(framer_for("ws"), MessageFramer)
    assert isinstance(framer_for("TLS"), SipFramer) and isinstance(framer_for("TCP"), SipFramer)


def test_one_message_per_unit_and_errors_are_never_fatal() -> None:
    framer = MessageFramer(max_message_size=2048)
    assert isinstance(framer.next_event(), NeedData)
    good = invite(method="OPTIONS")
    framer.feed(good)
    framer.feed(good.replace(b"Content-Length: 0\r\n", b""))  # Content-Length is optional
    framer.feed(invite(body=b"abcdef").replace(b"Content-Length: 6", b"Content-Length: 3"))
    framer.feed(invite(body=b"ab").replace(b"Content-Length: 2", b"Content-Length: 9"))
    framer.feed(good.replace(b"\r\n\r\n", b"\r\n"))  # no blank line
    framer.feed(b"\r\n\r\n")
    framer.feed(invite(body=b"x" * 3000))
    assert framer.buffered > 0
    first, second, cut = framer.next_event(), framer.next_event(), framer.next_event()
    assert isinstance(first, Request) and isinstance(second, Request)
    assert isinstance(cut, Request) and cut.body == b"abc"  # cut to Content-Length
    truncated, headless, ping, large = (framer.next_event() for _ in range(4))
    assert isinstance(truncated, FramingError) and (truncated.status, truncated.reason) == (
        400, "Truncated Body") and not truncated.fatal and truncated.headers is not None
    assert isinstance(headless, FramingError) and headless.status == 400 and not headless.fatal
    assert headless.headers is not None and headless.headers.get("Via")  # answerable
    assert isinstance(ping, KeepAlive)
    assert isinstance(large, FramingError) and large.status == 513 and not large.fatal
    assert isinstance(framer.next_event(), NeedData) and not framer.closed
    assert framer.buffered == 0


def wss_core() -> FocusCore:
    core = FocusCore(FocusSettings(contact_host="127.0.0.1", contact_port=5061,
                                   wss_contact_port=5062),
                     digest.NonceService(b"k" * 32), digest.FailureThrottle())
    core.connection_made(WSS)
    return core


def test_join_over_wss_contact_and_bye() -> None:
    core = wss_core()
    out = join(core, conn=WSS)
    [admit] = [o for o in out if isinstance(o, Admit)]
    [ok] = responses(core.admitted(admit.ticket, admission("P1"), NOW))
    assert ok.status == 200
    contact = ok.headers.get("Contact")
    assert contact.startswith("<sip:alice@127.0.0.1:5062;transport=ws;gruu;opaque=")
    assert contact.endswith(">;isfocus")
    [bye] = [o for o in core.end_conference("K7Q2", NOW) if isinstance(o, Send)]
    request = parse_message(bye.data)
    assert isinstance(request, Request) and request.method == "BYE"
    assert request.headers.get("Via").startswith("SIP/2.0/WSS 127.0.0.1:5062;branch=z9hG4bK")


def test_garbage_in_a_message_leaves_the_connection_open() -> None:
    core = wss_core()
    out = core.receive_data(WSS.id, b"\x00\x01 not sip", NOW)
    assert not any(isinstance(o, Close) for o in out)
    out = core.receive_data(WSS.id, invite(method="OPTIONS", max_forwards=-1), NOW)
    assert [r.status for r in responses(out)] == [400]
    out = core.receive_data(WSS.id, invite(method="OPTIONS"), NOW)
    assert [r.status for r in responses(out)] == [200]
