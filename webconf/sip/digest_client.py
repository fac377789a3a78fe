"""Digest authentication, client side (RFC 3261 §22, RFC 8760 algorithms, qop=auth only).

The server side is `webconf.sip.digest`; this module answers its challenges with the same
hash helpers, so the two cannot disagree on how a response is computed.

Operations: `parse_challenges` reads a 401's WWW-Authenticate values, `choose_challenge`
picks the one to answer (the client's algorithm preference, then the server's order), and
`authorization` builds the Authorization value for one request. `DigestClient` keeps the
per-nonce count (`nc`) for an agent that answers several challenges.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .digest import DEFAULT_ALGORITHMS, canonical_algorithm, digest_response, ha1
from .syntax import SipParseError, parse_auth_params, quote

__all__ = ["MAX_NONCES", "Challenge", "DigestClient", "authorization", "choose_challenge",
           "parse_challenges"]

MAX_NONCES = 16
"""Nonces whose count a `DigestClient` remembers; older ones start again at nc=1."""


@dataclass(frozen=True, slots=True)
class Challenge:
    """One usable Digest challenge (a WWW-Authenticate value)."""

    realm: str
    """The protection space: the user's credentials for this realm answer it."""
    nonce: str
    """The server's nonce, echoed back verbatim."""
    algorithm: str
    """The hash, canonical spelling ("SHA-256", "MD5")."""
    opaque: str | None = None
    """Echoed back verbatim when present."""
    stale: bool = False
    """True: the previous answer was right but its nonce expired (retry without asking)."""


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """The Digest challenges among `values` that this client can answer, in the server's order.

    Skipped: other schemes, unsupported algorithms (incl. -sess), challenges without
    realm/nonce, and ones whose qop list lacks "auth" (a challenge without qop is answered
    with qop=auth all the same, as the focus and most SIP servers accept it).
    """
    found = []
    for value in values:
        try:
            scheme, params = parse_auth_params(value)
        except SipParseError:
            continue
        algorithm = canonical_algorithm(params.get("algorithm", "MD5"))
        realm, nonce = params.get("realm"), params.get("nonce")
        if scheme != "digest" or algorithm is None or realm is None or nonce is None:
            continue
        qop = params.get("qop")
        if qop is not None and "auth" not in (q.strip().lower() for q in qop.split(",")):
            continue
        found.append(Challenge(realm=realm, nonce=nonce, algorithm=algorithm,
                               opaque=params.get("opaque"),
                               stale=params.get("stale", "").lower() == "true"))
    return found


def choose_challenge(challenges: Sequence[Challenge],
                     preference: Sequence[str] = DEFAULT_ALGORITHMS) -> Challenge | None:
    """The challenge to answer: the first algorithm of `preference` that is offered (the
    server's order breaks ties), or None when nothing offered is in `preference`."""
    for name in preference:
        wanted = canonical_algorithm(name)
        for challenge in challenges:
            if challenge.algorithm == wanted:
                return challenge
    return None


def authorization(challenge: Challenge, *, username: str, method: str, uri: str,
                  password: str | None = None, ha1_hex: str | None = None, nc: int = 1,
                  cnonce: str | None = None) -> str:
    """The Authorization value answering `challenge` for `method` on `uri` (qop=auth).

    Give the `password`, or the precomputed `ha1_hex` for the challenge's realm and
    algorithm. `cnonce` defaults to 64 fresh random bits.
    """
    if ha1_hex is None:
        if password is None:
            raise ValueError("authorization needs a password or an HA1")
        ha1_hex = ha1(username, challenge.realm, password, challenge.algorithm)
    cnonce = secrets.token_hex(8) if cnonce is None else cnonce
    nc_text = f"{nc:08x}"
    response = digest_response(challenge.algorithm, ha1_hex, challenge.nonce, nc_text,
                               cnonce, method, uri)
    value = (f"Digest username={quote(username)}, realm={quote(challenge.realm)}, "
             f"nonce={quote(challenge.nonce)}, uri={quote(uri)}, response={quote(response)}, "
             f"algorithm={challenge.algorithm}, qop=auth, nc={nc_text}, cnonce={quote(cnonce)}")
    if challenge.opaque is not None:
        value += f", opaque={quote(challenge.opaque)}"
    return value


class DigestClient:
    """One user's credentials, answering challenges with a fresh nc per nonce."""

    def __init__(self, username: str, password: str,
                 preference: Sequence[str] = DEFAULT_ALGORITHMS) -> None:
        self.username = username
        """The Digest username (the user part of the address)."""
        self._password = password
        self.preference = tuple(preference)
        """Algorithms this client will use, most preferred first."""
        self._counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"DigestClient(username={self.username!r}, preference={self.preference!r})"

    def answer(self, challenge_values: Iterable[str], *, method: str, uri: str) -> str | None:
        """The Authorization value for a 401's WWW-Authenticate values, or None when no
        challenge offers an algorithm of `preference`."""
        challenge = choose_challenge(parse_challenges(challenge_values), self.preference)
        if challenge is None:
            return None
        nc = self._counts.pop(challenge.nonce, 0) + 1
        self._counts[challenge.nonce] = nc  # most recent last
        while len(self._counts) > MAX_NONCES:
            del self._counts[next(iter(self._counts))]
        return authorization(challenge, username=self.username, password=self._password,
                             method=method, uri=uri, nc=nc)
