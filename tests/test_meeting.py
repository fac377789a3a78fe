"""MeetingClient end to end against `webconf serve`: join, share, push, decrypt, leave."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from clients.meeting import FocusAddress, MeetingClient, conference_domain
from clients.sip import SipError
from clients.wcs import WcsAuthError
from webconf.deploy.config import Config

from .test_focus_e2e import CONF, USERS, add_users


def client(cfg: Config, address: str, password: str | None = None) -> MeetingClient:
    return MeetingClient(CONF, address, password or USERS[address],
                         focus=FocusAddress("127.0.0.1", cfg.focus.sip_port),
                         ca_pem=cfg.certs_dir / "ca.pem")


def test_conference_domain() -> None:
    assert conference_domain(CONF) == "contoso.example"
    assert conference_domain("sips:bob@fabrikam.example:5061;gruu") == "fabrikam.example"
    assert FocusAddress.parse("[::1]:5061") == FocusAddress("::1", 5061)


async def test_join_share_push_decrypt_leave(deployment: Config, serve, tmp_path: Path) -> None:
    await add_users(deployment)
    await asyncio.to_thread(serve.start)
    alice, bob = client(deployment, "alice@contoso.example"), client(
        deployment, "bob@contoso.example")
    try:
        assert (await alice.join()).role == "organizer"
        assert (await bob.join()).role == "attendee"
        await bob.open_channel()
        source = tmp_path / "deck.bin"
        source.write_bytes(os.urandom(5 * 1024 * 1024 + 77))
        received: list = []

        async def receive() -> None:
            async for event in bob.events():
                if event["type"] == "item.shared":
                    received.append(await bob.fetch(event, tmp_path / "bob"))
                    return

        (tmp_path / "bob").mkdir()
        receiver = asyncio.create_task(receive())
        item = await alice.share(source)
        assert item["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
        await asyncio.wait_for(receiver, 30)
        [result] = received
        assert result.path is not None and result.path.read_bytes() == source.read_bytes()
        assert result.sha256 == item["sha256"]
        with pytest.raises(Exception):  # noqa: B017 - attendees may not share
            await bob.share(source)
        assert await bob.leave() == 200
        # The focus answers the BYE at once and revokes at the WCS right after
        # (docs/protocol.md §2.3): the cookie dies within moments, not at its `exp`.
        async with asyncio.timeout(5):
            while True:
                try:
                    await bob.list_items()
                except WcsAuthError:
                    break
                await asyncio.sleep(0.05)
        assert await alice.leave() == 200
    finally:
        await alice.close()
        await bob.close()


async def test_wrong_password_is_a_sip_error(deployment: Config, serve) -> None:
    await add_users(deployment)
    await asyncio.to_thread(serve.start)
    mallory = client(deployment, "bob@contoso.example", "nope")
    try:
        with pytest.raises(SipError) as err:
            await mallory.join()
        assert err.value.status in (401, 404)
    finally:
        await mallory.close()
