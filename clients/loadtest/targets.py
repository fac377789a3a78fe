"""The three targets of a load test: a fresh deployment we start and remove, an existing
deployment whose servers already run, or a remote focus whose users exist."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from webconf.deploy.config import ConfigError, load_config
from webconf.deploy.init import DeployError
from webconf.deploy.local import (
    LocalDeployment,
    ServeNotReady,
    UserCommandError,
    aadd_users,
    aremove_users,
)

from ..meeting import FocusAddress
from .errors import LoadtestError
from .plan import DEFAULT_TENANT, Plan, Target
from .procs import find_server_pids

READY_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


@contextlib.asynccontextmanager
async def own_deployment(plan: Plan, tenant: str, say: Callable[[str], None]
                         ) -> AsyncIterator[Target]:
    """A fresh deployment in a temp dir with M organizers and N users; always cleaned up."""
    password = secrets.token_urlsafe(16)
    organizers = [f"org{m}@{tenant}" for m in range(plan.conferences)]
    participants = [f"user{i}@{tenant}" for i in range(plan.participants)]
    env = {"WEBCONF_FOCUS_MAX_CONNECTIONS_PER_SOURCE": "1000000",
           "WEBCONF_FOCUS_MAX_CONNECTIONS": str(max(20_000, 4 * plan.participants)),
           "WEBCONF_WCS_MAX_CONNECTIONS": str(max(10_000, 4 * plan.participants)),
           "WEBCONF_WCS_MAX_UPLOAD_BYTES": str(max(2 * 1024**3, plan.item_size + 1)),
           "WEBCONF_WCS_SHUTDOWN_GRACE_SECONDS": "3"}
    local = LocalDeployment(
        tenants=[tenant], users=[(address, password) for address in organizers + participants],
        env=env, prefix="webconf-loadtest-", serve_log=True, ready_timeout=READY_TIMEOUT,
        stop_timeout=STOP_TIMEOUT)
    try:
        say(f"adding {len(organizers) + len(participants)} users to {tenant}")
        try:
            cfg = await local.aprepare()
        except DeployError as exc:
            raise LoadtestError(f"cannot create the deployment: {exc}") from None
        except UserCommandError as exc:
            raise LoadtestError(f"cannot add the users: {exc.stderr.strip()}") from None
        say(f"starting webconf serve {cfg.base_dir}")
        try:
            await local.arun()
        except ServeNotReady as exc:
            raise LoadtestError(str(exc)) from None
        base = cfg.base_dir
        yield Target(description=f"fresh deployment ({cfg.public_host})",
                     focus=FocusAddress(cfg.public_host, cfg.focus.sip_port),
                     ca=cfg.certs_dir / "ca.pem", password=password, organizers=organizers,
                     participants=participants,
                     conference_ids=[f"LOAD{m}" for m in range(plan.conferences)],
                     pids=lambda: find_server_pids(base))
    finally:
        await asyncio.shield(local.astop())


@contextlib.asynccontextmanager
async def existing_deployment(plan: Plan, base_dir: Path, tenant: str | None,
                              say: Callable[[str], None], *, focus: FocusAddress | None = None
                              ) -> AsyncIterator[Target]:
    """A deployment whose servers run already: add this run's users, remove them after.
    `focus`: where the joins go instead of DIR's own focus, e.g. the load balancer in front
    of the nodes that share DIR's database (the users added here are theirs too)."""
    import tomllib

    base = base_dir.expanduser().resolve()
    try:
        data = tomllib.loads((base / "webconf.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise LoadtestError(f"cannot read {base / 'webconf.toml'}: {exc}") from None
    server, focus_cfg = data.get("server", {}), data.get("focus", {})
    host = str(server.get("public_host") or server.get("host") or "127.0.0.1")
    if host in ("0.0.0.0", "::"):  # noqa: S104 - a wildcard bind is reached on loopback
        host = "127.0.0.1"
    tenant = tenant or (data.get("tenants", {}).get("domains") or [DEFAULT_TENANT])[0]
    pids = find_server_pids(base)
    if not pids["wcs"] and not pids["focus"]:
        say(f"warning: no running server processes found for {base} (no RSS will be "
            f"reported); start them with `webconf serve {base}`")
    try:
        load_config(base)
    except ConfigError as exc:
        raise LoadtestError(str(exc)) from None
    run = secrets.token_hex(3)
    password = secrets.token_urlsafe(16)
    organizers = [f"loadtest-org{m}@{tenant}" for m in range(plan.conferences)]
    participants = [f"loadtest-user{i}@{tenant}" for i in range(plan.participants)]
    addresses = organizers + participants
    say(f"adding {len(addresses)} load-test users to {tenant} in {base}")
    try:
        await aadd_users(base, [(address, password) for address in addresses])
    except UserCommandError as exc:
        raise LoadtestError(f"cannot add the users: {exc.stderr.strip()}") from None
    try:
        own = FocusAddress(host, int(focus_cfg.get("sip_port", 5061)))
        yield Target(description=f"deployment {base}" + (f" through {focus.host}:{focus.port}"
                                                         if focus is not None else ""),
                     focus=focus or own,
                     ca=base / "certs" / "ca.pem", password=password, organizers=organizers,
                     participants=participants,
                     conference_ids=[f"LOAD{m}-{run}" for m in range(plan.conferences)],
                     pids=lambda: find_server_pids(base))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(aremove_users(base, addresses))


@contextlib.asynccontextmanager
async def remote_target(plan: Plan, focus: str, ca: Path, password: str, pattern: str,
                        organizer_pattern: str | None) -> AsyncIterator[Target]:
    """A remote focus with existing users: organizers from `organizer_pattern` (default: the
    first M addresses of `pattern`), participants from `pattern` after them."""
    def expand(pat: str, i: int) -> str:
        try:
            address = pat.format(i=i)
        except (KeyError, IndexError, ValueError) as exc:
            raise LoadtestError(f"bad user pattern {pat!r}: {exc}") from None
        if "@" not in address:
            raise LoadtestError(f"user pattern {pat!r} gives {address!r}, not user@domain")
        return address

    if "{i}" not in pattern:
        raise LoadtestError("--user-pattern needs an {i}, e.g. 'user{i}@contoso.example'")
    if organizer_pattern is not None:
        organizers = [expand(organizer_pattern, m) for m in range(plan.conferences)]
        participants = [expand(pattern, i) for i in range(plan.participants)]
    else:
        organizers = [expand(pattern, m) for m in range(plan.conferences)]
        participants = [expand(pattern, plan.conferences + i)
                        for i in range(plan.participants)]
    run = secrets.token_hex(3)
    yield Target(description=f"focus {focus}", focus=FocusAddress.parse(focus), ca=ca,
                 password=password, organizers=organizers, participants=participants,
                 conference_ids=[f"LOAD{m}-{run}" for m in range(plan.conferences)])
