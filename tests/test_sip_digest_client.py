"""Digest client side (webconf.sip.digest_client) against the RFC examples and our server side."""

from __future__ import annotations

import pytest

from webconf.sip.digest import (
    NonceCountTracker,
    NonceService,
    build_challenges,
    ha1,
    verify,
)
from webconf.sip.digest_client import (
    MAX_NONCES,
    Challenge,
    DigestClient,
    authorization,
    choose_challenge,
    parse_challenges,
)
from webconf.sip.syntax import parse_auth_params

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "contoso.example"
URI = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2"


NOW = 1_700_000_000.0


# -- worked examples ---------------------------------------------------------------------------

def test_rfc2617_example() -> None:
    """RFC 2617 §3.5: the response for Mufasa's GET of /dir/index.html."""
    challenge = parse_challenges([
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'])
    assert challenge == [Challenge(realm="testrealm@host.com",
                                   nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", algorithm="MD5",
                                   opaque="5ccc069c403ebaf9f0171e9517f40e41")]
    value = authorization(challenge[0], username="Mufasa", password="Circle Of Life",
                          method="GET", uri="/dir/index.html", nc=1, cnonce="0a4f113b")
    scheme, params = parse_auth_params(value)
    assert scheme == "digest"
    assert params == {
        "username": "Mufasa", "realm": "testrealm@host.com",
        "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093", "uri": "/dir/index.html",
        "response": "6629fae49393a05397450978507c4ef1", "algorithm": "MD5", "qop": "auth",
        "nc": "00000001", "cnonce": "0a4f113b", "opaque": "5ccc069c403ebaf9f0171e9517f40e41"}


RFC7616_CHALLENGES = [
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
    'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
]


@pytest.mark.parametrize(("preference", "expected"), [
    (("SHA-256", "MD5"), "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    (("MD5",), "8ca523f5e9506fed4657c9700eebdbec"),
])
def test_rfc7616_example(preference: tuple[str, ...], expected: str) -> None:
    """RFC 7616 §3.9.1 (the RFC 8760 algorithms): both responses of the worked example."""
    challenge = choose_challenge(parse_challenges(RFC7616_CHALLENGES), preference)
    assert challenge is not None and challenge.algorithm == preference[0]
    value = authorization(challenge, username="Mufasa", password="Circle of Life",
                          method="GET", uri="/dir/index.html",
                          cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    params = parse_auth_params(value)[1]
    assert params["response"] == expected
    assert params["opaque"] == "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
    assert (params["nc"], params["qop"], params["algorithm"]) == ("00000001", "auth",
                                                                  preference[0])


# -- choosing ----------------------------------------------------------------------------------

def test_choice_follows_the_client_preference_then_the_server_order() -> None:
    md5_first = parse_challenges(reversed(RFC7616_CHALLENGES))
    assert [c.algorithm for c in md5_first] == ["MD5", "SHA-256"]
    default = choose_challenge(md5_first)
    assert default is not None and default.algorithm == "SHA-256"
    md5 = choose_challenge(md5_first, ("MD5", "SHA-256"))
    assert md5 is not None and md5.algorithm == "MD5"
    assert choose_challenge(parse_challenges(RFC7616_CHALLENGES[1:]), ("SHA-256",)) is None


def test_unusable_challenges_are_skipped() -> None:
    values = [
        'Basic realm="x"',
        'Digest realm="r", nonce="n", algorithm=SHA-256-sess, qop="auth"',
        'Digest realm="r", nonce="n", algorithm=SHA-512-256, qop="auth"',
        'Digest realm="r", nonce="n", qop="auth-int"',
        'Digest nonce="n", qop="auth"',
        'Digest realm="r", qop="auth"',
        'Digest realm="unterminated',
        'Digest realm="r", nonce="n", algorithm=sha-256, qop="auth", stale=TRUE',
    ]
    assert parse_challenges(values) == [Challenge("r", "n", "SHA-256", stale=True)]


def test_quoted_values_are_escaped() -> None:
    challenge = Challenge(realm='a "quoted" realm', nonce="n", algorithm="SHA-256")
    value = authorization(challenge, username='we\\ird"', password="pw", method="INVITE",
                          uri=URI, cnonce="c")
    params = parse_auth_params(value)[1]
    assert (params["username"], params["realm"]) == ('we\\ird"', 'a "quoted" realm')


def test_a_password_or_an_ha1_is_needed() -> None:
    challenge = Challenge(realm=REALM, nonce="n", algorithm="MD5")
    with pytest.raises(ValueError):
        authorization(challenge, username="alice", method="INVITE", uri=URI)
    by_ha1 = authorization(challenge, username="alice", method="INVITE", uri=URI, cnonce="c",
                           ha1_hex=ha1("alice", REALM, "pw", "MD5"))
    by_password = authorization(challenge, username="alice", method="INVITE", uri=URI,
                                cnonce="c", password="pw")
    assert by_ha1 == by_password


# -- against our server side -------------------------------------------------------------------

def server_verify(value: str, nonces: NonceService, tracker: NonceCountTracker,
                  password: str = "alice-pw", now: float = NOW) -> str:
    return verify(value, method="INVITE", request_uri=URI, expected_realm=REALM,
                  ha1_lookup=lambda user, alg: ha1(user, REALM, password, alg),
                  nonce_service=nonces, nc_tracker=tracker,
                  allowed_algorithms=("SHA-256", "MD5"), now=now).reason


@pytest.mark.parametrize("algorithms", [("SHA-256", "MD5"), ("MD5", "SHA-256"), ("MD5",)])
def test_the_server_accepts_what_the_client_builds(algorithms: tuple[str, ...]) -> None:
    nonces = NonceService(SECRET)
    tracker = NonceCountTracker()
    client = DigestClient("alice", "alice-pw")
    challenges = build_challenges(REALM, algorithms, nonces, opaque="op", now=NOW)
    value = client.answer(challenges, method="INVITE", uri=URI)
    assert value is not None
    params = parse_auth_params(value)[1]
    assert params["algorithm"] == ("SHA-256" if "SHA-256" in algorithms else "MD5")
    assert params["opaque"] == "op"
    assert server_verify(value, nonces, tracker) == "ok"
    assert server_verify(value, nonces, tracker) == "replay"  # the same nc twice
    again = client.answer(challenges, method="INVITE", uri=URI)  # same nonce: nc 2
    assert again is not None and parse_auth_params(again)[1]["nc"] == "00000002"
    assert server_verify(again, nonces, tracker) == "ok"
    wrong = DigestClient("alice", "guess").answer(challenges, method="INVITE", uri=URI)
    assert wrong is not None and server_verify(wrong, nonces, tracker) == "bad-response"


def test_a_fresh_nonce_starts_at_one_and_old_counts_are_forgotten() -> None:
    nonces = NonceService(SECRET)
    client = DigestClient("alice", "alice-pw", preference=("SHA-256",))
    first = build_challenges(REALM, ["SHA-256"], nonces, now=NOW)
    client.answer(first, method="INVITE", uri=URI)
    def fresh_challenge() -> list[str]:
        return build_challenges(REALM, ["SHA-256"], nonces, now=NOW)

    fresh = client.answer(fresh_challenge(), method="INVITE", uri=URI)
    assert fresh is not None and parse_auth_params(fresh)[1]["nc"] == "00000001"
    for _ in range(MAX_NONCES):
        client.answer(fresh_challenge(), method="INVITE", uri=URI)
    forgotten = client.answer(first, method="INVITE", uri=URI)
    assert forgotten is not None and parse_auth_params(forgotten)[1]["nc"] == "00000001"
    assert client.answer(build_challenges(REALM, ["MD5"], nonces, now=NOW), method="INVITE",
                         uri=URI) is None
    assert "alice-pw" not in repr(client)


def test_stale_challenge_is_answered_with_the_new_nonce() -> None:
    nonces = NonceService(SECRET, lifetime=300.0)
    tracker = NonceCountTracker()
    client = DigestClient("alice", "alice-pw")
    old = client.answer(build_challenges(REALM, ["SHA-256"], nonces, now=NOW),
                        method="INVITE", uri=URI)
    assert old is not None
    later = NOW + 301
    assert server_verify(old, nonces, tracker, now=later) == "stale"
    stale = build_challenges(REALM, ["SHA-256"], nonces, stale=True, now=later)
    assert parse_challenges(stale)[0].stale
    fresh = client.answer(stale, method="INVITE", uri=URI)
    assert fresh is not None and server_verify(fresh, nonces, tracker, now=later) == "ok"
