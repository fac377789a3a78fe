"""Digest authentication (RFC 3261 §22, RFC 8760): vectors, nonces, replay, throttling."""

import base64

import pytest

from webconf.sip.digest import (
    AuthResult,
    FailureThrottle,
    NonceCountTracker,
    NonceService,
    build_challenges,
    digest_response,
    ha1,
    same_request_uri,
    verify,
)
from webconf.sip.message import parse_auth_params

SECRET = b"0123456789abcdef0123456789abcdef"
REALM = "contoso.example"
URI = "sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2"


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class AlwaysOk:
    """A nonce service that accepts the RFC example nonces."""

    def check(self, nonce, realm, now, scope=b""):
        return "ok"


# --- vectors ------------------------------------------------------------------------------


def test_rfc2617_md5_vector():
    key = ha1("Mufasa", "testrealm@host.com", "Circle Of Life", "MD5")
    assert key == "939e7578ed9e3c518a452acee763bce9"
    response = digest_response(
        "MD5", key, "dcd98b7102dd2f0e8b11d0f600bfb0c093", "00000001", "0a4f113b", "GET",
        "/dir/index.html",
    )  # fmt: skip
    assert response == "6629fae49393a05397450978507c4ef1"


RFC7616 = {
    "realm": "http-auth@example.org",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
}


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
    ],
)
def test_rfc7616_vectors_through_verify(algorithm, expected):
    key = ha1("Mufasa", RFC7616["realm"], "Circle of Life", algorithm)
    r = digest_response(
        algorithm, key, RFC7616["nonce"], "00000001", RFC7616["cnonce"], "GET", "/dir/index.html"
    )
    assert r == expected
    header = (
        f'Digest username="Mufasa", realm="{RFC7616["realm"]}", uri="/dir/index.html", '
        f'algorithm={algorithm}, nonce="{RFC7616["nonce"]}", nc=00000001, '
        f'cnonce="{RFC7616["cnonce"]}", qop=auth, response="{expected.upper()}", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    result = verify(
        header,
        method="GET",
        request_uri="/dir/index.html",
        expected_realm=RFC7616["realm"],
        ha1_lookup=lambda user, alg: key if (user, alg) == ("Mufasa", algorithm) else None,
        nonce_service=AlwaysOk(),
        nc_tracker=NonceCountTracker(),
        now=0.0,
    )
    assert result == AuthResult(True, "Mufasa", "ok", algorithm)


def test_ha1_rejects_unknown_algorithms():
    assert ha1("a", "r", "p", "sha-256") == ha1("a", "r", "p", "SHA-256")
    for algorithm in ("SHA-512-256", "MD5-sess", "SHA-256-sess"):
        with pytest.raises(ValueError):
            ha1("a", "r", "p", algorithm)


# --- nonces -------------------------------------------------------------------------------


def test_nonce_ok_stale_invalid():
    clock = Clock()
    service = NonceService(SECRET, lifetime=300.0)
    nonce = service.make(REALM, clock.now)
    assert len(nonce) == 43 and "=" not in nonce
    assert service.check(nonce, REALM, clock.now) == "ok"
    assert NonceService(SECRET).check(nonce, REALM, clock.now) == "ok"  # another node
    assert NonceService(b"x" * 32).check(nonce, REALM, clock.now) == "invalid"
    assert service.check(nonce, "fabrikam.example", clock.now) == "invalid"
    raw = bytearray(base64.urlsafe_b64decode(nonce + "="))
    raw[0] ^= 1  # move the timestamp
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert service.check(forged, REALM, clock.now) == "invalid"
    for junk in ("", "abc", nonce + "A", nonce[:-1] + "!", "\u00e9" * 43):
        assert service.check(junk, REALM, clock.now) == "invalid"
    clock.now += 300
    assert service.check(nonce, REALM, clock.now) == "ok"
    clock.now += 1
    assert service.check(nonce, REALM, clock.now) == "stale"
    clock.now -= 400  # dated more than max_skew in the future
    assert service.check(nonce, REALM, clock.now) == "invalid"
    with pytest.raises(ValueError):
        NonceService(b"short")


def test_challenges_one_header_per_algorithm():
    clock = Clock()
    service = NonceService(SECRET)
    values = build_challenges(REALM, ["SHA-256", "md5"], service, opaque="op", now=clock.now)
    assert len(values) == 2
    parsed = [parse_auth_params(v) for v in values]
    assert [p["algorithm"] for _, p in parsed] == ["SHA-256", "MD5"]
    for scheme, p in parsed:
        assert scheme == "digest" and p["realm"] == REALM and p["qop"] == "auth"
        assert p["opaque"] == "op" and "stale" not in p
        assert service.check(p["nonce"], REALM, clock.now) == "ok"
    assert values[0].startswith('Digest realm="contoso.example", nonce="')
    assert 'algorithm=SHA-256, qop="auth"' in values[0] and "MD5" not in values[0]
    (stale,) = build_challenges(REALM, ["SHA-256"], service, stale=True, now=clock.now)
    assert parse_auth_params(stale)[1]["stale"] == "true"
    with pytest.raises(ValueError):
        build_challenges(REALM, ["SHA-512-256"], service, now=clock.now)


# --- verify -------------------------------------------------------------------------------

PASSWORDS = {"alice": "wonderland"}


def lookup(user, algorithm):
    password = PASSWORDS.get(user)
    return None if password is None else ha1(user, REALM, password, algorithm)


def answer(challenge, *, user="alice", password="wonderland", count=1, method="INVITE", **over):
    """What a client sends back for a challenge."""
    _, p = parse_auth_params(challenge)
    algorithm = p["algorithm"]
    nc_text = f"{count:08x}"
    key = ha1(user, p["realm"], password, algorithm)
    response = digest_response(algorithm, key, p["nonce"], nc_text, "c0ffee", method, URI)
    fields = {
        "username": f'"{user}"',
        "realm": f'"{p["realm"]}"',
        "nonce": f'"{p["nonce"]}"',
        "uri": f'"{URI}"',
        "response": f'"{response}"',
        "algorithm": algorithm,
        "cnonce": '"c0ffee"',
        "nc": nc_text,
        "qop": "auth",
    }
    fields.update(over)
    return "Digest " + ", ".join(f"{k}={v}" for k, v in fields.items() if v is not None)


def setup(clock=None):
    clock = clock or Clock()
    service = NonceService(SECRET)
    tracker = NonceCountTracker()

    def check(header, method="INVITE", **kw):
        return verify(
            header,
            method=method,
            request_uri=URI,
            expected_realm=REALM,
            ha1_lookup=lookup,
            nonce_service=service,
            nc_tracker=tracker,
            now=clock.now,
            **kw,
        )

    return service, check


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_verify_ok_then_replay(algorithm):
    clock = Clock()
    service, check = setup(clock)
    (challenge,) = build_challenges(REALM, [algorithm], service, now=clock.now)
    assert check(answer(challenge)) == AuthResult(True, "alice", "ok", algorithm)
    assert check(answer(challenge)).reason == "replay"
    assert check(answer(challenge, count=2)).ok
    assert check(answer(challenge, count=2)).reason == "replay"
    assert check(answer(challenge, count=1)).reason == "replay"
    assert check(answer(challenge, count=3)).ok


def test_verify_failures():
    clock = Clock()
    service, check = setup(clock)
    (challenge,) = build_challenges(REALM, ["SHA-256"], service, now=clock.now)
    assert check(answer(challenge, password="guess")).reason == "bad-response"
    assert check(answer(challenge, method="BYE")).reason == "bad-response"
    assert check(answer(challenge), method="BYE").reason == "bad-response"
    assert check(answer(challenge, user="mallory")) == AuthResult(
        False, "mallory", "unknown-user", "SHA-256"
    )
    assert check(answer(challenge, realm='"fabrikam.example"')).reason == "bad-realm"
    assert check(answer(challenge, nonce='"AAAA"')).reason == "bad-nonce"
    assert check(answer(challenge, algorithm="SHA-512-256")).reason == "unsupported-algorithm"
    assert check(answer(challenge, algorithm="MD5-sess")).reason == "unsupported-algorithm"
    for broken in (
        {"qop": None},
        {"qop": "auth-int"},
        {"nc": None},
        {"nc": "1"},
        {"cnonce": None},
        {"uri": None},
        {"response": None},
        {"username": None},
    ):
        assert check(answer(challenge, **broken)).reason == "malformed", broken
    for junk in ("", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", 'Digest username="a', "Digest ,,,"):
        assert check(junk).reason == "malformed"
    assert check(answer(challenge)).ok  # none of the failures used up the nonce


def test_verify_stale_only_with_the_right_password():
    clock = Clock()
    service, check = setup(clock)
    (challenge,) = build_challenges(REALM, ["SHA-256"], service, now=clock.now)
    clock.now += 301
    assert check(answer(challenge)) == AuthResult(False, "alice", "stale", "SHA-256")
    assert check(answer(challenge, password="guess")).reason == "bad-response"


def test_algorithm_absent_means_md5_and_downgrade_is_refused():
    clock = Clock()
    service, check = setup(clock)
    (challenge,) = build_challenges(REALM, ["MD5"], service, now=clock.now)
    assert check(answer(challenge, algorithm=None)) == AuthResult(True, "alice", "ok", "MD5")
    result = check(answer(challenge, count=2), allowed_algorithms=["SHA-256"])
    assert result.reason == "unsupported-algorithm"
    assert check(answer(challenge, count=3), allowed_algorithms=["sha-256", "md5"]).ok


def test_nonce_count_tracker_is_bounded():
    tracker = NonceCountTracker(max_nonces=2)
    assert tracker.accept("a", 1) and tracker.accept("b", 1)
    assert not tracker.accept("a", 1)
    assert tracker.accept("a", 2)
    assert tracker.accept("c", 1)  # evicts "b", the least recently used
    assert not tracker.accept("a", 2) and not tracker.accept("c", 1)
    assert tracker.accept("b", 1)  # forgotten: the documented weakness


# --- throttling ---------------------------------------------------------------------------


def test_throttle_per_user_across_sources():
    clock = Clock(100.0)
    throttle = FailureThrottle(max_failures=5, window=60.0, lockout=30.0)
    for i in range(5):
        assert throttle.check("alice", f"10.0.0.{i}", clock.now) is None
        throttle.record_failure("alice", f"10.0.0.{i}", clock.now)
    # the user is locked everywhere
    assert throttle.check("alice", "192.0.2.1", clock.now) == 30.0
    assert throttle.check("bob", "10.0.0.1", clock.now) is None  # other users are not
    assert throttle.check(None, "10.0.0.1", clock.now) is None
    clock.now += 10
    assert throttle.check("alice", "192.0.2.1", clock.now) == 20.0
    clock.now += 20
    assert throttle.check("alice", "192.0.2.1", clock.now) is None


def test_throttle_per_source_across_users():
    clock = Clock(100.0)
    throttle = FailureThrottle()
    for i in range(5):
        throttle.record_failure(f"user{i}", "203.0.113.9", clock.now)
    assert throttle.check("carol", "203.0.113.9", clock.now) == 30.0  # the source is locked
    assert throttle.check(None, "203.0.113.9", clock.now) == 30.0
    # others elsewhere are not
    assert throttle.check("carol", "198.51.100.1", clock.now) is None
    assert throttle.check("user0", "198.51.100.1", clock.now) is None
    throttle.record_success("user0", "203.0.113.9")
    # success does not free a source
    assert throttle.check("user0", "203.0.113.9", clock.now) == 30.0


def test_throttle_window_and_success_reset():
    clock = Clock(100.0)
    throttle = FailureThrottle(max_failures=3, window=60.0)
    throttle.record_failure("alice", "a", clock.now)
    throttle.record_failure("alice", "b", clock.now)
    clock.now += 61  # the window passed: start counting again
    throttle.record_failure("alice", "c", clock.now)
    throttle.record_failure("alice", "d", clock.now)
    assert throttle.check("alice", "e", clock.now) is None
    throttle.record_success("alice", "d")
    throttle.record_failure("alice", "f", clock.now)
    throttle.record_failure("alice", "g", clock.now)
    assert throttle.check("alice", "h", clock.now) is None
    throttle.record_failure("alice", "i", clock.now)
    assert throttle.check("alice", "h", clock.now) == 30.0


def test_throttle_memory_is_bounded():
    clock = Clock()
    throttle = FailureThrottle(max_failures=1, max_keys=10)
    for i in range(1000):
        throttle.record_failure(f"u{i}", f"s{i}", clock.now)
    assert len(throttle._entries) == 10
    assert throttle.check("u999", "x", clock.now) == 30.0
    assert throttle.check("u0", "s0", clock.now) is None


def test_source_threshold_is_separate_from_user_threshold() -> None:
    now = [0.0]
    throttle = FailureThrottle(max_failures=5, max_source_failures=50)
    for i in range(5):
        throttle.record_failure("alice@contoso.example", "10.0.0.1", now[0])
    assert throttle.check("alice@contoso.example", "10.0.0.1", now[0]) is not None  # alice locked
    assert throttle.check("bob@contoso.example", "10.0.0.1", now[0]) is None  # the office is not
    for i in range(45):
        throttle.record_failure(f"user{i}@contoso.example", "10.0.0.1", now[0])
    # a guessing source
    assert throttle.check("bob@contoso.example", "10.0.0.1", now[0]) is not None
    assert throttle.check("bob@contoso.example", "10.0.0.2", now[0]) is None


# --- issue 15: nonces bound to a connection, digest-uri bound to the Request-URI ----------


def test_a_nonce_is_bound_to_the_connection_it_was_issued_on():
    clock = Clock()
    service = NonceService(SECRET)
    here, there = b"h" * 16, b"t" * 16
    nonce = service.make(REALM, clock.now, here)
    assert len(nonce) == 43
    assert service.check(nonce, REALM, clock.now, here) == "ok"
    assert NonceService(SECRET).check(nonce, REALM, clock.now, here) == "ok"  # another node
    assert service.check(nonce, REALM, clock.now, there) == "foreign"
    assert service.check(nonce, REALM, clock.now) == "foreign"
    assert NonceService(b"x" * 32).check(nonce, REALM, clock.now, here) == "invalid"
    assert service.check(nonce, "fabrikam.example", clock.now, here) == "invalid"
    clock.now += 301
    assert service.check(nonce, REALM, clock.now, here) == "stale"


def test_a_right_response_on_another_connection_is_other_connection_not_ok():
    clock = Clock()
    service = NonceService(SECRET)
    (challenge,) = build_challenges(REALM, ["SHA-256"], service, now=clock.now,
                                    scope=b"h" * 16)

    def check(header, scope):
        return verify(header, method="INVITE", request_uri=URI, expected_realm=REALM,
                      ha1_lookup=lookup, nonce_service=service,
                      nc_tracker=NonceCountTracker(), now=clock.now, scope=scope)

    assert check(answer(challenge), b"h" * 16).ok
    assert check(answer(challenge), b"t" * 16).reason == "other-connection"
    assert check(answer(challenge, password="guess"), b"t" * 16).reason == "bad-response"


@pytest.mark.parametrize("digest_uri,same", [
    (URI, True),
    ("SIP:alice@Contoso.Example;opaque=app:conf:focus:id:K7Q2;gruu", True),
    ("sip:%61lice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2", True),
    ("sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q3", False),
    ("sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:k7q2", False),
    ("sip:alice@contoso.example;gruu", False),
    ("sip:alice@contoso.example", False),
    ("sip:Alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2", False),
    ("sips:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2", False),
    ("sip:alice@contoso.example:5061;gruu;opaque=app:conf:focus:id:K7Q2", False),
    ("sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:K7Q2;transport=tls", False),
    ("/dir/index.html", False),
    ("", False),
])
def test_the_digest_uri_must_name_the_request_uri(digest_uri, same):
    assert same_request_uri(digest_uri, URI) is same
    clock = Clock()
    service, check = setup(clock)
    (challenge,) = build_challenges(REALM, ["SHA-256"], service, now=clock.now)
    _, p = parse_auth_params(challenge)
    key = ha1("alice", REALM, "wonderland", "SHA-256")
    response = digest_response("SHA-256", key, p["nonce"], "00000001", "c0ffee", "INVITE",
                               digest_uri)
    header = answer(challenge, uri=f'"{digest_uri}"', response=f'"{response}"')
    assert check(header).reason == ("ok" if same else "uri-mismatch")
