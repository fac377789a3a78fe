"""Authentication cookies: EdDSA (Ed25519) JWTs that only the WCS signs.

Verification is strict by construction: the algorithm is pinned to EdDSA (so `none` and
HS256-with-the-public-key are refused), the `kid` must name a key in the ring, every claim
is required, `iss`/`aud` are fixed, and the conference in the token must be the one in the
URL. Tenant binding, revocation and ended conferences need the store; the service layer
checks those on every request.

Time: a cookie is refused from `exp` on, exactly, because the data channel closes at `exp`
and an HTTP request must not outlive what the channel may not (docs/protocol.md §3). The
leeway covers only `nbf` and `iat`, i.e. a verifier whose clock runs behind the minter's.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ISSUER = "webconf"
AUDIENCE = "webconf-content"
ALGORITHM = "EdDSA"
REQUIRED_CLAIMS = ("iss", "aud", "sub", "ten", "conf", "pid", "role", "jti", "iat", "nbf", "exp")
ROLES = ("organizer", "presenter", "attendee")


class CookieError(Exception):
    """The cookie is not acceptable; `reason` is safe to show to the client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class CookieClaims:
    sub: str
    """The user's SIP URI."""
    tenant: str
    conference_id: str
    participant_id: str
    role: str
    jti: str
    issued_at: int
    expires_at: int


class CookieAuthority:
    """Mints and verifies cookies with a ring of Ed25519 keys, one of which signs."""

    def __init__(self, signing_keys: dict[str, Ed25519PrivateKey], signing_kid: str,
                 *, ttl_seconds: int, leeway_seconds: int = 30) -> None:
        if signing_kid not in signing_keys:
            raise ValueError(f"signing key {signing_kid!r} is not in the key ring")
        self._signing_key = signing_keys[signing_kid]
        self._signing_kid = signing_kid
        self._verify_keys: dict[str, Ed25519PublicKey] = {
            kid: key.public_key() for kid, key in signing_keys.items()}
        self.ttl_seconds = ttl_seconds
        self.leeway_seconds = leeway_seconds

    def mint(self, *, sub: str, tenant: str, conference_id: str, participant_id: str,
             role: str, now: float | None = None) -> tuple[str, CookieClaims]:
        issued = int(time.time() if now is None else now)
        claims = CookieClaims(
            sub=sub, tenant=tenant, conference_id=conference_id, participant_id=participant_id,
            role=role, jti=secrets.token_urlsafe(16), issued_at=issued,
            expires_at=issued + self.ttl_seconds)
        payload = {
            "iss": ISSUER, "aud": AUDIENCE, "sub": sub, "ten": tenant, "conf": conference_id,
            "pid": participant_id, "role": role, "jti": claims.jti, "iat": issued,
            "nbf": issued, "exp": claims.expires_at,
        }
        token = jwt.encode(payload, self._signing_key, algorithm=ALGORITHM,
                           headers={"kid": self._signing_kid})
        return token, claims

    def revocation_horizon(self, now: float) -> float:
        """The `exp` before which a cookie is refused by its `exp` alone, so its revocation
        row can go (docs/protocol.md §3).

        `verify` refuses a cookie once `now >= exp` on its own clock. The horizon allows the
        leeway twice past that: for a verifier on another host whose clock lags ours by up
        to the skew the leeway exists for, and as a margin. A purged row therefore never
        makes a revoked cookie valid again.
        """
        return now - 2 * self.leeway_seconds

    def expired(self, expires_at: int, now: float | None = None) -> bool:
        """Whether a cookie with this `exp` is refused by time alone (from `exp` on)."""
        return (time.time() if now is None else now) >= expires_at

    def verify(self, token: str, *, conference_id: str,
               now: float | None = None) -> CookieClaims:
        """Check signature and claims, and that the token is for `conference_id`."""
        # A JWS is ASCII; aiohttp hands over non-UTF-8 header bytes as lone surrogates,
        # which PyJWT would fail to encode (an unhandled UnicodeEncodeError, a 500).
        if not token or len(token) > 4096 or not token.isascii():
            raise CookieError("malformed token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise CookieError("malformed token") from None
        if header.get("alg") != ALGORITHM:
            raise CookieError("unacceptable algorithm")
        kid = header.get("kid")
        key = self._verify_keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise CookieError("unknown key id")
        try:
            payload = jwt.decode(
                token, key, algorithms=[ALGORITHM], audience=AUDIENCE, issuer=ISSUER,
                leeway=self.leeway_seconds,  # for nbf/iat: `exp` is checked below, exactly
                options={"require": list(REQUIRED_CLAIMS), "verify_signature": True,
                         "verify_exp": False, "verify_nbf": True, "verify_iat": True,
                         "verify_aud": True, "verify_iss": True})
        except jwt.PyJWTError:
            raise CookieError("invalid token") from None
        try:
            claims = CookieClaims(
                sub=_str(payload, "sub"), tenant=_str(payload, "ten"),
                conference_id=_str(payload, "conf"), participant_id=_str(payload, "pid"),
                role=_str(payload, "role"), jti=_str(payload, "jti"),
                issued_at=int(payload["iat"]), expires_at=int(payload["exp"]))
        except (KeyError, TypeError, ValueError, OverflowError):
            raise CookieError("invalid token") from None
        if not isinstance(payload["exp"], int | float) or isinstance(payload["exp"], bool):
            raise CookieError("invalid token")
        if self.expired(claims.expires_at, now):
            raise CookieError("token expired")
        if claims.role not in ROLES:
            raise CookieError("invalid token")
        if not secrets.compare_digest(claims.conference_id.encode(), conference_id.encode()):
            raise CookieError("token is for another conference")
        return claims


def _str(payload: dict[str, object], name: str) -> str:
    value = payload[name]
    if not isinstance(value, str) or not value:
        raise ValueError(name)
    return value
