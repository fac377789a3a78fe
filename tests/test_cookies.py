"""The authentication cookie (docs/protocol.md §3): strict EdDSA JWT verification.

Every forged, altered, stale or misdirected token is refused twice: by
`CookieAuthority.verify` itself (unit level) and over HTTPS by a real in-process WCS
(`GET .../items` -> 401 with `WWW-Authenticate: Bearer` and a JSON error, or 403 when the
token is genuine but for another conference or tenant). Revocation and ended conferences
need the store, so those are checked through the service and over HTTPS.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conferencing.cookies import (
    ALGORITHM,
    AUDIENCE,
    ISSUER,
    REQUIRED_CLAIMS,
    CookieAuthority,
    CookieError,
)
from conferencing.service import ServiceError
from webconf.deploy import keys, tls
from webconf.deploy.config import Config

from .conftest import Participant, Wcs

CONF = "K7Q2"
TTL = 3600
LEEWAY = 30


# -- helpers -------------------------------------------------------------------------------

def b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def segment(obj: dict[str, Any]) -> str:
    return b64e(json.dumps(obj, separators=(",", ":")).encode())


def split(token: str) -> tuple[dict[str, Any], dict[str, Any], str]:
    h, p, s = token.split(".")
    return json.loads(b64d(h)), json.loads(b64d(p)), s


def raw_jws(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    return f"{segment(header)}.{segment(payload)}.{b64e(signature)}"


def hs256(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """A JWS signed with HMAC-SHA256, built by hand (PyJWT refuses public keys as secrets)."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64e(sig)}"


def sign(payload: dict[str, Any], key: Ed25519PrivateKey, kid: str | None = "k1",
         **header: Any) -> str:
    """A token signed by `key` with EdDSA, exactly as the WCS would (but any claims)."""
    headers = dict(header)
    if kid is not None:
        headers["kid"] = kid
    try:
        return jwt.encode(payload, key, algorithm=ALGORITHM, headers=headers)
    except TypeError:  # PyJWT refuses to encode some bad claims (a null `iss`)
        return ed_sign({"alg": ALGORITHM, "typ": "JWT", **headers}, payload, key)


def ed_sign(header: dict[str, Any], payload: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """An EdDSA JWS built by hand."""
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{b64e(key.sign(signing_input.encode()))}"


def public_raw(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def claims_for(conf: str = CONF, *, tenant: str = "contoso.example",
               user: str = "bob@contoso.example", role: str = "attendee",
               now: float | None = None, **override: Any) -> dict[str, Any]:
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "iss": ISSUER, "aud": AUDIENCE, "sub": f"sip:{user}", "ten": tenant, "conf": conf,
        "pid": "pid-123", "role": role, "jti": "jti-" + str(issued), "iat": issued,
        "nbf": issued, "exp": issued + TTL,
    }
    payload.update(override)
    return payload


# Each mutation takes (genuine token, its payload, the signing key) and returns a token
# that must be refused with 401. The payload is a genuine participant's claims, so over
# HTTP the only thing wrong with the forged token is the mutation itself.
Mutation = Callable[[str, dict[str, Any], Ed25519PrivateKey], str]


def _alg_none(alg: str) -> Mutation:
    return lambda token, p, key: raw_jws({"alg": alg, "kid": "k1", "typ": "JWT"}, p)


def _resign(**override: Any) -> Mutation:
    return lambda token, p, key: sign({**p, **override}, key)


def _without(claim: str) -> Mutation:
    return lambda token, p, key: sign({k: v for k, v in p.items() if k != claim}, key)


def _tampered_role(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
    h, _, s = token.split(".")
    return f"{h}.{segment({**p, 'role': 'organizer'})}.{s}"


def _tampered_header_kid(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
    header, _, _ = split(token)
    _, body, s = token.split(".")
    return f"{segment({**header, 'kid': 'k1', 'extra': 1})}.{body}.{s}"


def _truncated_signature(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
    return token[:-4]


def _foreign_key_same_kid(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
    return sign(p, Ed25519PrivateKey.generate(), kid="k1")


def _foreign_key_unknown_kid(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
    return sign(p, Ed25519PrivateKey.generate(), kid="k9")


def _real_key_unknown_kid(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
    return sign(p, key, kid="k9")


def _no_kid(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
    return sign(p, key, kid=None)


def _non_string_kid(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
    header, _, _ = split(token)
    _, body, s = token.split(".")
    return f"{segment({**header, 'kid': ['k1']})}.{body}.{s}"


def _expired(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
    past = int(time.time()) - TTL - LEEWAY - 60
    return sign({**p, "iat": past, "nbf": past, "exp": past + TTL}, key)


def _not_yet_valid(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
    return sign({**p, "nbf": int(time.time()) + LEEWAY + 600}, key)


def _issued_in_future(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
    future = int(time.time()) + LEEWAY + 600
    return sign({**p, "iat": future, "nbf": future, "exp": future + TTL}, key)


def _hs256_public(fmt: str) -> Mutation:
    def make(token: str, p: dict[str, Any], key: Ed25519PrivateKey) -> str:
        secret = public_raw(key) if fmt == "raw" else public_pem(key)
        return hs256({"alg": "HS256", "kid": "k1", "typ": "JWT"}, p, secret)
    return make


MUTATIONS: dict[str, Mutation] = {
    "alg-none": _alg_none("none"),
    "alg-None": _alg_none("None"),
    "alg-NONE": _alg_none("NONE"),
    "hs256-raw-public-key": _hs256_public("raw"),
    "hs256-pem-public-key": _hs256_public("pem"),
    "tampered-role": _tampered_role,
    "tampered-header": _tampered_header_kid,
    "truncated-signature": _truncated_signature,
    "foreign-key-same-kid": _foreign_key_same_kid,
    "foreign-key-unknown-kid": _foreign_key_unknown_kid,
    "real-key-unknown-kid": _real_key_unknown_kid,
    "no-kid": _no_kid,
    "non-string-kid": _non_string_kid,
    "expired": _expired,
    "nbf-future": _not_yet_valid,
    "iat-future": _issued_in_future,
    "wrong-aud": _resign(aud="webconf-other"),
    "wrong-aud-list": _resign(aud=["webconf-other", "someone-else"]),
    "wrong-iss": _resign(iss="evil"),
    "unknown-role": _resign(role="admin"),
    "empty-sub": _resign(sub=""),
    "non-string-conf": _resign(conf=12345),
    "non-string-pid": _resign(pid=["p"]),
    "non-numeric-exp": _resign(exp="never"),
    **{f"missing-{claim}": _without(claim) for claim in REQUIRED_CLAIMS},
    **{f"null-{claim}": _resign(**{claim: None}) for claim in REQUIRED_CLAIMS},
}

MALFORMED = {
    "garbage": "abc",
    "three-garbage-segments": "a.b.c",
    "two-segments": "eyJhbGciOiJFZERTQSJ9.e30",
    "header-not-object": f"{b64e(b'[1]')}.{segment({})}.{b64e(b'x')}",
    "oversized": "a" * 5000,
}


NON_ASCII = {
    "lone-surrogate": "\udcff\udcfe.e30.AAAA",  # how aiohttp hands over a 0xff header byte
    "latin1": "\xe4.e30.AAAA",
    "fullwidth-dot": "eyJhbGciOiJFZERTQSJ9\uff0ee30\uff0eAAAA",
}


@pytest.fixture
def ring(deployment: Config) -> dict[str, Ed25519PrivateKey]:
    return keys.load_cookie_keys(deployment)


@pytest.fixture
def authority(ring: dict[str, Ed25519PrivateKey]) -> CookieAuthority:
    return CookieAuthority(ring, "k1", ttl_seconds=TTL, leeway_seconds=LEEWAY)


def mint(authority: CookieAuthority, conf: str = CONF, role: str = "attendee",
         now: float | None = None) -> str:
    token, _ = authority.mint(sub="sip:bob@contoso.example", tenant="contoso.example",
                              conference_id=conf, participant_id="pid-123", role=role, now=now)
    return token


async def assert_refused(wcs: Wcs, conf: str, status: int = 401, *,
                         headers: dict[str, str] | None = None,
                         cookies: dict[str, str] | None = None,
                         message: str | None = None) -> dict[str, Any]:
    async with wcs.http.get(wcs.items_url(conf), headers=headers, cookies=cookies) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        body = await resp.json()
        if status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(body) == {"error"}
    assert body["error"]["code"] == {401: "unauthorized", 403: "forbidden"}[status]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if message is not None:
        assert body["error"]["message"] == message
    return body


async def assert_accepted(wcs: Wcs, conf: str, *, headers: dict[str, str] | None = None,
                          cookies: dict[str, str] | None = None) -> None:
    async with wcs.http.get(wcs.items_url(conf), headers=headers, cookies=cookies) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["conference"] == wcs.public_id(conf)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- unit level: CookieAuthority.verify ----------------------------------------------------

def test_genuine_token_verifies(authority: CookieAuthority,
                                ring: dict[str, Ed25519PrivateKey]) -> None:
    token, minted = authority.mint(sub="sip:bob@contoso.example", tenant="contoso.example",
                                   conference_id=CONF, participant_id="pid-123",
                                   role="presenter")
    header, payload, _ = split(token)
    assert header["alg"] == "EdDSA" and header["kid"] == "k1"
    assert set(payload) == set(REQUIRED_CLAIMS)
    assert payload["iss"] == "webconf" and payload["aud"] == "webconf-content"
    claims = authority.verify(token, conference_id=CONF)
    assert claims == minted
    assert claims.role == "presenter" and claims.tenant == "contoso.example"
    assert claims.expires_at - claims.issued_at == TTL
    # The hand-made signer used by the forgeries below makes acceptable tokens when the
    # claims are right, so each forgery fails for its mutation alone.
    hand = ed_sign({"alg": "EdDSA", "kid": "k1"}, payload, ring["k1"])
    assert authority.verify(hand, conference_id=CONF) == minted


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_forged_token_refused(name: str, authority: CookieAuthority,
                              ring: dict[str, Ed25519PrivateKey]) -> None:
    genuine = mint(authority)
    _, payload, _ = split(genuine)
    forged = MUTATIONS[name](genuine, payload, ring["k1"])
    assert forged != genuine
    with pytest.raises(CookieError) as exc:
        authority.verify(forged, conference_id=CONF)
    assert exc.value.reason  # a short, client-safe reason


def test_refusal_reasons(authority: CookieAuthority, ring: dict[str, Ed25519PrivateKey]) -> None:
    genuine = mint(authority)
    _, payload, _ = split(genuine)
    key = ring["k1"]
    cases = {
        "unacceptable algorithm": MUTATIONS["alg-none"](genuine, payload, key),
        "unknown key id": MUTATIONS["real-key-unknown-kid"](genuine, payload, key),
        "token expired": MUTATIONS["expired"](genuine, payload, key),
        "invalid token": MUTATIONS["tampered-role"](genuine, payload, key),
    }
    for reason, token in cases.items():
        with pytest.raises(CookieError) as exc:
            authority.verify(token, conference_id=CONF)
        assert exc.value.reason == reason
    hs = MUTATIONS["hs256-pem-public-key"](genuine, payload, key)
    assert _reason(authority, hs) == "unacceptable algorithm"


def _reason(authority: CookieAuthority, token: str, conf: str = CONF) -> str:
    with pytest.raises(CookieError) as exc:
        authority.verify(token, conference_id=conf)
    return exc.value.reason


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_token_refused(name: str, authority: CookieAuthority) -> None:
    assert _reason(authority, MALFORMED[name]) == "malformed token"


@pytest.mark.parametrize("name", list(NON_ASCII))
def test_non_ascii_token_refused(name: str, authority: CookieAuthority) -> None:
    assert _reason(authority, NON_ASCII[name]) == "malformed token"


def test_empty_token_refused(authority: CookieAuthority) -> None:
    assert _reason(authority, "") == "malformed token"


def test_expiry_is_exact_and_nbf_honours_leeway(authority: CookieAuthority,
                                                ring: dict[str, Ed25519PrivateKey]) -> None:
    now = int(time.time())
    # `exp` is exact (the channel closes at `exp`, so HTTP refuses from then on too, §3).
    authority.verify(mint(authority, now=now - TTL + 5), conference_id=CONF)
    assert _reason(authority, mint(authority, now=now - TTL)) == "token expired"
    assert _reason(authority, mint(authority, now=now - TTL - LEEWAY // 2)) == "token expired"
    # `nbf` within the leeway: accepted (clock skew between nodes).
    authority.verify(sign(claims_for(nbf=now + LEEWAY // 2), ring["k1"]), conference_id=CONF)
    # Beyond it: refused.
    assert _reason(authority, mint(authority, now=now - TTL - LEEWAY - 5)) == "token expired"
    assert _reason(authority, sign(claims_for(nbf=now + LEEWAY + 5), ring["k1"])) == (
        "invalid token")


def test_token_for_another_conference(authority: CookieAuthority) -> None:
    token = mint(authority, conf="OTHER")
    assert _reason(authority, token) == "token is for another conference"
    # Case and prefix variants of the id are other conferences too.
    for conf in ("k7q2", "K7Q", "K7Q2 ", "K7Q2X"):
        assert _reason(authority, mint(authority), conf=conf) == (
            "token is for another conference")


def test_key_ring_rotation(deployment: Config) -> None:
    old_ring = keys.load_cookie_keys(deployment)
    assert set(old_ring) == {"k1"}
    old = CookieAuthority(old_ring, "k1", ttl_seconds=TTL)
    old_token = mint(old)

    keys.add_cookie_key(deployment, "k2")
    ring = keys.load_cookie_keys(deployment)
    assert set(ring) == {"k1", "k2"}
    new = CookieAuthority(ring, "k2", ttl_seconds=TTL)
    new_token = mint(new)
    assert split(old_token)[0]["kid"] == "k1"
    assert split(new_token)[0]["kid"] == "k2"
    # The new authority signs with k2 and still verifies k1's tokens.
    assert new.verify(old_token, conference_id=CONF).participant_id == "pid-123"
    assert new.verify(new_token, conference_id=CONF).participant_id == "pid-123"
    # A node that has not loaded k2 yet refuses k2 tokens by kid.
    assert _reason(old, new_token) == "unknown key id"
    # The kid selects the key: k2's signature under k1's kid (and vice versa) is refused.
    payload = split(new_token)[1]
    assert _reason(new, sign(payload, ring["k2"], kid="k1")) == "invalid token"
    assert _reason(new, sign(payload, ring["k1"], kid="k2")) == "invalid token"
    # Once k1 is retired from the ring, its tokens are refused.
    retired = CookieAuthority({"k2": ring["k2"]}, "k2", ttl_seconds=TTL)
    assert _reason(retired, old_token) == "unknown key id"
    with pytest.raises(ValueError):
        CookieAuthority({"k2": ring["k2"]}, "k1", ttl_seconds=TTL)


# -- over HTTPS against a real WCS -----------------------------------------------------------

async def admitted(wcs: Wcs) -> tuple[Participant, Participant]:
    alice = await wcs.admit(CONF, "alice@contoso.example")
    bob = await wcs.admit(CONF, "bob@contoso.example", organizer="alice@contoso.example")
    return alice, bob


def server_ring(wcs: Wcs) -> dict[str, Ed25519PrivateKey]:
    return keys.load_cookie_keys(wcs.cfg)


async def test_http_genuine_cookie_as_bearer_and_browser_cookie(wcs: Wcs) -> None:
    _, bob = await admitted(wcs)
    await assert_accepted(wcs, CONF, headers=bob.headers)
    await assert_accepted(wcs, CONF, headers={"Authorization": f"bearer  {bob.cookie}"})
    await assert_accepted(wcs, CONF, cookies={"webconf_auth": bob.cookie})
    await assert_accepted(wcs, CONF, headers={"Cookie": f"webconf_auth={bob.cookie}"})
    # The session's own cookie jar stays empty: nothing leaked between requests.
    await assert_refused(wcs, CONF, message="missing cookie")
    await assert_refused(wcs, CONF, cookies={"other_cookie": bob.cookie},
                         message="missing cookie")


@pytest.mark.parametrize("name", list(MUTATIONS))
async def test_http_forged_token_refused(name: str, wcs: Wcs) -> None:
    _, bob = await admitted(wcs)
    _, payload, _ = split(bob.cookie)
    forged = MUTATIONS[name](bob.cookie, payload, server_ring(wcs)["k1"])
    await assert_refused(wcs, CONF, headers=bearer(forged))
    await assert_refused(wcs, CONF, cookies={"webconf_auth": forged})
    # The genuine cookie still works: nothing about the refusal is sticky.
    await assert_accepted(wcs, CONF, headers=bob.headers)


@pytest.mark.parametrize("name", list(MALFORMED))
async def test_http_malformed_token_refused(name: str, wcs: Wcs) -> None:
    await admitted(wcs)
    await assert_refused(wcs, CONF, headers=bearer(MALFORMED[name]))


@pytest.mark.parametrize("header", [b"Authorization: Bearer \xff\xfe.e30.AAAA",
                                    b"Authorization: Bearer \xc3\xa4.e30.AAAA",
                                    b"Cookie: webconf_auth=\xff\xfe.e30.AAAA"])
async def test_http_non_ascii_token_bytes_refused(header: bytes, wcs: Wcs) -> None:
    """Raw non-UTF-8 bytes in the token are a 401, not a 500 (sent on a raw TLS socket:
    aiohttp's client would not send such a header)."""
    _, bob = await admitted(wcs)
    assert wcs.server is not None
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", wcs.server.https_port, ssl=tls.client_context(wcs.cfg),
        server_hostname="localhost")
    try:
        conf = wcs.public_id(CONF).encode()
        writer.write(b"GET /v1/conferences/" + conf + b"/items HTTP/1.1\r\n"
                     b"Host: localhost\r\n" + header + b"\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert b"\r\nWWW-Authenticate: Bearer" in head
    assert json.loads(body)["error"]["code"] == "unauthorized"
    await assert_accepted(wcs, CONF, headers=bob.headers)


async def test_http_other_schemes_and_empty_bearer(wcs: Wcs) -> None:
    _, bob = await admitted(wcs)
    for value in ("Bearer", "Bearer ", f"Basic {bob.cookie}", bob.cookie, ""):
        await assert_refused(wcs, CONF, headers={"Authorization": value})


async def test_http_hand_minted_tokens_with_real_key(wcs: Wcs) -> None:
    """Claims signed by the deployment's own key pass only when they are all right."""
    _, bob = await admitted(wcs)
    key = server_ring(wcs)["k1"]
    _, genuine, _ = split(bob.cookie)
    # A correct re-signature of the genuine claims is as good as the original.
    await assert_accepted(wcs, CONF, headers=bearer(sign(genuine, key)))
    # Claims that verify but name no real conference.
    await assert_refused(wcs, "NOPE", headers=bearer(sign({**genuine, "conf": "NOPE"}, key)),
                         message="unknown conference")


async def test_http_expired_and_not_yet_valid(wcs: Wcs) -> None:
    await admitted(wcs)
    service = wcs.server.service
    assert service is not None
    past = time.time() - service.cookies.ttl_seconds - service.cookies.leeway_seconds - 60
    token, _ = service.cookies.mint(sub="sip:bob@contoso.example", tenant="contoso.example",
                                    conference_id=wcs.public_id(CONF), participant_id="pid-x",
                                    role="attendee", now=past)
    await assert_refused(wcs, CONF, headers=bearer(token), message="token expired")
    key = server_ring(wcs)["k1"]
    early = sign(claims_for(wcs.public_id(CONF), nbf=int(time.time()) + 3600), key)
    await assert_refused(wcs, CONF, headers=bearer(early))


async def test_http_token_for_another_conference(wcs: Wcs) -> None:
    alice, bob = await admitted(wcs)
    other = await wcs.admit("OTHER", "carol@contoso.example")
    await assert_accepted(wcs, "OTHER", headers=other.headers)
    # Same tenant, genuine token, wrong conference in the URL.
    await assert_refused(wcs, CONF, 403, headers=other.headers,
                         message="token is for another conference")
    await assert_refused(wcs, "OTHER", 403, headers=bob.headers)
    await assert_refused(wcs, "OTHER", 403, cookies={"webconf_auth": alice.cookie})


async def test_http_another_tenants_token(wcs: Wcs) -> None:
    await admitted(wcs)
    eve = await wcs.admit("FAB1", "eve@fabrikam.example")
    await assert_accepted(wcs, "FAB1", headers=eve.headers)
    body = await assert_refused(wcs, CONF, 403, headers=eve.headers)
    assert "another" in body["error"]["message"]
    # Even a token naming the contoso conference, signed by the real key, is refused
    # when its tenant is not the conference's tenant.
    _, payload, _ = split(eve.cookie)
    forged = sign({**payload, "conf": wcs.public_id(CONF)}, server_ring(wcs)["k1"])
    await assert_refused(wcs, CONF, 403, headers=bearer(forged),
                         message="conference belongs to another tenant")
    service = wcs.server.service
    assert service is not None
    with pytest.raises(ServiceError) as exc:
        await service.authenticate(forged, wcs.public_id(CONF))
    assert exc.value.code == "forbidden"


async def test_http_revoked_token(wcs: Wcs) -> None:
    alice, bob = await admitted(wcs)
    await assert_accepted(wcs, CONF, headers=bob.headers)
    assert await wcs.revoke(bob) == 204
    await assert_refused(wcs, CONF, headers=bob.headers, message="cookie revoked")
    await assert_refused(wcs, CONF, cookies={"webconf_auth": bob.cookie},
                         message="cookie revoked")
    service = wcs.server.service
    assert service is not None
    # The signature and claims are still fine: only the store knows it is revoked.
    assert service.cookies.verify(bob.cookie, conference_id=bob.conference).participant_id == (
        bob.pid)
    with pytest.raises(ServiceError) as exc:
        await service.authenticate(bob.cookie, bob.conference)
    assert exc.value.code == "unauthorized"
    # Revoking bob does not affect alice; revoking twice is idempotent.
    await assert_accepted(wcs, CONF, headers=alice.headers)
    assert await wcs.revoke(bob) == 204
    # A re-signed copy of the revoked claims is revoked too (same jti).
    _, payload, _ = split(bob.cookie)
    await assert_refused(wcs, CONF, headers=bearer(sign(payload, server_ring(wcs)["k1"])),
                         message="cookie revoked")


async def test_http_token_after_conference_ended(wcs: Wcs) -> None:
    alice, bob = await admitted(wcs)
    assert await wcs.end(CONF) == 204
    for who in (alice, bob):
        await assert_refused(wcs, CONF, headers=who.headers)
        await assert_refused(wcs, CONF, cookies={"webconf_auth": who.cookie})
    # A fresh token for the ended conference (never revoked: its jti is new) is refused
    # because the conference has ended.
    service = wcs.server.service
    assert service is not None
    token, _ = service.cookies.mint(sub="sip:bob@contoso.example", tenant="contoso.example",
                                    conference_id=bob.conference, participant_id="pid-y",
                                    role="attendee")
    await assert_refused(wcs, CONF, headers=bearer(token), message="conference has ended")
    with pytest.raises(ServiceError) as exc:
        await service.authenticate(token, bob.conference)
    assert exc.value.code == "unauthorized"


async def test_http_key_rotation_across_restart(wcs: Wcs) -> None:
    """Cookies signed by the old kid keep working after a restart that signs with a new one."""
    _, bob = await admitted(wcs)
    server = wcs.server
    assert server is not None
    await server.stop()
    keys.add_cookie_key(wcs.cfg, "k2")
    wcs.cfg.keys.cookie_signing_kid = "k2"
    port, internal_port = wcs.cfg.wcs.https_port, wcs.cfg.wcs.internal_port
    await server.start()
    assert (server.https_port, server.internal_port) == (port, internal_port)
    await assert_accepted(wcs, CONF, headers=bob.headers)
    carol = await wcs.admit(CONF, "carol@contoso.example", organizer="alice@contoso.example")
    assert split(carol.cookie)[0]["kid"] == "k2"
    await assert_accepted(wcs, CONF, headers=carol.headers)
