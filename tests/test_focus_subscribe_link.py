"""The link's roster operation and notices (docs/protocol.md §7.3), WCS side, with the
focus's real `WcsClient` over the link to an in-process WCS: the roster body, its
refusals, `{"roster", "seq"}` on joins and leaves, `{"left"}` on a revocation."""

from __future__ import annotations

import pytest

from focus.conference_info import parse_roster
from focus.wcs_client import WcsClient, WcsRefused
from webconf.deploy.config import Config

from .conftest import running_wcs, wait_for


async def test_roster_operation_and_notices(deployment: Config) -> None:
    async with running_wcs(deployment) as wcs:
        rosters: list[tuple[str, int]] = []
        left: list[tuple[str, str]] = []
        client = WcsClient(wcs.cfg)
        client.on_roster = lambda conf, seq: rosters.append((conf, seq))
        client.on_left = lambda conf, pid: left.append((conf, pid))
        try:
            await client.start_link(wait=10)
            alice = await client.admit("R1", tenant="contoso.example",
                                       organizer="alice@contoso.example",
                                       user="alice@contoso.example")
            conf = alice.conference
            body = await client.roster(tenant="contoso.example",
                                       organizer="alice@contoso.example", uri_id="R1")
            first = parse_roster(body)
            assert first.conference == conf and first.locked is False
            assert [(m.id, m.user, m.role) for m in first.members] == [
                (alice.participant, "alice@contoso.example", "organizer")]
            by_id = parse_roster(await client.roster(tenant="contoso.example",
                                                     conference=conf))
            assert by_id.members == first.members
            # the link follows it now: a join is told with a newer seq
            rosters.clear()
            bob = await client.admit("R1", tenant="contoso.example",
                                     organizer="alice@contoso.example",
                                     user="bob@contoso.example")
            await wait_for(lambda: any(s > first.seq for c, s in rosters if c == conf),
                           timeout=10)
            now = parse_roster(await client.roster(tenant="contoso.example", conference=conf))
            assert [m.user for m in now.members] == ["alice@contoso.example",
                                                     "bob@contoso.example"]
            assert now.seq > first.seq
            # a revocation is told as `left`, then as a roster change
            assert await client.revoke(conf, bob.participant)
            await wait_for(lambda: (conf, bob.participant) in left, timeout=10)
            # refusals
            with pytest.raises(WcsRefused) as other:
                await client.roster(tenant="fabrikam.example", conference=conf)
            assert other.value.status == 403
            with pytest.raises(WcsRefused) as unknown:
                await client.roster(tenant="contoso.example",
                                    organizer="alice@contoso.example", uri_id="NOPE")
            assert unknown.value.status == 404
            assert client.link is not None
            bad = await client.link.call({"op": "roster", "tenant": 3}, 5)
            assert bad["status"] == 400
        finally:
            await client.close()


class _Follower:
    def __init__(self) -> None:
        self.told: list[tuple[str, ...]] = []

    def conference_ended(self, conference_id: str) -> None:
        self.told.append(("ended", conference_id))

    def roster_changed(self, conference_id: str, seq: int) -> None:
        self.told.append(("roster", conference_id, str(seq)))

    def participant_left(self, conference_id: str, participant_id: str) -> None:
        self.told.append(("left", conference_id, participant_id))


async def test_which_rows_are_roster_notices(deployment: Config) -> None:
    """Joins, leaves, role changes and conference updates of a followed conference become
    `roster` notices (a leave a `left` one first); other rows and other conferences none."""
    import json

    ROLE_CHANGED = "participant.role_changed"
    from conferencing.store import EventRow

    async with running_wcs(deployment) as wcs:
        endings = wcs.server.service.endings  # type: ignore[attr-defined]
        follower = _Follower()
        endings.follow(follower, "CONF1")
        who = json.dumps({"participant": {"id": "p9", "user": "u@t", "role": "attendee"}})

        def row(seq: int, kind: str, conference: str = "CONF1") -> EventRow:
            return EventRow(conference, seq, kind, None, False, who, 0.0)

        for seq, kind in enumerate(["participant.joined", "item.shared", ROLE_CHANGED,
                                    "conference.updated", "participant.left"], start=1):
            endings._on_row(row(seq, kind))
        endings._on_row(row(9, "participant.joined", "OTHER"))
        assert [t for t in follower.told if t[0] != "ended"] == [
            ("roster", "CONF1", "1"), ("roster", "CONF1", "3"), ("roster", "CONF1", "4"),
            ("left", "CONF1", "p9"), ("roster", "CONF1", "5")]
