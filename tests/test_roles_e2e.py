"""Roles, the lock and ejects through the real focus and the real CLI (docs/protocol.md §9.2).

One `webconf serve` (focus + WCS subprocesses, SQLite) for the module, as in test_cli.py:

- a locked conference: the INVITE of anyone but the organizer gets SIP 403 from the focus;
  the organizer still joins; unlocked, others join again (`webconf lock [--off]`);
- `MeetingClient.roster` follows joins, role changes and leaves live;
- `webconf join` prints roster changes as they happen; `webconf role` and `webconf eject`
  change and eject by user address; their refusals are one line and an exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients.commands import EXIT_ERROR, EXIT_FORBIDDEN
from clients.meeting import FocusAddress, MeetingClient
from clients.sip import SipError
from webconf.deploy import tls
from webconf.deploy.config import Config

from .conftest import wait_for
from .test_cli import Follow, _env, cli_args, run, serving_stack, uri
from .test_focus_e2e import USERS

ALICE = "alice@contoso.example"
BOB = "bob@contoso.example"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    yield from serving_stack(tmp_path_factory, "roles")


def client(cfg: Config, conf: str, user: str) -> MeetingClient:
    return MeetingClient(uri(conf), user, USERS[user],
                         focus=FocusAddress("127.0.0.1", cfg.focus.sip_port),
                         ssl_context=tls.client_context(cfg))


async def leave(*clients: MeetingClient) -> None:
    for c in clients:
        with contextlib.suppress(Exception):
            await c.leave()
        await c.close()


async def test_a_locked_conference_refuses_invites_with_403(stack: Config) -> None:
    alice = client(stack, "LOCK1", ALICE)
    await alice.join()
    others: list[MeetingClient] = []
    try:
        proc = await asyncio.to_thread(run, stack, "lock", "LOCK1", ALICE)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == f"locked {alice.joined.conference}"  # type: ignore[union-attr]
        bob = client(stack, "LOCK1", BOB)
        others.append(bob)
        with pytest.raises(SipError) as refused:
            await bob.join()
        assert refused.value.status == 403
        again = client(stack, "LOCK1", ALICE)  # the organizer's second device
        others.append(again)
        assert (await again.join()).role == "organizer"
        # An attendee's own `webconf lock` is refused (exit 7): only the organizer locks.
        proc = await asyncio.to_thread(run, stack, "lock", "LOCK1", BOB, "--off")
        assert proc.returncode == EXIT_FORBIDDEN, (proc.stdout, proc.stderr)
        proc = await asyncio.to_thread(run, stack, "lock", "LOCK1", ALICE, "--off")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("unlocked ")
        bob = client(stack, "LOCK1", BOB)
        others.append(bob)
        assert (await bob.join()).role == "attendee"
    finally:
        await leave(alice, *others)


async def test_the_roster_follows_the_meeting_live(stack: Config, tmp_path: Path) -> None:
    alice = client(stack, "ROSTER1", ALICE)
    await alice.join()
    seen: list[dict[str, Any]] = []

    async def follow() -> None:
        async for event in alice.events():
            seen.append(event)

    follower = asyncio.create_task(follow())
    bob = client(stack, "ROSTER1", BOB)
    try:
        await wait_for(lambda: len(alice.roster) == 1, 10)
        me = alice.joined.participant  # type: ignore[union-attr]
        assert alice.roster[me].user == ALICE and alice.roster[me].role == "organizer"
        assert alice.roster[me].joined_at.endswith("Z")
        joined = await bob.join()
        await wait_for(lambda: joined.participant in alice.roster, 10)
        assert alice.roster[joined.participant].role == "attendee"
        entry = await alice.set_role(joined.participant, "presenter")
        assert entry["role"] == "presenter"
        await wait_for(lambda: alice.roster[joined.participant].role == "presenter", 10)
        deck = tmp_path / "deck.pdf"
        deck.write_bytes(b"%PDF-1.4 promoted")
        assert (await bob.share(deck))["name"] == "deck.pdf"  # the same cookie shares now
        assert await bob.leave() == 200
        await wait_for(lambda: joined.participant not in alice.roster, 10)
        assert list(alice.roster) == [me]
        assert any(e.get("type") == "participant.role_changed" for e in seen)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
        await leave(alice, bob)


def test_join_prints_role_changes_and_the_eject(stack: Config) -> None:
    proc = run(stack, "lock", "ROLES1", ALICE, "--off")  # starts the conference
    assert proc.returncode == 0, proc.stderr
    bob = Follow(cli_args(stack, "join", "ROLES1", BOB, "--duration", "45"), _env(BOB, None))
    try:
        bob.wait_for(r"^joined ROLES1 as attendee \(participant ")
        proc = run(stack, "role", "ROLES1", ALICE, BOB, "presenter")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"role {BOB} presenter (participant ")
        bob.wait_for(rf"^participant\.role_changed {BOB} is now presenter$")
        # Refusals: a user not in the meeting (1), not the organizer (7).
        proc = run(stack, "role", "ROLES1", ALICE, "nobody@contoso.example", "attendee")
        assert proc.returncode == EXIT_ERROR and "no participant" in proc.stderr
        proc = run(stack, "eject", "ROLES1", BOB, BOB)  # bob's other join is a target
        assert proc.returncode == EXIT_FORBIDDEN, proc.stderr
        assert "HTTP 403" in proc.stderr
        proc = run(stack, "eject", "ROLES1", ALICE, BOB)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"ejected {BOB} (participant ")
        bob.wait_for(r"^revoked \(ejected\)$")
        code, err = bob.finish()
    finally:
        if bob.proc.poll() is None:
            bob.proc.kill()
    assert code == 0, err
