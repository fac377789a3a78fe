"""Web origins (RFC 6454) as the deployment compares them: the WCS's checks of the
`webconf_auth` cookie's requests (docs/protocol.md §3) and the focus's check of a SIP
WebSocket's `Origin` (docs/protocol.md §10) use the same list."""

from __future__ import annotations

from urllib.parse import urlsplit

from webconf.deploy.config import Config

_DEFAULT_PORTS = {"https": 443, "http": 80}

Origin = tuple[str, str, int]
"""(scheme, host, port), lower-case, the port explicit: how origins are compared."""


def parse_origin(text: str) -> Origin | None:
    """An origin (`scheme://host[:port]`, what `Origin` carries) as a tuple; None if it is
    not one (`null`, a path, junk)."""
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host or parts.username or parts.password:
        return None
    return scheme, host, port if port is not None else _DEFAULT_PORTS[scheme]


def allowed_origins(cfg: Config) -> set[Origin]:
    """Our own web origins: the public URL's, plus any `wcs.allowed_origins` lists."""
    origins = {parse_origin(text) for text in (cfg.public_url, *cfg.wcs.allowed_origins)}
    return {origin for origin in origins if origin is not None}


def origin_text(origin: Origin) -> str:
    """`scheme://host[:port]` (the port only when not the scheme's default)."""
    scheme, host, port = origin
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" + ("" if _DEFAULT_PORTS.get(scheme) == port else f":{port}")


__all__ = ["Origin", "allowed_origins", "origin_text", "parse_origin"]
