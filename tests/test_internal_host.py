"""`wcs.internal_host`: a node binds its own address while its focus calls its own WCS on
loopback (docs/deployment.md, "Many nodes").

On a real machine a node binds its own IP (`server.host`), which the deployment's
certificates do not name: they name the service (`init --host`), `localhost`, 127.0.0.1
and ::1. Without `wcs.internal_host` the focus dials the internal API at `server.host`
and its TLS host-name check refuses the WCS's certificate, so no one can join. Here the
node's own IP is 127.0.0.2 (Linux routes all of 127.0.0.0/8 to loopback), which the
certificates of a default `init` do not name, as on a real node.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import aiohttp
import pytest
from cryptography import x509

from clients.meeting import FocusAddress, MeetingClient
from focus.wcs_client import WcsClient, WcsUnavailable
from webconf.deploy import tls
from webconf.deploy.config import Config, load_config
from webconf.deploy.local import ServeProcess

from .conftest import running_wcs
from .test_focus_e2e import CONF, USERS, add_users

NODE_IP = "127.0.0.2"
"""The node's own address: on loopback, and not named by the certificates."""
ALICE = "alice@contoso.example"
CONTOSO = "contoso.example"


def _loopback_alias_works() -> bool:
    with socket.socket() as s:
        try:
            s.bind((NODE_IP, 0))
        except OSError:
            return False
    return True


pytestmark = [
    pytest.mark.sqlite_only,  # listeners and TLS names, not the store
    pytest.mark.skipif(not _loopback_alias_works(),
                       reason=f"cannot bind {NODE_IP} (Linux routes 127.0.0.0/8 to loopback)"),
]


def cert_addresses(cfg: Config, name: str) -> set[str]:
    cert = x509.load_pem_x509_certificate((cfg.certs_dir / f"{name}.pem").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_internal_url_follows_internal_host(deployment: Config) -> None:
    cfg = load_config(deployment.base_dir, env={})
    assert cfg.wcs.internal_host == ""
    assert cfg.internal_host == cfg.server.host == "127.0.0.1"
    port = cfg.wcs.internal_port
    assert cfg.internal_url == f"https://127.0.0.1:{port}"
    cfg = load_config(deployment.base_dir, env={"WEBCONF_SERVER_HOST": NODE_IP})
    assert cfg.internal_url == f"https://{NODE_IP}:{port}"  # without it: the node's address
    cfg = load_config(deployment.base_dir, env={"WEBCONF_SERVER_HOST": NODE_IP,
                                                "WEBCONF_WCS_INTERNAL_HOST": "127.0.0.1"})
    assert cfg.internal_host == "127.0.0.1" and cfg.server.host == NODE_IP
    assert cfg.internal_url == f"https://127.0.0.1:{port}"
    assert cfg.public_url == f"https://{NODE_IP}:{cfg.wcs.https_port}"  # unchanged
    for written in ("::1", "[::1]"):
        cfg.wcs.internal_host = written
        assert cfg.internal_host == "::1"
        assert cfg.internal_url == f"https://[::1]:{port}"


def test_the_certificates_name_loopback_but_not_the_nodes_own_address(
        deployment: Config) -> None:
    """The premise of the setting: 127.0.0.1 is in every server certificate `init` makes,
    the node's own IP is not."""
    for name in ("wcs", "focus"):
        names = cert_addresses(deployment, name)
        assert "127.0.0.1" in names and "::1" in names
        assert NODE_IP not in names
    assert ipaddress.ip_address(NODE_IP).is_loopback


async def test_without_internal_host_the_focus_fails_the_host_name_check(
        deployment: Config) -> None:
    cfg = deployment
    cfg.server.host = NODE_IP
    async with running_wcs(cfg) as wcs:
        assert wcs.server is not None
        assert [a[0] for r in wcs.server.runners for a in r.addresses] == [NODE_IP, NODE_IP]
        async with WcsClient(cfg) as focus:
            with pytest.raises(WcsUnavailable) as refused:
                await focus.admit("IH01", tenant=CONTOSO, organizer=ALICE, user=ALICE)
    reason = str(refused.value)
    assert "CERTIFICATE_VERIFY_FAILED" in reason and NODE_IP in reason, reason


async def test_with_internal_host_the_focus_admits_on_loopback(deployment: Config) -> None:
    cfg = deployment
    cfg.server.host = NODE_IP
    cfg.wcs.internal_host = "127.0.0.1"
    async with running_wcs(cfg) as wcs:
        assert wcs.server is not None
        public, internal = ([a[0] for a in r.addresses] for r in wcs.server.runners)
        assert public == [NODE_IP] and internal == ["127.0.0.1"]
        assert cfg.internal_url == f"https://127.0.0.1:{wcs.server.internal_port}"
        async with WcsClient(cfg) as focus:
            await focus.heartbeat()  # the lease, too, is renewed there
            admission = await focus.admit("IH02", tenant=CONTOSO, organizer=ALICE, user=ALICE)
            assert admission.role == "organizer"
            assert admission.webconf_url == f"https://{NODE_IP}:{wcs.server.https_port}"
            assert await focus.revoke(admission.conference, admission.participant)
        # Nothing of the internal API answers on the node's own address.
        with pytest.raises(OSError):
            await asyncio.open_connection(NODE_IP, wcs.server.internal_port)


async def test_a_node_on_its_own_address_serves_joins(deployment: Config) -> None:
    """`webconf serve` of a node bound to NODE_IP with `WEBCONF_WCS_INTERNAL_HOST=127.0.0.1`
    (the documented per-node settings): a SIP join is admitted through the internal
    listener on loopback, the cookie works at the node's public listener, and the BYE's
    revocation reaches the WCS the same way."""
    cfg = deployment
    await add_users(cfg)
    serve = ServeProcess(cfg.base_dir, {"WEBCONF_SERVER_HOST": NODE_IP,
                                        "WEBCONF_WCS_INTERNAL_HOST": "127.0.0.1"})
    alice = MeetingClient(CONF, ALICE, USERS[ALICE],
                          focus=FocusAddress(NODE_IP, cfg.focus.sip_port),
                          ca_pem=cfg.certs_dir / "ca.pem")
    # The public listener is on the node's address; the certificate names the tenant.
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls.client_context(cfg)))
    try:
        await serve.astart()
        joined = await alice.join()
        assert joined.role == "organizer"
        assert any(line.startswith(f"wcs ready https=https://{NODE_IP}:") and
                   f" internal=https://127.0.0.1:{cfg.wcs.internal_port}" in line
                   for line in serve.lines), serve.lines
        items = f"{joined.webconf_url}/v1/conferences/{joined.conference}/items"
        assert items.startswith(f"https://{NODE_IP}:{cfg.wcs.https_port}/")
        headers = {"Authorization": f"Bearer {joined.cookie}"}
        async with http.get(items, headers=headers, server_hostname=CONTOSO) as resp:
            assert resp.status == 200, await resp.text()
        assert await alice.leave() == 200
        async with asyncio.timeout(10):  # the focus revokes right after answering the BYE
            while True:
                async with http.get(items, headers=headers, server_hostname=CONTOSO) as resp:
                    if resp.status == 401:
                        break
                await asyncio.sleep(0.05)
    finally:
        await http.close()
        await alice.close()
        await serve.astop()
