"""Two nodes (2 focus + 2 WCS processes) on one PostgreSQL behind HAProxy (issue 10, §7).

The set-up is docs/deployment.md's "Many nodes", on loopback (tests/multinode.py): one
`webconf init --database --share`, a copy of DIR per node, `webconf serve --node`, and
HAProxy in TCP mode with TLS passed through, configured by docs/haproxy.cfg itself. Clients
use the client library over the public protocols, through the balancer; where a case needs a
given node (a share on one node reaching a channel on the other), a client talks to that
node's own port instead.

Serial part of `make test` (Makefile SERIAL_TESTS): a node is killed and a lease must go
stale, so a busy neighbour would only make the waits longer.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from clients.download import download_item
from clients.meeting import FocusAddress, MeetingClient
from clients.wcs import Channel, WcsSession, b64url_decode
from tests.backends import PgServer, selected_backends
from webconf.cli import main as cli_main
from webconf.retry import Backoff

from .multinode import (
    LOOPBACK,
    Cluster,
    Collector,
    Node,
    RawChannel,
    haproxy_missing,
    summarize,
    without_webconf_env,
)


def _postgres_missing() -> str | None:
    try:
        backends = selected_backends()
    except ValueError as exc:
        return str(exc)
    return None if "postgresql" in backends else "WEBCONF_TEST_BACKENDS leaves PostgreSQL out"


pytestmark = [
    pytest.mark.skipif(haproxy_missing() is not None, reason=str(haproxy_missing())),
    pytest.mark.skipif(_postgres_missing() is not None, reason=str(_postgres_missing())),
    pytest.mark.timeout(300),
]

USERS = {f"{name}@contoso.example": f"{name}-pw-{secrets.token_hex(4)}"
         for name in ("alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi")}
FAST = Backoff(initial=0.1, maximum=1.0)
"""Channel reconnects: a test need not wait out the library's 10 s ceiling."""


def conference(organizer: str, cid: str) -> str:
    return f"sip:{organizer}@contoso.example;gruu;opaque=app:conf:focus:id:{cid}"


def address(name: str) -> str:
    return f"{name}@contoso.example"


@pytest.fixture(scope="module")
def cluster(pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Two nodes and the balancer, shared by the tests that kill nothing."""
    with running_cluster(pg_server, tmp_path_factory.mktemp("multinode")) as started:
        yield started


class running_cluster:  # noqa: N801 - used like a function
    """A started `Cluster` on a database of its own; stopped, database emptied, on exit."""

    def __init__(self, pg_server: PgServer, workdir: Path) -> None:
        self.pg_server = pg_server
        self.workdir = workdir
        self.database = ""
        self.cluster: Cluster | None = None

    def __enter__(self) -> Cluster:
        self.database = self.pg_server.acquire()
        try:
            self.cluster = Cluster(self.workdir, self.pg_server.url(self.database),
                                   USERS).start()
        except BaseException:
            self.pg_server.release(self.database)
            raise
        return self.cluster

    def __exit__(self, *exc: object) -> None:
        try:
            if self.cluster is not None:
                self.cluster.stop()
        finally:
            self.pg_server.release(self.database)


@pytest.fixture
async def meeting(cluster: Cluster) -> AsyncIterator[list[Any]]:
    """Things a test opened (clients, sessions, collectors), closed after it whatever happens."""
    opened: list[Any] = []
    yield opened
    await close_all(opened)


async def close_all(opened: list[Any]) -> None:
    for thing in reversed(opened):
        try:
            await asyncio.wait_for(thing.close(), 10)
        except Exception:  # noqa: BLE001, S112 - best effort; the nodes stop anyway
            continue


async def join(cluster: Cluster, name: str, uri: str, sip_port: int,
               opened: list[Any]) -> MeetingClient:
    """`name` joins `uri` through the SIP port given (the balancer's or one node's)."""
    client = MeetingClient(uri, address(name), USERS[address(name)],
                           focus=FocusAddress(LOOPBACK, sip_port), ca_pem=cluster.ca_pem)
    opened.append(client)
    await client.join()
    return client


def session_at(cluster: Cluster, url: str, client: MeetingClient,
               opened: list[Any]) -> WcsSession:
    """`client`'s cookie, used at `url` (a node's own address)."""
    assert client.joined is not None
    session = cluster.session(url, client.joined.conference, client.joined.cookie)
    opened.append(session)
    return session


async def channel(session: WcsSession, opened: list[Any]) -> Collector:
    collector = Collector(await Channel.connect(session, backoff=FAST))
    opened.append(collector)
    return collector


async def items_status(cluster: Cluster, url: str, client: MeetingClient) -> int:
    """GET the conference's items at `url` with `client`'s cookie: 200, or 401 once revoked."""
    assert client.joined is not None
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=cluster.ssl)) as http, http.get(
                f"{url}/v1/conferences/{client.joined.conference}/items",
                headers={"Authorization": f"Bearer {client.joined.cookie}"}) as resp:
        return resp.status


async def wait_status(cluster: Cluster, url: str, client: MeetingClient, wanted: int,
                      what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        status = await items_status(cluster, url, client)
        if status == wanted:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{what}: {url} answers {status}, not {wanted}, after {timeout:g} s")


def wcs_of(client: MeetingClient) -> WcsSession:
    """The client's own session: at the address its join answer named (the balancer)."""
    assert client.wcs is not None, "join first"
    return client.wcs


async def admitted_by(node: Node, participant: str, timeout: float = 10.0) -> None:
    """Until `node`'s focus has logged the join of `participant` (it logs as it answers)."""
    deadline = time.monotonic() + timeout
    while participant not in node.joined():
        assert time.monotonic() < deadline, f"{participant} was not admitted by {node.name}"
        await asyncio.sleep(0.05)


def a_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(secrets.token_bytes(3000) + name.encode())
    return path


async def upload(session: WcsSession, path: Path) -> str:
    item = await session.upload(path, name=path.name)
    return str(item["id"])


def received_once(collector: Collector, item_id: str) -> bool:
    return item_id in collector.shared()


def has(item_id: str) -> Callable[[Collector], bool]:
    return lambda collector: received_once(collector, item_id)


# -- (a) joins through the balancer --------------------------------------------------------------

async def test_joins_through_the_balancer_land_on_both_nodes(
        cluster: Cluster, meeting: list[Any], tmp_path: Path) -> None:
    uri = conference("alice", "MNJOIN")
    names = ["alice", "bob", "carol", "dave"]
    clients = [await join(cluster, name, uri, cluster.sip_port, meeting) for name in names]
    for client in clients:
        assert client.joined is not None
        assert client.joined.webconf_url == cluster.url  # the WCS is reached through HAProxy
    pids = {client.joined.participant for client in clients if client.joined}
    assert len(pids) == len(names)

    served: dict[str, set[str]] = {}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # a focus logs the join as it answers it
        served = {name: node.joined() & pids for name, node in cluster.nodes.items()}
        if set().union(*served.values()) == pids:
            break
        await asyncio.sleep(0.05)
    assert set().union(*served.values()) == pids, served
    assert all(served.values()), f"one node's focus served every join: {served}"
    assert not served["n1"] & served["n2"], served
    assert all(cluster.lb.sessions("webconf_sip", name) > 0 for name in cluster.nodes)

    # The WCS through the balancer: items, channels, a share pushed to everyone.
    for client in clients:
        assert await client.list_items() == []
    collectors = []
    for client in clients:
        collectors.append(Collector(await client.open_channel()))
        meeting.append(collectors[-1])
    item = await clients[0].share(a_file(tmp_path, "agenda.txt"))
    for collector in collectors:
        await collector.wait(lambda c: received_once(c, item["id"]), "the shared item")
        assert collector.shared() == [item["id"]]
    assert all(cluster.lb.sessions("webconf_wcs", name) > 0 for name in cluster.nodes)
    for client in clients[1:]:
        assert await client.leave() == 200
    assert await clients[0].leave() == 200


# -- (b) a share on one node reaches channels held on the other ----------------------------------

async def test_a_share_on_one_node_reaches_channels_on_the_other(
        cluster: Cluster, meeting: list[Any], tmp_path: Path) -> None:
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    uri = conference("alice", "MNSHARE")
    alice = await join(cluster, "alice", uri, n1.sip_port, meeting)  # n1's focus
    bob = await join(cluster, "bob", uri, n2.sip_port, meeting)  # n2's focus
    carol = await join(cluster, "carol", uri, cluster.sip_port, meeting)
    on_n1 = await channel(session_at(cluster, n1.url, bob, meeting), meeting)
    on_n2 = await channel(session_at(cluster, n2.url, carol, meeting), meeting)
    via_lb = Collector(await alice.open_channel())
    meeting.append(via_lb)
    everyone = [on_n1, on_n2, via_lb]

    shared = []
    for where, session in (("n1", session_at(cluster, n1.url, alice, meeting)),
                           ("n2", session_at(cluster, n2.url, alice, meeting)),
                           ("balancer", wcs_of(alice))):
        item_id = await upload(session, a_file(tmp_path, f"from-{where}.bin"))
        shared.append(item_id)
        for collector in everyone:
            await collector.wait(has(item_id), f"the item shared at {where}")
    for collector in everyone:
        assert collector.shared() == shared, summarize(collector.events)

    # The blob written by n1 is read by n2 from the common share.
    first = next(e for e in on_n2.events if e.get("type") == "item.shared"
                 and e["item"]["id"] == shared[0])
    item = {**first["item"], "url": first["item"]["url"].replace(cluster.url, n2.url, 1)}
    result = await download_item(session_at(cluster, n2.url, carol, meeting), item,
                                 b64url_decode(first["key"]), b64url_decode(first["context"]),
                                 None)
    assert result.size == (tmp_path / "from-n1.bin").stat().st_size
    for client in (bob, carol, alice):
        assert await client.leave() == 200


# -- (c) BYE at one node's focus closes a channel held on the other ------------------------------

async def test_bye_on_one_node_closes_a_channel_on_the_other(
        cluster: Cluster, meeting: list[Any]) -> None:
    n1, n2 = cluster.node("n1"), cluster.node("n2")
    uri = conference("alice", "MNBYE")
    alice = await join(cluster, "alice", uri, n2.sip_port, meeting)
    dave = await join(cluster, "dave", uri, n1.sip_port, meeting)  # dialog held by n1's focus
    daves = await channel(session_at(cluster, n2.url, dave, meeting), meeting)  # on n2
    for url in (n1.url, n2.url, cluster.url):
        assert await items_status(cluster, url, dave) == 200

    assert await dave.leave() == 200  # BYE to n1's focus
    await daves.wait(lambda c: c.ended, "dave's channel on n2 closing", timeout=10)
    assert daves.channel.end_reason == "revoked", summarize(daves.events)
    assert any(e.get("type") == "revoked" for e in daves.events), summarize(daves.events)
    for url in (n1.url, n2.url, cluster.url):
        assert await items_status(cluster, url, dave) == 401, url
    assert await items_status(cluster, cluster.url, alice) == 200  # only dave's was revoked
    assert await alice.leave() == 200


# -- `webconf loadtest` through the balancer -----------------------------------------------------

async def test_loadtest_through_the_balancer(cluster: Cluster) -> None:
    """`--dir DIR --focus BALANCER`: users added to DIR's database, joins sent to HAProxy,
    HTTP to the join answers' `webconf_url` (the balancer's too); both nodes take a share."""
    before = {(backend, name): cluster.lb.sessions(backend, name) for name in cluster.nodes
              for backend in ("webconf_sip", "webconf_wcs")}
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "webconf", "loadtest", "--dir", str(cluster.base_dir),
         "--focus", f"{LOOPBACK}:{cluster.sip_port}", "--participants", "8",
         "--conferences", "2", "--items", "1", "--item-size", "64KiB", "--json",
         "--timeout", "30"],
        capture_output=True, text=True, timeout=180, check=False, env=without_webconf_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["error_count"] == 0, report.get("error_examples")
    assert report["joins_ok"] == 8
    assert report["downloads_verified"] == 8
    grew = {key: cluster.lb.sessions(*key) - count for key, count in before.items()}
    assert all(count > 0 for count in grew.values()), grew


def test_loadtest_balancer_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["loadtest", "--dir", "x", "--focus", "127.0.0.1:5061",
                     "--ca", "ca.pem"]) == 2
    assert "--ca only go with --focus alone" in capsys.readouterr().err
    assert cli_main(["loadtest", "--dir", "x", "--focus", "127.0.0.1:sip"]) == 2
    assert "not HOST:PORT" in capsys.readouterr().err


# -- (d) kill -9 of a node mid-meeting; (e) its focus's participants revoked by the lease --------

async def test_a_killed_node_loses_no_item_and_its_dialogs_expire(
        pg_server: PgServer, tmp_path: Path) -> None:
    with running_cluster(pg_server, tmp_path / "cluster") as cl:
        opened: list[Any] = []
        try:
            await _kill_a_node_mid_meeting(cl, opened, tmp_path)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n\nlogs:\n{cl.logs()}") from None
        finally:
            await close_all(opened)


async def _kill_a_node_mid_meeting(cl: Cluster, opened: list[Any], tmp_path: Path) -> None:
    n1, n2 = cl.node("n1"), cl.node("n2")  # n1 dies, n2 survives
    uri = conference("alice", "MNKILL")
    alice = await join(cl, "alice", uri, n2.sip_port, opened)
    erin = await join(cl, "erin", uri, n2.sip_port, opened)
    frank = await join(cl, "frank", uri, n2.sip_port, opened)
    grace = await join(cl, "grace", uri, n1.sip_port, opened)  # dialogs on the focus that dies
    heidi = await join(cl, "heidi", uri, n1.sip_port, opened)
    for client in (grace, heidi):
        assert await items_status(cl, n2.url, client) == 200

    # Channels through the balancer, all on n1: n2 takes no new WCS connection meanwhile.
    cl.lb.set_state("webconf_wcs", "n2", "maint")
    assert erin.wcs is not None
    erins = await channel(erin.wcs, opened)  # the client library, reconnecting by itself
    assert frank.joined is not None
    franks = RawChannel(cl.url, frank.joined.conference, frank.joined.cookie, cl.ssl)
    opened.append(franks)
    assert (await franks.connect())["type"] == "welcome"
    graces = await channel(session_at(cl, n2.url, grace, opened), opened)  # on the survivor
    cl.lb.set_state("webconf_wcs", "n2", "ready")
    await cl.lb.await_status("webconf_wcs", "n2", "UP")

    before = await upload(wcs_of(alice), a_file(tmp_path, "before.bin"))
    await erins.wait(lambda c: received_once(c, before), "the item shared before the kill")
    await franks.until(lambda f: f.get("type") == "item.shared" and f["item"]["id"] == before,
                       "the item shared before the kill")
    seen = franks.last_seq
    assert seen is not None, f"channel events carry no seq: {summarize(franks.frames)}"

    # kill -9 of n1 (supervisor, focus, WCS); nothing on the balancer's WCS side until the
    # survivor is let in again, so the items below are shared while the clients are away.
    cl.lb.set_state("webconf_wcs", "n2", "maint")
    n1.kill9()
    await cl.lb.await_status("webconf_wcs", "n1", "DOWN", timeout=10)
    await cl.lb.await_status("webconf_sip", "n1", "DOWN", timeout=10)
    closed = await franks.next(10)
    assert closed["type"] == "closed", closed
    alice_n2 = session_at(cl, n2.url, alice, opened)
    meanwhile = [await upload(alice_n2, a_file(tmp_path, f"meanwhile-{i}.bin"))
                 for i in range(3)]
    assert not any(i in erins.shared() for i in meanwhile), "erin's channel was not cut"
    cl.lb.set_state("webconf_wcs", "n2", "ready")
    await cl.lb.await_status("webconf_wcs", "n2", "UP")

    # The library client reconnects through the balancer to n2 and resumes from its seq.
    await erins.wait(lambda c: all(i in c.shared() for i in meanwhile),
                     "the items shared while erin was away", timeout=30)
    assert erins.channel.reconnects >= 1
    counts = Counter(erins.shared())
    assert all(counts[i] == 1 for i in [before, *meanwhile]), summarize(erins.events)
    resumed = [e for e in erins.events if e.get("type") == "item.shared"
               and e["item"]["id"] in meanwhile]
    assert all(isinstance(e.get("seq"), int) and not e.get("synthetic") for e in resumed), (
        f"erin's reconnect did not resume from the log: {summarize(erins.events)}")
    marks = [e for e in erins.events if e.get("type") == "channel.reconnected"]
    assert marks and all(m.get("resumed") is True for m in marks), summarize(erins.events)

    # The wire: `?after=<last seq>` through the balancer gives `resumed`, then exactly the rest.
    first = await franks.connect(after=seen)
    assert first["type"] == "resumed" and first["seq"] == seen, first
    assert first.get("participant") == frank.joined.participant
    frames = await franks.until(
        lambda f: f.get("type") == "item.shared" and f["item"]["id"] == meanwhile[-1],
        "the last item shared while frank was away")
    replayed = [f for f in frames if f.get("type") == "item.shared"]
    assert [f["item"]["id"] for f in replayed] == meanwhile, summarize(frames)
    seqs = [f["seq"] for f in frames if "seq" in f]
    assert seqs == sorted(set(seqs)) and seqs[0] > seen, summarize(frames)

    # Live again, through the balancer, for both.
    after = await upload(wcs_of(alice), a_file(tmp_path, "after.bin"))
    await erins.wait(lambda c: received_once(c, after), "the item shared after the resume")
    await franks.until(lambda f: f.get("type") == "item.shared" and f["item"]["id"] == after,
                       "the item shared after the resume")
    assert Counter(erins.shared())[after] == 1

    # (e) n1's focus heartbeats no more: n2 revokes its participants once the lease is stale.
    await graces.wait(lambda c: c.ended, "grace's channel closed by the lease", timeout=30)
    assert graces.channel.end_reason == "revoked", summarize(graces.events)
    for client in (grace, heidi):
        await wait_status(cl, n2.url, client, 401, "a dead focus's participant")
        assert await items_status(cl, cl.url, client) == 401
    for client in (alice, erin, frank):  # their dialogs live on n2's focus: untouched
        assert await items_status(cl, cl.url, client) == 200
    assert not erins.ended

    # New joins go to the survivor: the balancer took n1's SIP port out.
    bob = await join(cl, "bob", uri, cl.sip_port, opened)
    assert bob.joined is not None
    await admitted_by(n2, bob.joined.participant)
    assert await items_status(cl, cl.url, bob) == 200
