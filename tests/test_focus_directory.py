"""The tenant directory (focus/directory.py): HA1s only, a TTL cache, and `webconf user`."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from conferencing.store import Store
from focus.directory import Directory, DirectoryError, parse_address
from webconf.deploy.config import Config
from webconf.deploy.local import UserCommandError, add_users, remove_users
from webconf.sip.digest import ha1

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct horse battery staple ✓"
KEY = b"directory-key-for-the-tests-32b!"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def db_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'webconf.db'}"


@pytest.fixture
async def directory(store_url: str):
    d = await Directory.open(store_url, KEY)
    try:
        yield d
    finally:
        await d.close()


# -- addresses ------------------------------------------------------------------------------

@pytest.mark.parametrize("address,expected", [
    ("alice@contoso.example", ("contoso.example", "alice")),
    ("Alice@Contoso.Example.", ("contoso.example", "Alice")),  # user part keeps its case
    ("sip:bob.smith@fabrikam.example", ("fabrikam.example", "bob.smith")),
    ("ext+100@a-b.example", ("a-b.example", "ext+100")),
    ("carol@bücher.example", ("xn--bcher-kva.example", "carol")),
])
def test_parse_address(address: str, expected: tuple[str, str]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", [
    "alice", "@contoso.example", "alice@", "al ice@contoso.example", "al:ice@contoso.example",
    "alice@-bad.example", "alice@contoso..example", "alice@contoso.example:5061",
    "al\"ice@contoso.example", "x" * 129 + "@contoso.example", "alice@" + "a" * 64 + ".example",
])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(DirectoryError):
        parse_address(address)


# -- the directory ------------------------------------------------------------------------------

async def test_add_lookup_replace_remove_list(directory: Directory) -> None:
    assert await directory.add_user("alice@contoso.example", PASSWORD) is True
    assert await directory.add_user("bob@contoso.example", "b0b") is False
    assert await directory.add_user("eve@Fabrikam.Example", "e") is True
    assert await directory.has_tenant("contoso.example")
    assert await directory.has_tenant("FABRIKAM.example")
    assert not await directory.has_tenant("northwind.example")
    assert not await directory.has_tenant("not a domain")

    for alg in ("MD5", "SHA-256"):
        assert await directory.lookup_ha1("contoso.example", "alice", alg) == ha1(
            "alice", "contoso.example", PASSWORD, alg)
    assert await directory.lookup_ha1("fabrikam.example", "eve", "sha-256") == ha1(
        "eve", "fabrikam.example", "e", "SHA-256")
    assert await directory.lookup_ha1("contoso.example", "carol", "MD5") is None
    assert await directory.lookup_ha1("fabrikam.example", "alice", "MD5") is None
    with pytest.raises(ValueError):
        await directory.lookup_ha1("contoso.example", "alice", "SHA-512-256")

    # a password change replaces both HA1s, and this object's cache at once
    assert await directory.add_user("alice@contoso.example", "new password") is False
    for alg in ("MD5", "SHA-256"):
        assert await directory.lookup_ha1("contoso.example", "alice", alg) == ha1(
            "alice", "contoso.example", "new password", alg)

    assert await directory.list_users() == [
        "alice@contoso.example", "bob@contoso.example", "eve@fabrikam.example"]
    assert await directory.list_users("Contoso.Example") == [
        "alice@contoso.example", "bob@contoso.example"]
    assert await directory.list_users("northwind.example") == []

    assert await directory.remove_user("bob@contoso.example") is True
    assert await directory.remove_user("bob@contoso.example") is False
    assert await directory.lookup_ha1("contoso.example", "bob", "MD5") is None
    assert await directory.list_users("contoso.example") == ["alice@contoso.example"]
    assert await directory.has_tenant("contoso.example")  # the tenant row stays


async def test_rejects_bad_input(directory: Directory) -> None:
    with pytest.raises(DirectoryError):
        await directory.add_user("alice@contoso.example", "")
    with pytest.raises(DirectoryError):
        await directory.add_user("not-an-address", "pw")
    with pytest.raises(DirectoryError):
        await directory.remove_user("alice@bad..example")
    assert await directory.list_users() == []


@pytest.mark.sqlite_only  # reads the database files
async def test_no_password_bytes_in_the_database(tmp_path: Path) -> None:
    directory = await Directory.open(db_url(tmp_path), KEY)
    old, new = "first-Secret-4242", "second-Secret-9191 ✓"
    await directory.add_user("alice@contoso.example", old)
    await directory.add_user("alice@contoso.example", new)
    await directory.add_user("bob@contoso.example", old)
    await directory.close()
    files = list(tmp_path.glob("webconf.db*"))
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in (old, new):
            assert secret.encode() not in data, path
            assert secret.encode("utf-16-le") not in data, path
    # nor the HA1s: they are sealed (tests/test_directory_at_rest.py)
    data = (tmp_path / "webconf.db").read_bytes()
    assert ha1("alice", "contoso.example", new, "SHA-256").encode() not in data


async def test_shares_the_database_with_the_wcs_store(store_url: str) -> None:
    store = await Store.open(store_url)
    directory = await Directory.open(store_url, KEY)
    try:
        assert await directory.add_user("alice@contoso.example", "pw") is True
        assert await store.tenant_key("contoso.example") is None  # separate tables
    finally:
        await directory.close()
        await store.close()
    reopened = await Directory.open(store_url, KEY, create=False)
    try:
        assert await reopened.list_users() == ["alice@contoso.example"]
    finally:
        await reopened.close()


# -- the lookup cache -------------------------------------------------------------------------

async def test_cache_hits_expiry_and_misses(store_url: str) -> None:
    clock = FakeClock()
    url = store_url
    focus = await Directory.open(url, KEY, cache_ttl=5.0, miss_ttl=1.0, clock=clock)
    operator = await Directory.open(url, KEY)  # another process, e.g. `webconf user`
    try:
        await operator.add_user("alice@contoso.example", "one")
        want_one = ha1("alice", "contoso.example", "one", "SHA-256")
        assert await focus.lookup_ha1("contoso.example", "alice", "SHA-256") == want_one
        assert focus.queries == 1
        # both algorithms come from one cached row
        assert await focus.lookup_ha1("contoso.example", "alice", "MD5") == ha1(
            "alice", "contoso.example", "one", "MD5")
        assert await focus.lookup_ha1("Contoso.Example", "alice", "SHA-256") == want_one
        assert focus.queries == 1

        # a change elsewhere is seen once the entry expires
        await operator.add_user("alice@contoso.example", "two")
        clock.now += 4.9
        assert await focus.lookup_ha1("contoso.example", "alice", "SHA-256") == want_one
        assert focus.queries == 1
        clock.now += 0.2
        assert await focus.lookup_ha1("contoso.example", "alice", "SHA-256") == ha1(
            "alice", "contoso.example", "two", "SHA-256")
        assert focus.queries == 2

        # misses are cached too, but only briefly
        assert await focus.lookup_ha1("contoso.example", "mallory", "MD5") is None
        assert await focus.lookup_ha1("contoso.example", "mallory", "MD5") is None
        assert focus.queries == 3
        await operator.add_user("mallory@contoso.example", "m")
        clock.now += 1.1
        assert await focus.lookup_ha1("contoso.example", "mallory", "MD5") is not None
        assert focus.queries == 4

        # removal through the focus's own object takes effect at once
        assert await focus.remove_user("mallory@contoso.example")
        assert await focus.lookup_ha1("contoso.example", "mallory", "MD5") is None
    finally:
        await focus.close()
        await operator.close()


async def test_cache_is_bounded(store_url: str) -> None:
    directory = await Directory.open(store_url, KEY, cache_size=3)
    try:
        for i in range(10):
            await directory.lookup_ha1("contoso.example", f"user{i}", "MD5")
        assert len(directory._cache) == 3
        before = directory.queries
        await directory.lookup_ha1("contoso.example", "user9", "MD5")  # most recent: cached
        assert directory.queries == before
        await directory.lookup_ha1("contoso.example", "user0", "MD5")  # evicted: a query
        assert directory.queries == before + 1
    finally:
        await directory.close()


# -- `webconf user` ---------------------------------------------------------------------------

def webconf(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "webconf", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


async def test_cli_add_list_remove(deployment: Config) -> None:
    base = str(deployment.base_dir)
    secret = "cli-Secret-Passw0rd"
    r = webconf("user", "add", base, "alice@contoso.example", stdin=secret + "\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "added alice@contoso.example (new tenant contoso.example)\n"
    assert r.stderr == ""
    r = webconf("user", "add", base, "bob@contoso.example", stdin="bobs password\r\n")
    assert (r.returncode, r.stdout) == (0, "added bob@contoso.example\n")
    r = webconf("user", "add", base, "eve@fabrikam.example", stdin="no newline")
    assert (r.returncode, r.stdout) == (0, "added eve@fabrikam.example (new tenant "
                                           "fabrikam.example)\n")
    r = webconf("user", "add", base, "alice@contoso.example", stdin="changed\nsecond line\n")
    assert (r.returncode, r.stdout) == (0, "added alice@contoso.example\n")

    r = webconf("user", "list", base)
    assert (r.returncode, r.stdout.split()) == (0, [
        "alice@contoso.example", "bob@contoso.example", "eve@fabrikam.example"])
    r = webconf("user", "list", base, "--tenant", "fabrikam.example")
    assert r.stdout.split() == ["eve@fabrikam.example"]

    directory = await Directory.for_deployment(deployment, create=False)
    try:
        for alg in ("MD5", "SHA-256"):
            assert await directory.lookup_ha1("contoso.example", "alice", alg) == ha1(
                "alice", "contoso.example", "changed", alg)
            assert await directory.lookup_ha1("contoso.example", "bob", alg) == ha1(
                "bob", "contoso.example", "bobs password", alg)
            assert await directory.lookup_ha1("fabrikam.example", "eve", alg) == ha1(
                "eve", "fabrikam.example", "no newline", alg)
    finally:
        await directory.close()

    r = webconf("user", "remove", base, "bob@contoso.example")
    assert (r.returncode, r.stdout) == (0, "removed bob@contoso.example\n")
    r = webconf("user", "remove", base, "bob@contoso.example")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "no such user" in r.stderr

    for path in deployment.var_dir.glob("webconf.db*"):
        assert secret.encode() not in path.read_bytes()


def test_cli_errors(deployment: Config, tmp_path: Path) -> None:
    base = str(deployment.base_dir)
    secret = "never-Echoed-77"
    r = webconf("user", "add", base, "not-an-address", stdin=secret + "\n")
    assert r.returncode == 1
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "user@domain" in r.stderr
    r = webconf("user", "add", base, "alice@bad..example", stdin=secret + "\n")
    assert r.returncode == 1 and "domain" in r.stderr
    r = webconf("user", "add", base, "alice@contoso.example", stdin="\n")
    assert r.returncode == 1 and "empty" in r.stderr and r.stderr.count("\n") == 1
    r = webconf("user", "add", base, "alice@contoso.example", stdin="")
    assert r.returncode == 1 and "empty" in r.stderr
    r = webconf("user", "add", str(tmp_path / "nowhere"), "alice@contoso.example",
                stdin=secret + "\n")
    assert r.returncode == 2 and "webconf init" in r.stderr
    r = webconf("user", "list", base, "--tenant", "bad..example")
    assert r.returncode == 1
    r = webconf("user", "frobnicate", base)
    assert r.returncode == 2  # argparse usage error
    # no command printed or stored the password
    r = webconf("user", "list", base)
    assert (r.returncode, r.stdout) == (0, "")


def test_cli_warns_about_a_tenant_the_certificates_do_not_name(deployment: Config) -> None:
    base = str(deployment.base_dir)
    r = webconf("user", "add", base, "carol@northwind.example", stdin="Zq9-unique\n")
    assert r.returncode == 0
    assert r.stdout == "added carol@northwind.example (new tenant northwind.example)\n"
    assert "warning" in r.stderr and "northwind.example" in r.stderr
    assert f"webconf init {base} --force" in r.stderr
    assert "Zq9" not in r.stderr + r.stdout
    r = webconf("user", "add", base, "alice@contoso.example", stdin="pw\n")
    assert r.stderr == ""


def test_cli_adds_and_removes_several_users_in_one_process(deployment: Config) -> None:
    base = str(deployment.base_dir)
    r = webconf("user", "add", base, "alice@contoso.example", "bob@contoso.example",
                "eve@fabrikam.example", stdin="alice pw\r\nbob pw\neve pw\nnot read\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == ("added alice@contoso.example (new tenant contoso.example)\n"
                        "added bob@contoso.example\n"
                        "added eve@fabrikam.example (new tenant fabrikam.example)\n")
    assert r.stderr == ""

    async def check() -> None:
        directory = await Directory.for_deployment(deployment, create=False)
        try:
            for realm, user, password in [("contoso.example", "alice", "alice pw"),
                                          ("contoso.example", "bob", "bob pw"),
                                          ("fabrikam.example", "eve", "eve pw")]:
                for alg in ("MD5", "SHA-256"):
                    assert await directory.lookup_ha1(realm, user, alg) == ha1(
                        user, realm, password, alg)
        finally:
            await directory.close()

    asyncio.run(check())
    r = webconf("user", "remove", base, "alice@contoso.example", "eve@fabrikam.example")
    assert (r.returncode, r.stdout) == (0, "removed alice@contoso.example\n"
                                           "removed eve@fabrikam.example\n")
    r = webconf("user", "remove", base, "bob@contoso.example", "nobody@contoso.example")
    assert r.returncode == 1
    assert r.stdout == "removed bob@contoso.example\n"
    assert r.stderr.count("\n") == 1 and "no such user nobody@contoso.example" in r.stderr
    assert webconf("user", "list", base).stdout == ""


def test_cli_several_users_all_or_nothing(deployment: Config) -> None:
    """Every address is checked and every password read before the first user is added."""
    base = str(deployment.base_dir)
    r = webconf("user", "add", base, "alice@contoso.example", "bob@contoso.example",
                stdin="only one line\n")
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert "the password for bob@contoso.example is empty" in r.stderr
    assert "only one" not in r.stderr + r.stdout
    r = webconf("user", "add", base, "alice@contoso.example", "not-an-address",
                stdin="a\nb\n")
    assert r.returncode == 1 and "user@domain" in r.stderr
    r = webconf("user", "add", base, "alice@contoso.example", "bob@contoso.example",
                stdin="a\n\n")
    assert r.returncode == 1 and "bob@contoso.example is empty" in r.stderr
    raw = subprocess.run([sys.executable, "-m", "webconf", "user", "add", base,
                          "alice@contoso.example", "carol@contoso.example"],
                         input=b"a\n\xff\n", capture_output=True, cwd=ROOT, timeout=60)
    assert raw.returncode == 1 and b"carol@contoso.example is not valid UTF-8" in raw.stderr
    assert webconf("user", "list", base).stdout == ""


def test_cli_warns_once_per_tenant_the_certificates_do_not_name(deployment: Config) -> None:
    base = str(deployment.base_dir)
    r = webconf("user", "add", base, "carol@northwind.example", "dave@northwind.example",
                "alice@contoso.example", stdin="a\nb\nc\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("warning") == 1 and "northwind.example" in r.stderr


def test_shared_helper_adds_many_users_through_the_command(deployment: Config) -> None:
    """`webconf.deploy.local.add_users`: what the load tester and the benches use."""
    users = [(f"user{i}@contoso.example", f"pw-{i}") for i in range(300)]
    add_users(deployment.base_dir, users)
    listed = webconf("user", "list", str(deployment.base_dir)).stdout.split()
    assert sorted(listed) == sorted(address for address, _ in users)
    remove_users(deployment.base_dir, [address for address, _ in users[:299]])
    listed = webconf("user", "list", str(deployment.base_dir)).stdout.split()
    assert listed == ["user299@contoso.example"]
    with pytest.raises(UserCommandError) as raised:
        remove_users(deployment.base_dir, ["user0@contoso.example"])
    assert raised.value.returncode == 1 and "no such user" in raised.value.stderr
