"""`webconf init DIR`: lay out a self-contained deployment.

Order matters: certificates, keys and directories first, `webconf.toml` last, so an init
that fails half-way leaves no config behind and can simply be run again. Re-running with
`force` replaces the config and the certificates but keeps existing keys, because
replacing the root key would make every stored item undecryptable. The CA's private key goes
to `DIR/ca-private/`, not `DIR/certs/`: `serve` never reads it, so a serving node can run
without it.

The database is migrated to head last of all (webconf/deploy/migrate.py: every schema the
installed wings register), after the config is written so it sees the store URL `serve`
will use (a `WEBCONF_STORE_URL` override included); if that fails, the config written is
taken back.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from webconf.deploy import keys, migrate, pki
from webconf.deploy.config import CONFIG_NAME, Config, ConfigError, load_config

DEFAULT_TENANT = "contoso.example"
ASYNC_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")
"""The SQLAlchemy async drivers a store URL may name."""


class DeployError(Exception):
    """The deployment cannot be created as asked."""


def _normalize_host(host: str) -> str:
    text = host.strip().strip("[]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    try:
        return pki.normalize_dns_name(text)
    except ValueError:
        raise DeployError(f"--host {host!r} is neither an IP address nor a DNS name") from None


def _normalize_tenants(tenants: list[str] | None) -> list[str]:
    out: list[str] = []
    for tenant in tenants or [DEFAULT_TENANT]:
        try:
            domain = pki.normalize_dns_name(tenant)
        except ValueError:
            raise DeployError(f"tenant {tenant!r} is not a valid domain name") from None
        if domain not in out:
            out.append(domain)
    return out


def _check_ports(ports: dict[str, int]) -> None:
    for flag, port in ports.items():
        if not 1 <= port <= 65535:
            raise DeployError(f"{flag} {port} is not a TCP port (1-65535)")
    if len(set(ports.values())) != len(ports):
        raise DeployError(f"ports must differ: {ports}")


def _check_database(url: str) -> str:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DeployError(f"--database {url!r} is not a SQLAlchemy URL") from None
    if parsed.drivername not in ASYNC_DRIVERS:
        raise DeployError(f"--database must use one of {', '.join(ASYNC_DRIVERS)} "
                          f"(got {parsed.drivername})")
    return url


def migrate_database(cfg: Config) -> None:
    """Bring the deployment's database to head (`webconf db upgrade`); `DeployError`."""
    schemas = migrate.installed_schemas()
    try:
        migrate.upgrade_sync(cfg.store_url, schemas)
    except migrate.SchemaError as exc:
        raise DeployError(str(exc)) from None
    except (SQLAlchemyError, OSError) as exc:
        shown = make_url(cfg.store_url).render_as_string(hide_password=True)
        raise DeployError(f"cannot migrate the database {shown} "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def init_deployment(
    base_dir: Path,
    *,
    host: str = "127.0.0.1",
    sip_port: int = 5061,
    https_port: int = 8443,
    internal_port: int = 8444,
    tenants: list[str] | None = None,
    force: bool = False,
    database: str | None = None,
    share: str | None = None,
    wss_port: int = 0,
) -> Config:
    """Write a new deployment into `base_dir`, migrate its database and return its config
    as `serve` will load it. `database`: the store's SQLAlchemy async URL (default the
    embedded SQLite file in `var/`); `share`: the file share's directory (default
    `var/share`; relative to `base_dir`), a mount every node shares when scaled out;
    `wss_port`: the focus's SIP-over-WebSocket port (0, the default here, is off, so that
    deployments made on free ports bind no fixed one; `webconf init` passes 5062)."""
    base = Path(base_dir).expanduser().resolve()
    if (base / CONFIG_NAME).exists() and not force:
        raise DeployError(
            f"{base / CONFIG_NAME} already exists; use --force to re-initialise "
            "(existing keys are kept, certificates are replaced)"
        )
    cfg = Config(base_dir=base)
    cfg.server.host = _normalize_host(host)
    cfg.focus.sip_port = sip_port
    cfg.focus.wss_port = wss_port
    cfg.wcs.https_port = https_port
    cfg.wcs.internal_port = internal_port
    cfg.tenants.domains = _normalize_tenants(tenants)
    if database is not None:
        cfg.store.url = _check_database(database)
    if share is not None:
        cfg.share.path = str(Path(share).expanduser())
    ports = {"--sip-port": sip_port, "--https-port": https_port,
             "--internal-port": internal_port}
    if wss_port:
        ports["--wss-port"] = wss_port
    _check_ports(ports)

    base.mkdir(parents=True, exist_ok=True)
    pki.write_deployment_pki(cfg.certs_dir, host=cfg.server.host,
                             tenant_domains=cfg.tenants.domains,
                             ca_private_dir=cfg.ca_private_dir)
    keys.create_keys(cfg)
    _private_dir(cfg.var_dir)
    _private_dir(cfg.share_dir)
    _private_dir(cfg.log_dir)
    config_path = base / CONFIG_NAME
    previous = config_path.read_text() if config_path.exists() else None
    cfg.write()
    try:
        loaded = load_config(base)
        migrate_database(loaded)
    except (ConfigError, DeployError) as exc:  # e.g. a malformed WEBCONF_* override
        if previous is None:
            config_path.unlink()
        else:
            config_path.write_text(previous)
        raise DeployError(str(exc)) from None
    return loaded


def add_init_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `webconf init` (dests: dir, host, sip_port, https_port, internal_port,
    tenants, database, share, force)."""
    parser.add_argument("dir", type=Path, help="deployment directory to create")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on and name in the certificates "
                             "(default 127.0.0.1)")
    parser.add_argument("--sip-port", type=int, default=5061, help="SIP/TLS port (5061)")
    parser.add_argument("--wss-port", type=int, default=5062,
                        help="SIP-over-WebSocket (TLS) port for browsers (5062; 0: off)")
    parser.add_argument("--https-port", type=int, default=8443, help="HTTPS/WSS port (8443)")
    parser.add_argument("--internal-port", type=int, default=8444,
                        help="internal mTLS API port (8444)")
    parser.add_argument("--tenant", dest="tenants", action="append", metavar="DOMAIN",
                        help=f"tenant domain; repeat for more (default {DEFAULT_TENANT})")
    parser.add_argument("--database", metavar="URL",
                        help="the store's SQLAlchemy URL, e.g. postgresql+asyncpg://"
                             "user@db.example:5432/webconf (default: SQLite in DIR/var)")
    parser.add_argument("--share", metavar="PATH",
                        help="the file share's directory, a mount every node shares "
                             "(default DIR/var/share)")
    parser.add_argument("--force", action="store_true",
                        help="re-initialise an existing deployment (keeps its keys)")


def _summary(cfg: Config) -> str:
    """What was made and what to do next; paths and URLs only, never key material."""
    base = cfg.base_dir
    tenant = cfg.tenants.domains[0]
    host = cfg.public_host
    sip_host = f"[{host}]" if ":" in host else host
    lines = [
        f"webconf deployment initialised in {base}",
        f"  config        {base / CONFIG_NAME}",
        f"  CA cert       {cfg.certs_dir / 'ca.pem'}   (trust this one file)",
        f"  certificates  {cfg.certs_dir}",
        f"  CA key        {cfg.ca_private_dir / pki.CA_KEY_NAME}   (0600; only for issuing "
        "certificates: keep it off serving nodes)",
        f"  keys          {cfg.keys_dir}   (0600, never share or commit)",
        f"  data          {cfg.var_dir}   (file share {cfg.share_dir})",
        f"  database      {make_url(cfg.store_url).render_as_string(hide_password=True)}"
        "   (migrated to head)",
        f"  tenants       {', '.join(cfg.tenants.domains)}",
        f"  SIP focus     sips:{sip_host}:{cfg.focus.sip_port};transport=tls",
        *([f"  SIP browsers  wss://{sip_host}:{cfg.focus.wss_port}   (RFC 7118)"]
          if cfg.focus.wss_port else []),
        f"  WCS           {cfg.public_url}",
        f"  internal API  {cfg.internal_url}   (mTLS, focus only)",
        "",
        "Next steps:",
        f"  webconf user add {base} alice@{tenant}      # password read from stdin",
        f"  webconf serve {base}",
        f"  curl --cacert {cfg.certs_dir / 'ca.pem'} {cfg.public_url}/healthz",
    ]
    return "\n".join(lines)


def run_init(args: argparse.Namespace) -> int:
    """`webconf init`: exit status 0 on success, 1 with a message on stderr otherwise."""
    try:
        cfg = init_deployment(
            args.dir,
            host=args.host,
            sip_port=args.sip_port,
            https_port=args.https_port,
            internal_port=args.internal_port,
            tenants=args.tenants,
            force=args.force,
            database=args.database,
            share=args.share,
            wss_port=args.wss_port,
        )
    except (DeployError, keys.KeyFileError, ValueError) as exc:
        print(f"webconf init: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"webconf init: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 1
    print(_summary(cfg))
    return 0
