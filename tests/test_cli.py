"""`webconf join|share|fetch` as real subprocesses against a real `webconf serve`."""

from __future__ import annotations

import asyncio
import hashlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.commands import EXIT_CODES
from webconf.deploy.config import Config
from webconf.deploy.init import init_deployment
from webconf.deploy.pki import generate_ca

from .conftest import TENANTS, ServeProcess, free_port
from .test_focus_e2e import USERS, add_users

ROOT = Path(__file__).resolve().parents[1]
JWT_RE = re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.")


def uri(conf: str) -> str:
    return f"sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:{conf}"


def serving_stack(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Config]:
    """One `webconf serve` (focus + WCS subprocesses) with the CLI tests' users, for a
    module-scoped fixture: a module's tests share it, which keeps them fast."""
    cfg = init_deployment(tmp_path_factory.mktemp(name) / "dep", https_port=free_port(),
                          internal_port=free_port(), sip_port=free_port(), tenants=TENANTS)
    asyncio.run(add_users(cfg))
    serve = ServeProcess(cfg.base_dir)
    serve.start()
    try:
        yield cfg
    finally:
        try:
            serve.terminate(20)
        except subprocess.TimeoutExpired:
            serve.kill9()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    yield from serving_stack(tmp_path_factory, "cli")


def _env(user: str | None, password: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("WEBCONF_FOCUS", "WEBCONF_CA", "WEBCONF_PASSWORD")}
    if password is not None:
        env["WEBCONF_PASSWORD"] = password
    elif user is not None:
        env["WEBCONF_PASSWORD"] = USERS[user]
    return env


def cli_args(cfg: Config | None, command: str, conf: str, user: str, *extra: str,
             focus: str | None = None, ca: Path | None = None) -> list[str]:
    args = [sys.executable, "-m", "webconf", command, uri(conf), "--user", user]
    if focus is None and cfg is not None:
        focus = f"127.0.0.1:{cfg.focus.sip_port}"
    if ca is None and cfg is not None:
        ca = cfg.certs_dir / "ca.pem"
    if focus is not None:
        args += ["--focus", focus]
    if ca is not None:
        args += ["--ca", str(ca)]
    return args + list(extra)


def assert_no_secrets(text: str) -> None:
    assert not JWT_RE.search(text), "a cookie leaked into the output"
    for password in USERS.values():
        assert password not in text, "a password leaked into the output"
    assert "wrong-password" not in text


def run(cfg: Config | None, command: str, conf: str, user: str, *extra: str,
        password: str | None = None, stdin: str | None = None, timeout: float = 30,
        **kw: object) -> subprocess.CompletedProcess[str]:
    env = _env(None if stdin is not None else user, password)
    proc = subprocess.run(cli_args(cfg, command, conf, user, *extra, **kw),  # type: ignore[arg-type]
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout,
                          input=stdin if stdin is not None else "")
    assert_no_secrets(proc.stdout + proc.stderr)
    return proc


def shared_items(stdout: str) -> dict[str, tuple[str, str]]:
    """file name -> (item id, sha256) from `share` output."""
    found = re.findall(r"^shared (\S+) .* -> item (\S+) sha256 ([0-9a-f]{64})$", stdout, re.M)
    return {name: (item, sha) for name, item, sha in found}


@pytest.mark.parametrize("command", ["join", "share", "fetch"])
def test_help_mentions_exit_codes(command: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "webconf", command, "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "exit codes" in proc.stdout
    for code, text in EXIT_CODES.items():
        assert re.search(rf"^\s+{code}\s+{re.escape(text)}$", proc.stdout, re.M), text
    assert "--user" in proc.stdout and "--ca" in proc.stdout and "WEBCONF_PASSWORD" in proc.stdout


def test_share_then_fetch_attendee_cannot_share(stack: Config, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 123))
    notes = tmp_path / "notes.txt"
    notes.write_text("agenda: ship it\n")
    proc = run(stack, "share", "CLI1", "alice@contoso.example", str(big), str(notes))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("joined CLI1 as organizer (participant ")
    assert proc.stdout.splitlines()[-1] == "left"
    items = shared_items(proc.stdout)
    assert set(items) == {"big.bin", "notes.txt"}, proc.stdout
    for name, (_item, sha) in items.items():
        assert sha == hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()
    assert "3.0 MiB" in proc.stdout

    # bob fetches everything; his password comes on stdin this time
    out = tmp_path / "bob"
    proc = run(stack, "fetch", "CLI1", "bob@contoso.example", "--save", str(out),
               stdin=USERS["bob@contoso.example"] + "\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("(sha256 verified)") == 2, proc.stdout
    assert f"saved big.bin -> {out / 'big.bin'} (sha256 verified)" in proc.stdout
    for name in ("big.bin", "notes.txt"):
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["big.bin", "notes.txt"]  # no temp files

    # one item by id
    one = tmp_path / "one"
    proc = run(stack, "fetch", "CLI1", "bob@contoso.example", "--item", items["notes.txt"][0],
               "--save", str(one))
    assert proc.returncode == 0, proc.stderr
    assert [p.name for p in one.iterdir()] == ["notes.txt"]

    proc = run(stack, "fetch", "CLI1", "bob@contoso.example", "--item", "NoSuchItem",
               "--save", str(one))
    assert proc.returncode == 1
    assert proc.stderr.startswith("webconf: no item NoSuchItem in conference CLI1")
    assert proc.stdout.splitlines()[-1] == "left"

    # an attendee may not share: 7, and he still leaves
    proc = run(stack, "share", "CLI1", "bob@contoso.example", str(notes))
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.startswith("webconf: forbidden in conference CLI1")
    assert len(proc.stderr.splitlines()) == 1
    assert proc.stdout.splitlines()[-1] == "left"


class Follow:
    """A background `webconf join`, its stdout lines collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, pattern: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no line matching {pattern!r} in {self.lines}"
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, f"exited before {pattern!r}: {self.lines} " \
                f"{self.proc.stderr.read() if self.proc.stderr else ''}"
            self.lines.append(line)
            if re.search(pattern, line):
                return line

    def finish(self, timeout: float = 20) -> tuple[int, str]:
        code = self.proc.wait(timeout)
        self._thread.join(timeout)
        while True:
            line = self._queue.get_nowait() if not self._queue.empty() else None
            if line is None:
                break
            self.lines.append(line)
        err = self.proc.stderr.read() if self.proc.stderr else ""
        return code, err


def test_join_saves_live_shares_and_leaves_on_sigint(stack: Config, tmp_path: Path) -> None:
    first = tmp_path / "first.txt"
    first.write_text("before bob came\n")
    proc = run(stack, "share", "CLI2", "alice@contoso.example", str(first))
    assert proc.returncode == 0, proc.stderr

    save = tmp_path / "bob"
    bob = Follow(cli_args(stack, "join", "CLI2", "bob@contoso.example", "--save", str(save),
                          "--duration", "45"), _env("bob@contoso.example", None))
    try:
        assert bob.wait_for(r"^joined CLI2 as attendee \(participant ")
        bob.wait_for(r"^item\.shared first\.txt 16 B by sip:alice@contoso\.example")
        bob.wait_for(rf"^saved first\.txt -> {re.escape(str(save / 'first.txt'))} "
                     r"\(sha256 verified\)$")

        live = tmp_path / "live.bin"
        live.write_bytes(os.urandom(1024 * 1024 + 7))
        proc = run(stack, "share", "CLI2", "alice@contoso.example", str(live))
        assert proc.returncode == 0, proc.stderr
        bob.wait_for(r"^participant\.joined alice@contoso\.example \(organizer\)$")
        bob.wait_for(r"^item\.shared live\.bin 1\.0 MiB by sip:alice@contoso\.example")
        bob.wait_for(r"^saved live\.bin -> .* \(sha256 verified\)$")
        assert (save / "live.bin").read_bytes() == live.read_bytes()
        assert (save / "first.txt").read_bytes() == first.read_bytes()
        bob.proc.send_signal(signal.SIGINT)
        code, err = bob.finish()
    finally:
        if bob.proc.poll() is None:
            bob.proc.kill()
    assert code == 0, err
    assert bob.lines[-1] == "left", bob.lines
    assert err == ""
    assert_no_secrets("\n".join(bob.lines) + err)


def test_join_duration_elapses(stack: Config, tmp_path: Path) -> None:
    proc = run(stack, "share", "CLI3", "alice@contoso.example", str(Path(__file__)))
    assert proc.returncode == 0, proc.stderr
    started = time.monotonic()
    proc = run(stack, "join", "CLI3", "bob@contoso.example", "--duration", "1.5")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started >= 1.5
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("joined CLI3 as attendee")
    assert lines[1].startswith("item.shared test_cli.py ")
    assert lines[-1] == "left"
    assert not any(line.startswith("saved") for line in lines)  # no --save: nothing saved


def test_wrong_password_exit_3(stack: Config) -> None:
    proc = run(stack, "fetch", "CLI1", "bob@contoso.example", password="wrong-password")
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.startswith("webconf: authentication failed for bob@contoso.example")
    assert proc.stdout == ""


def test_unknown_conference_exit_4(stack: Config) -> None:
    proc = run(stack, "join", "NOPE", "bob@contoso.example")
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr == "webconf: unknown conference NOPE (SIP 404 Conference Not Found)\n"


def test_other_tenant_exit_7(stack: Config) -> None:
    proc = run(stack, "fetch", "CLI1", "eve@fabrikam.example")
    assert proc.returncode == 7, proc.stderr
    assert proc.stderr.startswith("webconf: eve@fabrikam.example may not join conference CLI1")


def test_unreachable_exit_5_quickly() -> None:
    started = time.monotonic()
    proc = run(None, "fetch", "CLI1", "bob@contoso.example",
               focus=f"127.0.0.1:{free_port()}")
    assert proc.returncode == 5, proc.stderr
    assert "refused" in proc.stderr and proc.stderr.startswith("webconf: ")
    assert time.monotonic() - started < 10


def test_foreign_ca_exit_6(stack: Config, tmp_path: Path) -> None:
    cert, _key = generate_ca()
    foreign = tmp_path / "foreign-ca.pem"
    foreign.write_bytes(cert)
    proc = run(stack, "join", "CLI1", "bob@contoso.example", ca=foreign)
    assert proc.returncode == 6, proc.stderr
    assert "--ca" in proc.stderr and "certificate verif" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    proc = run(None, "share", "CLI1", "alice@contoso.example", str(tmp_path / "missing"),
               focus="127.0.0.1:9")
    assert proc.returncode == 2
    assert proc.stderr.startswith("webconf: not a readable file")
    proc = run(None, "fetch", "CLI1", "bob@contoso.example", focus="127.0.0.1:9",
               stdin="")  # no WEBCONF_PASSWORD and nothing on stdin
    assert proc.returncode == 2
    assert "no password" in proc.stderr


def test_tampered_blob_exit_8_nothing_saved(stack: Config, tmp_path: Path) -> None:
    victim = tmp_path / "victim.bin"
    victim.write_bytes(os.urandom(100_000))
    before = {p for p in stack.share_dir.rglob("*") if p.is_file()}
    proc = run(stack, "share", "CLI4", "alice@contoso.example", str(victim))
    assert proc.returncode == 0, proc.stderr
    (blob,) = {p for p in stack.share_dir.rglob("*") if p.is_file()} - before
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    out = tmp_path / "out"
    proc = run(stack, "fetch", "CLI4", "bob@contoso.example", "--save", str(out))
    assert proc.returncode == 8, proc.stderr
    assert proc.stderr.startswith("webconf: integrity check failed: item victim.bin: "
                                  "ciphertext failed authentication (chunk 3)")
    assert list(out.iterdir()) == []  # no plaintext, no temp file
    assert proc.stdout.splitlines()[-1] == "left"
