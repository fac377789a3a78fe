"""Issue 15, finding 4: a copy of the database alone signs no one in over SIP.

The directory's HA1s are sealed under `keys/sip-directory.key` (AES-256-GCM, bound to realm,
user and algorithm), and the database files are 0600."""

from __future__ import annotations

import shutil
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from focus.core import FocusCore
from focus.directory import Directory, DirectorySchemaError
from focus.events import Admit, LookupCredentials, Output
from webconf.deploy import keys
from webconf.deploy.config import Config
from webconf.deploy.db import open_engine
from webconf.deploy.local import add_users
from webconf.sip import digest
from webconf.sip.message import parse_auth_params

from .test_focus_core import (
    CONF_URI,
    CONN,
    answer_challenge,
    invite,
    make_core,
    responses,
)

PASSWORD = "alice-pw"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def sql(cfg: Config, statement: str, **params: Any) -> Any:
    """Run one statement on the deployment's database, as someone with access to it (not to
    the keys) could; the first row, if any."""
    engine = open_engine(cfg.store_url)
    try:
        async with engine.begin() as conn:
            result = await conn.execute(text(statement), params)
            return result.first() if result.returns_rows else None
    finally:
        await engine.dispose()


async def row(cfg: Config, user: str) -> tuple[bytes, bytes]:
    """What a thief reads from a copy of the database."""
    md5, sha = await sql(cfg, "SELECT ha1_md5_sealed, ha1_sha256_sealed FROM sip_users "
                              "WHERE username = :user", user=user)
    return bytes(md5), bytes(sha)


async def join_with(core: FocusCore, directory: Directory, auth_ha1: str | None) -> list[Output]:
    """An INVITE answered with `auth_ha1` instead of a password, the HA1s looked up from
    `directory` as the focus server does; the outputs of the second INVITE."""
    [challenge] = responses(core.receive_data(CONN.id, invite(branch="a"), 0.0))
    if auth_ha1 is None:
        auth = answer_challenge(challenge, user="alice", password=PASSWORD)
    else:
        params = parse_auth_params(challenge.headers.get_fields("WWW-Authenticate")[0])[1]
        realm, nonce = params["realm"], params["nonce"]
        response = digest.digest_response("SHA-256", auth_ha1, nonce, "00000001", "abc",
                                          "INVITE", CONF_URI)
        auth = (f'Digest username="alice", realm="{realm}", nonce="{nonce}", '
                f'uri="{CONF_URI}", response="{response}", algorithm=SHA-256, qop=auth, '
                f'nc=00000001, cnonce="abc"')
    out = core.receive_data(CONN.id, invite(branch="b", cseq=2, auth=auth), 0.0)
    result: list[Output] = []
    while out:
        result += [o for o in out if not isinstance(o, LookupCredentials)]
        lookups = [o for o in out if isinstance(o, LookupCredentials)]
        out = []
        for lookup in lookups:
            found = {alg: value for alg in lookup.algorithms
                     if (value := await directory.lookup_ha1(lookup.realm, lookup.username,
                                                             alg)) is not None}
            out += core.credentials_found(lookup.ticket, found, 0.0)
    return result


async def test_the_stored_value_is_not_the_ha1_and_answers_no_challenge(
        deployment: Config) -> None:
    assert mode(keys.directory_key_path(deployment)) == 0o600  # made by `webconf init`
    add_users(deployment.base_dir, [("alice@contoso.example", PASSWORD)])
    md5_sealed, sha_sealed = await row(deployment, "alice")
    ha1_sha = digest.ha1("alice", "contoso.example", PASSWORD, "SHA-256")
    ha1_md5 = digest.ha1("alice", "contoso.example", PASSWORD, "MD5")
    data = b"".join(p.read_bytes() for p in deployment.var_dir.glob("webconf.db*"))
    data += md5_sealed + sha_sealed  # all there is on PostgreSQL, whose files are not ours
    for secret in (ha1_sha, ha1_md5):
        assert secret.encode() not in data and bytes.fromhex(secret) not in data
    assert sha_sealed.hex() != ha1_sha and md5_sealed.hex() != ha1_md5

    directory = await Directory.for_deployment(deployment, create=False)
    try:
        # a thief answering with what the row holds, as if it were the HA1: 401
        for guess in (sha_sealed.hex(), sha_sealed[-32:].hex(), sha_sealed[13:45].hex()):
            core = make_core()
            out = await join_with(core, directory, guess)
            assert [r.status for r in responses(out)] == [401]
            assert not any(isinstance(o, Admit) for o in out)
        # alice, with her password: admitted
        out = await join_with(make_core(), directory, None)
        assert any(isinstance(o, Admit) for o in out)
    finally:
        await directory.close()


async def test_a_database_copy_without_the_keys_unseals_nothing(deployment: Config,
                                                              tmp_path: Path,
                                                              backend: str) -> None:
    add_users(deployment.base_dir, [("alice@contoso.example", PASSWORD)])
    if backend == "sqlite":
        stolen = tmp_path / "stolen.db"
        shutil.copy(deployment.var_dir / "webconf.db", stolen)
        stolen_url = f"sqlite+aiosqlite:///{stolen}"
    else:  # the thief reads the database itself
        stolen_url = deployment.store_url
    thief = await Directory.open(stolen_url, b"t" * 32, create=False)
    try:
        for alg in ("MD5", "SHA-256"):
            assert await thief.lookup_ha1("contoso.example", "alice", alg) is None
    finally:
        await thief.close()


async def test_a_row_moved_to_another_user_or_column_does_not_unseal(
        deployment: Config) -> None:
    add_users(deployment.base_dir, [("alice@contoso.example", PASSWORD),
                                    ("bob@contoso.example", "bob-pw")])
    md5_sealed, sha_sealed = await row(deployment, "alice")
    # the attacker can write the database, not read keys
    await sql(deployment, "UPDATE sip_users SET ha1_md5_sealed = :md5, ha1_sha256_sealed = :sha "
              "WHERE username = 'bob'", md5=md5_sealed, sha=sha_sealed)
    directory = await Directory.for_deployment(deployment, create=False)
    try:
        for alg in ("MD5", "SHA-256"):
            assert await directory.lookup_ha1("contoso.example", "bob", alg) is None
            assert await directory.lookup_ha1("contoso.example", "alice", alg) is not None
    finally:
        await directory.close()
    await sql(deployment, "UPDATE sip_users SET ha1_md5_sealed = :md5, "  # columns swapped
              "ha1_sha256_sealed = :sha WHERE username = 'alice'", md5=sha_sealed, sha=md5_sealed)
    directory = await Directory.for_deployment(deployment, create=False)
    try:
        for alg in ("MD5", "SHA-256"):
            assert await directory.lookup_ha1("contoso.example", "alice", alg) is None
    finally:
        await directory.close()


@pytest.mark.sqlite_only  # SQLite's files; PostgreSQL's are the server's
async def test_database_files_are_0600(deployment: Config) -> None:
    add_users(deployment.base_dir, [("alice@contoso.example", PASSWORD)])
    directory = await Directory.for_deployment(deployment)
    try:
        assert await directory.lookup_ha1("contoso.example", "alice", "MD5") is not None
        files = list(deployment.var_dir.glob("webconf.db*"))
        assert deployment.var_dir / "webconf.db" in files
        for path in files:
            assert mode(path) == 0o600, path
    finally:
        await directory.close()


async def test_an_older_deployment_gets_its_key_on_first_use(deployment: Config) -> None:
    path = keys.directory_key_path(deployment)
    path.unlink()
    directory = await Directory.for_deployment(deployment)
    await directory.close()
    assert mode(path) == 0o600 and len(path.read_bytes()) == 32
    assert keys.load_directory_key(deployment) == path.read_bytes()  # and keeps it


async def test_a_directory_with_ha1s_in_clear_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE sip_users (realm VARCHAR(255), username VARCHAR(255), "
                     "ha1_md5 VARCHAR(32), ha1_sha256 VARCHAR(64), created_at FLOAT)")
    with pytest.raises(DirectorySchemaError, match="in clear"):
        await Directory.open(f"sqlite+aiosqlite:///{db}", b"k" * 32)
