"""Digest authentication, server side (RFC 3261 §22, RFC 8760 algorithms, qop=auth only).

Operations: `build_challenges` for a 401, `verify` for the Authorization that follows.

Plan: nonces are stateless so any focus node that shares the secret can verify them, and
each is bound to the connection ("scope": 16 random bytes the focus gives the connection)
it was issued on:
    nonce = base64url(timestamp (6 bytes, big-endian seconds) || random (6)
                      || HMAC-SHA256(secret, 0 || timestamp || random || realm)[:10]
                      || HMAC-SHA256(secret, 1 || timestamp || random || realm || scope)[:10])
The first MAC says the nonce is ours, the second that it belongs to this connection: a
captured Authorization replayed on another connection is genuine but "foreign", which a
right response turns into a `stale=true` challenge (the agent retries with a fresh nonce
without asking its user; a replayer cannot). An expired nonce with an otherwise correct
response yields "stale" likewise. Replay within one connection is caught by
`NonceCountTracker`, which remembers the highest nc per nonce for that connection. The
digest-uri must name the Request-URI (RFC 7616 §3.4.6): the same string, or the same SIP
URI component by component, so a response made for one conference cannot join another.
`FailureThrottle` slows password guessing per user and per source address. Every
secret-dependent comparison uses `hmac.compare_digest`.

Clock: nothing here reads a clock. Every call that needs the time takes `now` (aioquic's
discipline), so the focus core stays pure and tests step time by hand. Nonces carry wall
time (`time.time()`: nodes that share the secret must agree on it); the throttle works with
any clock its caller uses consistently (the focus core passes the same wall time).

Weaknesses: the nc tracker is bounded (a nonce evicted from it could be replayed on its own
connection, which only that connection's peer can write to); the 80-bit MACs keep the nonce
at 43 characters and are checked online only. TLS is what keeps credentials from being
observed in the first place. Per-user lockout lets anyone lock a user out for `lockout`
seconds by failing on purpose; that is the price of stopping distributed guessing against
one account.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import struct
from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from .syntax import SipParseError, SipURI, parse_auth_params, parse_uri, quote

# RFC 8760 name -> hashlib name. MD5 stays for agents that know nothing else (RFC 3261).
_HASHES = {"MD5": "md5", "SHA-256": "sha256"}
_HASH_FUNCS: dict[str, Callable[[bytes], Any]] = {
    "MD5": hashlib.md5, "SHA-256": hashlib.sha256}  # MD5: protocol-mandated (RFC 3261)
"""The constructors themselves: `hashlib.new(name)` looks the name up on every call."""
ALGORITHMS = tuple(_HASHES)
DEFAULT_ALGORITHMS = ("SHA-256", "MD5")
_STAMP_BYTES, _RANDOM_BYTES, _MAC_BYTES = 6, 6, 10
_PREFIX_BYTES = _STAMP_BYTES + _RANDOM_BYTES
_MAX_STAMP = 2 ** (8 * _STAMP_BYTES) - 1
_U16 = struct.Struct(">H")
_SHA256_BLOCK = 64
_LABELS = (b"\x00", b"\x01")
_NONCE_RE = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, unpadded
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")

NonceStatus: TypeAlias = Literal["ok", "stale", "foreign", "invalid"]
AuthReason: TypeAlias = Literal[
    "ok",
    "stale",
    "bad-nonce",
    "bad-response",
    "unknown-user",
    "bad-realm",
    "uri-mismatch",
    "other-connection",
    "replay",
    "malformed",
    "unsupported-algorithm",
]


def canonical_algorithm(name: str) -> str | None:
    """Canonical spelling ("sha-256" -> "SHA-256"), or None if unsupported (incl. -sess)."""
    upper = name.upper()
    return upper if upper in _HASHES else None


def _h(algorithm: str, text: str) -> str:
    data = text.encode("utf-8", "surrogateescape")
    return str(_HASH_FUNCS[algorithm](data).hexdigest())


def ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password) in hex: what the directory stores instead of passwords."""
    alg = canonical_algorithm(algorithm)
    if alg is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return _h(alg, f"{username}:{realm}:{password}")


def digest_response(
    algorithm: str, ha1_hex: str, nonce: str, nc: str, cnonce: str, method: str, uri: str
) -> str:
    """KD(HA1, nonce:nc:cnonce:auth:H(method:uri)) for qop=auth (RFC 7616 §3.4.1)."""
    alg = canonical_algorithm(algorithm)
    if alg is None:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    ha2 = _h(alg, f"{method}:{uri}")
    return _h(alg, f"{ha1_hex}:{nonce}:{nc}:{cnonce}:auth:{ha2}")


class NonceService:
    """Stateless, HMAC-authenticated, time-stamped nonces."""

    def __init__(
        self,
        secret: bytes,
        lifetime: float = 300.0,
        *,
        max_skew: float = 30.0,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the nonce secret must be at least 16 bytes")
        key = hashlib.sha256(secret).digest() if len(secret) > _SHA256_BLOCK else secret
        key = key.ljust(_SHA256_BLOCK, b"\0")
        # HMAC-SHA256 (RFC 2104) with the keyed inner and outer states computed once: each
        # MAC then costs two hash copies, not a key schedule (and OpenSSL 3's per-call
        # algorithm fetch). tests/test_sip_fast_paths.py checks it against `hmac.digest`.
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))
        self.lifetime = lifetime
        self.max_skew = max_skew
        """How far in the future a nonce may be dated (clock skew between nodes)."""

    def _mac(self, label: int, *parts: bytes) -> bytes:
        """HMAC over length-prefixed parts (no two inputs encode alike), cut to 10 bytes."""
        pieces = [_LABELS[label]]
        for part in parts:
            pieces += (_U16.pack(len(part)), part)
        inner = self._inner.copy()
        inner.update(b"".join(pieces))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()[:_MAC_BYTES]

    def make(self, realm: str, now: float, scope: bytes = b"") -> str:
        """A fresh nonce bound to `realm` and `scope` (the connection), dated `now`
        (wall-clock seconds)."""
        stamp = max(0, min(int(now), _MAX_STAMP))
        prefix = stamp.to_bytes(_STAMP_BYTES, "big") + os.urandom(_RANDOM_BYTES)
        realm_bytes = realm.encode("utf-8", "surrogateescape")
        raw = (prefix + self._mac(0, prefix, realm_bytes)
               + self._mac(1, prefix, realm_bytes, scope))
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def check(self, nonce: str, realm: str, now: float, scope: bytes = b"") -> NonceStatus:
        """"ok"; "stale" (genuine, this scope, but older than `lifetime` at `now`);
        "foreign" (genuine and fresh enough, but issued for another scope); or "invalid"."""
        if not _NONCE_RE.fullmatch(nonce):
            return "invalid"
        raw = base64.urlsafe_b64decode(nonce + "=")
        prefix = raw[:_PREFIX_BYTES]
        genuine_mac = raw[_PREFIX_BYTES:_PREFIX_BYTES + _MAC_BYTES]
        scope_mac = raw[_PREFIX_BYTES + _MAC_BYTES:]
        realm_bytes = realm.encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(self._mac(0, prefix, realm_bytes), genuine_mac):
            return "invalid"
        age = now - int.from_bytes(prefix[:_STAMP_BYTES], "big")
        if age < -self.max_skew:
            return "invalid"
        if not hmac.compare_digest(self._mac(1, prefix, realm_bytes, scope), scope_mac):
            return "foreign"
        return "stale" if age > self.lifetime else "ok"


def build_challenges(
    realm: str,
    algorithms: Sequence[str],
    nonce_service: NonceService,
    stale: bool = False,
    opaque: str | None = None,
    *,
    now: float,
    scope: bytes = b"",
) -> list[str]:
    """One WWW-Authenticate value per algorithm, in the given (preference) order, with
    nonces bound to `scope` (the connection the challenge is sent on).

    RFC 8760 §2.4: a challenge names one algorithm, so offering several means several
    headers, most preferred first (e.g. ("SHA-256", "MD5")).
    """
    values = []
    for name in algorithms:
        alg = canonical_algorithm(name)
        if alg is None:
            raise ValueError(f"unsupported digest algorithm {name!r}")
        value = (
            f"Digest realm={quote(realm)}, nonce={quote(nonce_service.make(realm, now, scope))}, "
            f'algorithm={alg}, qop="auth"'
        )
        if opaque is not None:
            value += f", opaque={quote(opaque)}"
        if stale:
            value += ", stale=true"
        values.append(value)
    return values


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The outcome of `verify`."""

    ok: bool
    """True only for a fresh, correct, non-replayed response."""
    username: str | None
    """The claimed username (None if the header could not be read)."""
    reason: AuthReason
    """Why: "ok", or what failed ("stale" means: challenge again with stale=true)."""
    algorithm: str | None = None
    """The algorithm the client used, canonical spelling."""


class NonceCountTracker:
    """Highest nonce-count seen per nonce on one connection (bounded, least recent out)."""

    def __init__(self, max_nonces: int = 64) -> None:
        self.max_nonces = max_nonces
        self._seen: OrderedDict[str, int] = OrderedDict()

    def accept(self, nonce: str, nc: int) -> bool:
        """Record `nc` for `nonce`; False if it is not above the highest one seen."""
        last = self._seen.get(nonce)
        if last is not None and nc <= last:
            return False
        self._seen[nonce] = nc
        self._seen.move_to_end(nonce)
        while len(self._seen) > self.max_nonces:
            self._seen.popitem(last=False)
        return True


def same_request_uri(digest_uri: str, request_uri: str) -> bool:
    """True when the Authorization's digest-uri names the Request-URI (RFC 7616 §3.4.6,
    RFC 3261 §22.4): the same string, or, for SIP URIs, the same scheme, user, password,
    host (any case), port, parameters (in any order; names and the token values of
    `transport`, `user`, `method` in any case, other values exactly, since a conference id
    is case-sensitive) and headers. A parameter in one only is a difference: a response
    made for `opaque=...:id:A` must not join `...:id:B`, nor a URI without one."""
    if digest_uri == request_uri:
        return True
    try:
        return _uri_key(parse_uri(digest_uri)) == _uri_key(parse_uri(request_uri))
    except SipParseError:
        return False


_TOKEN_PARAMS = frozenset({"transport", "user", "method"})


def _uri_key(uri: SipURI) -> tuple[object, ...]:
    params = {name: (value.lower() if value is not None and name in _TOKEN_PARAMS else value)
              for name, value in uri.params.items()}
    return (uri.scheme, uri.user, uri.password, uri.host.lower(), uri.port, params,
            uri.headers)


def verify(
    auth_header_value: str,
    *,
    method: str,
    request_uri: str,
    expected_realm: str,
    ha1_lookup: Callable[[str, str], str | None],
    nonce_service: NonceService,
    nc_tracker: NonceCountTracker,
    allowed_algorithms: Collection[str] | None = None,
    now: float,
    scope: bytes = b"",
) -> AuthResult:
    """Check an Authorization value for a request with this `method` and `request_uri`.

    `ha1_lookup(username, algorithm)` returns the stored HA1 hex for that algorithm (in the
    expected realm) or None. `allowed_algorithms`, when given, refuses algorithms that were
    not offered to this client (no downgrade from SHA-256 to MD5). `now` is wall-clock
    seconds, for the nonce's age; `scope` names the connection the request came on (a
    nonce issued for another one is "other-connection", like "stale" a reason to challenge
    again with stale=true when the response is otherwise right).
    """
    try:
        scheme, p = parse_auth_params(auth_header_value)
    except SipParseError:
        return AuthResult(False, None, "malformed")
    username = p.get("username")
    if scheme != "digest" or username is None:
        return AuthResult(False, username, "malformed")
    alg = canonical_algorithm(p.get("algorithm", "MD5"))
    allowed = None if allowed_algorithms is None else {a.upper() for a in allowed_algorithms}
    if alg is None or (allowed is not None and alg not in allowed):
        return AuthResult(False, username, "unsupported-algorithm")

    def fail(reason: AuthReason) -> AuthResult:
        return AuthResult(False, username, reason, alg)

    nonce, uri, response = p.get("nonce"), p.get("uri"), p.get("response")
    realm, nc, cnonce = p.get("realm"), p.get("nc", ""), p.get("cnonce")
    if nonce is None or uri is None or response is None or realm is None or not cnonce:
        return fail("malformed")
    if p.get("qop") != "auth" or not _NC_RE.fullmatch(nc):
        return fail("malformed")
    if realm != expected_realm:
        return fail("bad-realm")
    status = nonce_service.check(nonce, expected_realm, now, scope)
    if status == "invalid":
        return fail("bad-nonce")
    if not same_request_uri(uri, request_uri):
        return fail("uri-mismatch")
    stored = ha1_lookup(username, alg)
    expected = digest_response(alg, stored or "0" * 64, nonce, nc, cnonce, method, uri)
    if stored is None:
        return fail("unknown-user")
    # as bytes: compare_digest raises TypeError on a str with non-ASCII characters
    if not hmac.compare_digest(expected.encode(), response.lower().encode(
            "utf-8", "surrogateescape")):
        return fail("bad-response")
    if status == "foreign":
        return fail("other-connection")
    if status == "stale":
        return fail("stale")
    if not nc_tracker.accept(nonce, int(nc, 16)):
        return fail("replay")
    return AuthResult(True, username, "ok", alg)


@dataclass(slots=True)
class _Failures:
    window_start: float
    count: int = 0
    locked_until: float = 0.0


class FailureThrottle:
    """Lock a user, or a source address, out after repeated authentication failures.

    Users and sources are separate keys: a locked-out source does not stop other users
    elsewhere, and a locked-out user does not stop other users. Memory is bounded by
    `max_keys`; the least recently failing key is forgotten first.
    """

    def __init__(
        self,
        max_failures: int = 5,
        window: float = 60.0,
        lockout: float = 30.0,
        max_keys: int = 100_000,
        max_source_failures: int | None = None,
    ) -> None:
        self.max_failures = max_failures
        self.max_source_failures = max_failures if max_source_failures is None else (
            max_source_failures)
        """A source (one NAT may hide a whole office) may fail more often than a user."""
        self.window = window
        self.lockout = lockout
        self.max_keys = max_keys
        self._entries: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    @staticmethod
    def _keys(user: str | None, source: str) -> list[tuple[str, str]]:
        keys = [("source", source)]
        if user is not None:
            keys.append(("user", user))
        return keys

    def check(self, user: str | None, source: str, now: float) -> float | None:
        """Seconds to wait (for Retry-After) if `user` or `source` is locked out at `now`,
        else None."""
        wait = 0.0
        for key in self._keys(user, source):
            entry = self._entries.get(key)
            if entry is not None and entry.locked_until > now:
                wait = max(wait, entry.locked_until - now)
        return wait or None

    def record_failure(self, user: str | None, source: str, now: float) -> None:
        """Count a failed attempt, made at `now`, against both the user and the source."""
        for key in self._keys(user, source):
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Failures(now)
            elif now - entry.window_start >= self.window:
                entry.window_start, entry.count = now, 0
            entry.count += 1
            limit = self.max_source_failures if key[0] == "source" else self.max_failures
            if entry.count >= limit:
                entry.locked_until = now + self.lockout
                entry.window_start, entry.count = now, 0
            self._entries.move_to_end(key)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)

    def record_success(self, user: str | None, source: str) -> None:
        """Forget the user's failures (the source's stay: one good account must not
        launder a guessing source)."""
        if user is not None:
            self._entries.pop(("user", user), None)
