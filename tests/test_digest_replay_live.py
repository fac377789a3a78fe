"""Issue 15, finding 5, reproduced as the review did: over real TLS against `webconf serve`.

alice joins on one TLS connection; an eavesdropper who recorded her authorized INVITE replays
it on a new TLS connection (it got 200 and a new participant before the fix), and replays it
against another conference's Request-URI with the digest-uri unchanged (it got 200 as the
organizer of a brand-new conference). The focus core's unit tests (test_digest_replay.py)
cover the same rules with plain bytes; this file shows they hold on the wire.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator

import pytest

from webconf.sip.framing import SipFramer
from webconf.sip.message import Response, parse_auth_params

from .test_hostile_sip import (
    USERS,
    Stack,
    authorization,
    conference_uri,
    nonce_of,
    raw_open,
    read_response,
    request,
    start_stack,
    stop_stack,
)

ALICE = "alice@contoso.example"


@pytest.fixture(scope="module")
def focus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One `webconf serve` (focus + WCS) for the module, with test_hostile_sip's users."""
    running = start_stack(tmp_path_factory.mktemp("replay") / "dep", {})
    try:
        yield running
    finally:
        stop_stack(running)


async def final_response(reader: asyncio.StreamReader, framer: SipFramer) -> Response:
    while True:
        resp = await read_response(reader, framer)
        if resp.status >= 200:
            return resp


async def captured_join(focus: Stack, conf: str) -> bytes:
    """alice's authorized INVITE for `conf`, after it joined her (200) on its own connection."""
    reader, writer = await raw_open(focus.cfg)
    framer = SipFramer()
    uri = conference_uri(conf)
    call_id = secrets.token_hex(8)
    writer.write(request("INVITE", uri=uri, from_user="alice", call_id=call_id))
    challenge = await final_response(reader, framer)
    assert challenge.status == 401
    auth = authorization(ALICE.split("@")[0], USERS[ALICE], nonce_of(challenge), uri)
    authorized = request("INVITE", uri=uri, from_user="alice", call_id=call_id, cseq=2,
                         extra=f"Authorization: {auth}\r\n")
    writer.write(authorized)
    assert (await final_response(reader, framer)).status == 200
    writer.close()
    return authorized


async def answer_on_new_connection(focus: Stack, raw: bytes) -> Response:
    reader, writer = await raw_open(focus.cfg)
    try:
        writer.write(raw)
        return await final_response(reader, SipFramer())
    finally:
        writer.close()


async def test_a_recorded_invite_replayed_on_a_new_connection_admits_no_one(
        focus: Stack) -> None:
    raw = await captured_join(focus, "REPLAY1")
    resp = await answer_on_new_connection(focus, raw)
    assert resp.status == 401, resp.status
    challenges = [parse_auth_params(v)[1] for v in resp.headers.get_fields("WWW-Authenticate")]
    assert challenges and all(c.get("stale") == "true" for c in challenges)


async def test_a_recorded_invite_sent_to_another_conference_is_refused(focus: Stack) -> None:
    raw = await captured_join(focus, "REPLAY2")
    old, new = conference_uri("REPLAY2"), conference_uri("REPLAY3")
    request_line, rest = raw.split(b"\r\n", 1)
    forged = request_line.replace(old.encode(), new.encode()) + b"\r\n" + rest
    assert forged != raw and f'uri="{old}"'.encode() in forged  # digest-uri unchanged
    resp = await answer_on_new_connection(focus, forged)
    assert resp.status in (400, 401), resp.status
