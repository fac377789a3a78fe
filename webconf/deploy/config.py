"""One deployment, one TOML file.

`DIR/webconf.toml` describes a deployment; every setting can also be overridden by an
environment variable `WEBCONF_<SECTION>_<KEY>` (for example `WEBCONF_WCS_HTTPS_PORT=9443`),
which is how tests and containers adjust a deployment without rewriting the file.
Relative paths in the file are relative to the deployment directory.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

CONFIG_NAME = "webconf.toml"
MAX_NODE_NAME = 100
"""Leaves room for `.<incarnation>` within a lease name's 128 characters."""
_NODE_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class ServerSection:
    host: str = "127.0.0.1"
    """Address the listeners bind to (loopback by default); the WCS's internal one binds
    `wcs.internal_host` instead when that is set."""
    public_host: str = ""
    """Host name clients use to reach us; defaults to `host`."""
    node: str = ""
    """This node's name among the nodes sharing one database (`webconf serve --node`,
    `WEBCONF_SERVER_NODE`); empty: the host name. Characters outside `[A-Za-z0-9._-]` become
    `-` (`Config.node_name`)."""


@dataclass
class WcsSection:
    https_port: int = 8443
    internal_port: int = 8444
    internal_host: str = ""
    """Address the internal (mTLS) listener binds and the focus dials (`internal_url`);
    empty: `server.host`. Lets a node bind its own address (`server.host`, which its
    certificates need not name) while its focus calls its own WCS on loopback (127.0.0.1,
    which every certificate `init` makes names)."""
    public_url: str = ""
    """URL handed to clients in the join result; defaults to https://public_host:https_port."""
    max_upload_bytes: int = 500 * 1024**2
    """Largest item (plaintext bytes); 413 `too_large` beyond. "500 MB" is 500 MiB, the
    unit of every byte setting here."""
    max_conference_bytes: int = 500 * 1024**2
    """Plaintext bytes of all of a conference's items together (500 MiB, the Skype for
    Business MaxContentStorageMb); an upload that would go past it gets 413
    `conference_quota` (docs/protocol.md §8.6)."""
    content_grace_seconds: float = 15 * 86400.0
    """How long a conference's content outlives its end (15 days): the organizer's INVITE
    reopens it with its items within it; after it a periodic task shreds them."""
    idle_end_seconds: float = 8 * 3600.0
    """A conference that nobody joined for this long, and where no cookie is live, ends."""
    lifecycle_sweep_seconds: float = 60.0
    """How often a WCS ends idle conferences and shreds content past its grace; 0: never."""
    max_item_name_bytes: int = 1024
    cookie_ttl_seconds: int = 12 * 3600
    cookie_leeway_seconds: int = 30
    """Clock skew the cookie verifier allows on `nbf`/`iat`; `exp` is exact (HTTP and the
    channel both refuse a cookie from `exp` on)."""
    revocation_purge_seconds: float = 300.0
    """How often the WCS drops revocation rows of cookies already refused by their expiry
    (kept 2 x the leeway past `exp`); 0 turns the purge off."""
    allowed_origins: list[str] = field(default_factory=list)
    """Web origins (`https://host[:port]`) besides `public_url`'s whose pages may use the
    `webconf_auth` cookie for the channel and state-changing requests."""
    web_dir: str = ""
    """The built web client the WCS serves at `/` (docs/protocol.md §10.2); empty: `web/dist`
    of the source tree (`make web`)."""
    max_channels_per_participant: int = 4
    max_channel_message_bytes: int = 4096
    channel_queue_length: int = 256
    download_chunk_bytes: int = 1024 * 1024
    max_connections: int = 10_000
    """Open TLS connections per listener; beyond it a new one is closed at once."""
    tls_handshake_timeout_seconds: float = 10.0
    header_timeout_seconds: float = 10.0
    """From the handshake (or a request's first byte) to the end of the request's head."""
    keepalive_timeout_seconds: float = 75.0
    """An idle connection between requests is closed after this (never a data channel)."""
    upload_deadline_seconds: float = 3600.0
    """An upload's whole body must arrive within this, whatever its rate (408 if not)."""
    upload_min_bytes_per_second: int = 4096
    """After the grace below, an upload must average at least this rate (408 if not)."""
    upload_rate_grace_seconds: float = 10.0
    shutdown_grace_seconds: float = 10.0
    share_sweep_seconds: float = 3600.0
    """How often a running WCS removes share files no row references (a crash's
    leftovers), each only once older than any upload in progress may be
    (`conferencing.share.sweep_age`); 0 = only at startup."""
    reuse_port: bool = False
    """Bind both listeners with SO_REUSEPORT, so that several WCS processes share their
    ports; `webconf serve --workers N` sets it for its workers (WEBCONF_WCS_REUSE_PORT)."""
    event_poll_seconds: float = 1.0
    """How often a WCS compares each conference it has channels for with the event log:
    the safety net behind NOTIFY (a lost wake is caught up within this)."""
    event_retention_seconds: float = 3600.0
    """Log rows older than this are trimmed; a channel resuming from before gets a
    full welcome instead of a replay."""
    event_listener_keepalive_seconds: float = 5.0
    """How often the NOTIFY connection is checked (PostgreSQL), and so how soon a silently
    dropped one is replaced."""
    convert_decks: bool = True
    """Convert shared `.pptx`/`.odp` decks to PDF with LibreOffice (`soffice`), shared as
    derived items (docs/protocol.md §9.4)."""
    convert_soffice: str = "soffice"
    """The LibreOffice command (a name on PATH or a path)."""
    convert_timeout_seconds: float = 60.0
    """A conversion running longer is killed and reported as failed."""
    convert_memory_bytes: int = 1536 * 1024**2
    """The converter's address-space cap (RLIMIT_AS); LibreOffice 7.4 needs about 500 MiB
    for a small deck."""
    convert_queue_length: int = 8
    """Decks waiting for a converter; one more is refused (`item.conversion` failed)."""
    convert_concurrency: int = 1
    """Conversions at once in this process."""
    convert_allow_network: bool = False
    """Convert even where no network namespace can be made (`unshare -n`, or `-rn` as a
    user): LibreOffice then runs with the host's network. Off: conversion is unavailable
    there, and said so in the log."""


@dataclass
class FocusSection:
    sip_port: int = 5061
    tcp_port: int = 0
    """Plain-TCP SIP listener for deployments behind a TLS-terminating SBC; 0 = off."""
    tcp_host: str = "127.0.0.1"
    wss_port: int = 5062
    """SIP over WebSocket (RFC 7118, subprotocol `sip`) over TLS for browsers, on
    `server.host` with the focus's certificate (docs/protocol.md §10); 0 = off."""
    wss_allowed_origins: list[str] = field(default_factory=list)
    """Web origins besides the WCS's own (`wcs.public_url`'s and `wcs.allowed_origins`)
    whose pages may open a SIP WebSocket; any other `Origin` is refused with 403."""
    max_ws_handshakes: int = 1000
    """WebSocket connections between TCP accept and a complete upgrade request (the slow
    ones wait `header_timeout_seconds` at most); more are closed at once."""
    digest_algorithms: list[str] = field(default_factory=lambda: ["SHA-256", "MD5"])
    md5_only_user_agents: list[str] = field(
        default_factory=lambda: ["baresip", "JsSIP", "SIP.js", "webconf-web"])
    """baresip 1.0 gives up on SHA-256 challenges; browser SIP stacks do MD5 only and read
    the first `WWW-Authenticate` (docs/protocol.md §10.1)."""
    nonce_lifetime_seconds: int = 300
    leave_grace_seconds: float = 30.0
    header_timeout_seconds: float = 10.0
    idle_timeout_seconds: float = 900.0
    max_connections: int = 20_000
    max_connections_per_source: int = 2_000
    max_message_bytes: int = 65536
    auth_failures_per_user: int = 5
    """Digest failures per user per minute before a 30 s lockout (429 + Retry-After)."""
    auth_failures_per_source: int = 50
    """The same for a source address, higher: one NAT may hide many users."""
    wcs_timeout_seconds: float = 5.0
    node_timeout_seconds: float = 15.0
    """A focus whose lease was not renewed for this long is dead: a WCS node revokes the
    participants it admitted (DESIGN §8, focus leases)."""
    heartbeat_seconds: float = 3.0
    """How often a focus renews its lease; must be below `node_timeout_seconds`."""


@dataclass
class StoreSection:
    url: str = "sqlite+aiosqlite:///var/webconf.db"
    """SQLAlchemy async URL; a relative sqlite path is relative to the deployment dir."""


@dataclass
class ShareSection:
    path: str = "var/share"


@dataclass
class KeysSection:
    dir: str = "keys"
    root_key_version: int = 1
    cookie_signing_kid: str = "k1"
    tenant_key_cache_seconds: float = 300.0
    """How long a WCS keeps a tenant key it unwrapped: a key revoked at its source (a
    customer key disabled in the HSM) stops working on every node within this time."""
    hsm_modules: list[str] = field(default_factory=list)
    """The PKCS#11 libraries (absolute paths) a tenant's Customer Key may name; a node loads
    no other, so a row in the database alone cannot make it run a library. The same list,
    and the libraries at those paths, on every node (docs/protocol.md §8.4)."""
    hsm_timeout_seconds: float = 10.0
    """How long a call into an HSM may take; past it, the HSM counts as unreachable."""


@dataclass
class TenantsSection:
    domains: list[str] = field(default_factory=lambda: ["contoso.example"])


@dataclass
class Config:
    """A whole deployment's settings, with paths resolved against `base_dir`."""

    base_dir: Path
    server: ServerSection = field(default_factory=ServerSection)
    wcs: WcsSection = field(default_factory=WcsSection)
    focus: FocusSection = field(default_factory=FocusSection)
    store: StoreSection = field(default_factory=StoreSection)
    share: ShareSection = field(default_factory=ShareSection)
    keys: KeysSection = field(default_factory=KeysSection)
    tenants: TenantsSection = field(default_factory=TenantsSection)

    # -- derived locations -------------------------------------------------
    @property
    def certs_dir(self) -> Path:
        return self.base_dir / "certs"

    @property
    def ca_private_dir(self) -> Path:
        """Where `init` keeps the CA's private key: apart from `certs/`, which serving
        nodes read, because no serving node needs it (only issuing certificates does)."""
        return self.base_dir / "ca-private"

    @property
    def keys_dir(self) -> Path:
        return self._resolve(self.keys.dir)

    @property
    def var_dir(self) -> Path:
        return self.base_dir / "var"

    @property
    def share_dir(self) -> Path:
        return self._resolve(self.share.path)

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def node_name(self) -> str:
        """`server.node` (else the host name) reduced to `[A-Za-z0-9._-]`, at most
        `MAX_NODE_NAME` characters, so that `<node>.<incarnation>` is a valid lease name."""
        raw = self.server.node or socket.gethostname()
        name = _NODE_UNSAFE.sub("-", raw)[:MAX_NODE_NAME].strip(".")
        return name or "node"

    @property
    def public_host(self) -> str:
        return self.server.public_host or self.server.host

    @property
    def public_url(self) -> str:
        if self.wcs.public_url:
            return self.wcs.public_url.rstrip("/")
        host = self.public_host
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.wcs.https_port}"

    @property
    def internal_host(self) -> str:
        """Where the WCS's internal API listens and the focus calls it (an IPv6 address
        may be written in brackets, as in a URL)."""
        return self.wcs.internal_host.strip().strip("[]") or self.server.host

    @property
    def internal_url(self) -> str:
        host = self.internal_host
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.wcs.internal_port}"

    @property
    def store_url(self) -> str:
        """The store URL with a relative SQLite path made absolute."""
        url = self.store.url
        prefix = "sqlite+aiosqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            return prefix + str(self._resolve(url[len(prefix):]))
        return url

    def _resolve(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else self.base_dir / p

    # -- (de)serialisation --------------------------------------------------
    def to_toml(self) -> str:
        doc: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "base_dir":
                continue
            section = getattr(self, f.name)
            doc[f.name] = {sf.name: getattr(section, sf.name) for sf in fields(section)}
        return tomli_w.dumps(doc)

    def write(self) -> Path:
        path = self.base_dir / CONFIG_NAME
        path.write_text(self.to_toml())
        return path


_SECTIONS = {
    "server": ServerSection,
    "wcs": WcsSection,
    "focus": FocusSection,
    "store": StoreSection,
    "share": ShareSection,
    "keys": KeysSection,
    "tenants": TenantsSection,
}


class ConfigError(Exception):
    """The deployment's configuration is missing or invalid."""


def _coerce(value: Any, like: Any, name: str) -> Any:
    if isinstance(like, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"1", "true", "yes", "on", "0", "false",
                                                         "no", "off"}:
            return value.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{name}: expected a boolean, got {value!r}")
    if isinstance(like, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected an integer, got {value!r}") from None
    if isinstance(like, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if isinstance(like, list):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            return [str(v) for v in value]
        raise ConfigError(f"{name}: expected a list, got {value!r}")
    return str(value)


def load_config(base_dir: str | os.PathLike[str], *, env: dict[str, str] | None = None) -> Config:
    """Read `DIR/webconf.toml` and apply `WEBCONF_<SECTION>_<KEY>` overrides."""
    base = Path(base_dir).resolve()
    path = base / CONFIG_NAME
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no {CONFIG_NAME} in {base} (run `webconf init {base}` first)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    env = dict(os.environ) if env is None else env
    cfg = Config(base_dir=base)
    for section_name, cls in _SECTIONS.items():
        section = cls()
        values = raw.get(section_name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"[{section_name}] must be a table")
        known = {f.name for f in fields(section)}
        for key in values:
            if key not in known:
                raise ConfigError(f"unknown setting {section_name}.{key}")
        for f in fields(section):
            name = f"{section_name}.{f.name}"
            default = getattr(section, f.name)
            if f.name in values:
                setattr(section, f.name, _coerce(values[f.name], default, name))
            env_key = f"WEBCONF_{section_name}_{f.name}".upper()
            if env_key in env:
                setattr(section, f.name, _coerce(env[env_key], default, env_key))
        setattr(cfg, section_name, section)
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    """Settings that are each well-typed but wrong together."""
    f = cfg.focus
    if not 0 < f.heartbeat_seconds < f.node_timeout_seconds:
        raise ConfigError(
            f"focus.heartbeat_seconds ({f.heartbeat_seconds:g}) must be above 0 and below "
            f"focus.node_timeout_seconds ({f.node_timeout_seconds:g})")
    w = cfg.wcs
    if w.convert_timeout_seconds <= 0 or w.convert_concurrency < 1 or (
            w.convert_queue_length < 0) or w.convert_memory_bytes <= 0:
        raise ConfigError("wcs.convert_timeout_seconds and wcs.convert_memory_bytes must be "
                          "above 0, wcs.convert_concurrency at least 1 and "
                          "wcs.convert_queue_length 0 or above")
    if cfg.wcs.share_sweep_seconds < 0:
        raise ConfigError(f"wcs.share_sweep_seconds ({cfg.wcs.share_sweep_seconds:g}) must "
                          "be 0 (off) or above")
