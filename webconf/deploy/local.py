"""A deployment on this machine, for the tests, the demo, the load tester and the benches.

One copy of what each of them needs (issue 9), built on the real operator commands:
- `free_port`: a loopback port, never the same one twice in this process;
- `create_deployment`: `init_deployment` on free loopback ports;
- `add_users` / `remove_users`: `python -m webconf user add|remove DIR ADDR...` with the
  passwords piped in, one process for all users (so the client wing needs nothing of the
  focus, and the wings still meet only on the wire);
- `ServeProcess`: `python -m webconf serve DIR` in its own process group, ready when it
  prints `webconf ready`, stopped with SIGTERM then SIGKILL of the group;
- `LocalDeployment`: the three above in a temp dir that is removed afterwards.

Everything is synchronous, with `a*` variants and context managers for asyncio callers.

Servers die with their parent (issue 9, item 6): `webconf serve` is started with
`PR_SET_PDEATHSIG` (lifetime.py), and it does the same for its focus and WCS. Linux sends
that signal when the forking *thread* exits, so every server is forked by one daemon thread
that lives as long as this process (`_in_spawner`), whichever thread or loop asked.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

from .config import Config
from .init import init_deployment
from .lifetime import die_with_parent

T = TypeVar("T")

USERS_PER_COMMAND = 2000
"""Addresses per `webconf user` process: keeps the argument list far below ARG_MAX."""

# -- ports --------------------------------------------------------------------------------------

_HANDED_OUT: set[int] = set()
_HANDED_OUT_LOCK = threading.Lock()


def free_port(host: str = "127.0.0.1") -> int:
    """A free port on `host`, never the same one twice in this process (the kernel may
    hand a just-closed ephemeral port out again at once on a busy machine)."""
    while True:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        with _HANDED_OUT_LOCK:
            if port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                return port


def create_deployment(base_dir: Path, *, tenants: Sequence[str] | None = None,
                      host: str = "127.0.0.1") -> Config:
    """`webconf init` into `base_dir` on four free ports of `host` (SIP, HTTPS, internal,
    SIP over WebSocket); `DeployError` as init."""
    return init_deployment(base_dir, host=host, sip_port=free_port(host),
                           https_port=free_port(host), internal_port=free_port(host),
                           wss_port=free_port(host),
                           tenants=list(tenants) if tenants is not None else None)


# -- users ----------------------------------------------------------------------------------------

class UserCommandError(Exception):
    """`webconf user` failed; `returncode` and `stderr` are what the command gave."""

    def __init__(self, action: str, returncode: int, stderr: str) -> None:
        super().__init__(f"webconf user {action} exited {returncode}: {stderr.strip()}")
        self.action = action
        self.returncode = returncode
        self.stderr = stderr


def _user_command(action: str, base_dir: Path, addresses: list[str], stdin: str,
                  env: Mapping[str, str] | None) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "webconf", "user", action, str(base_dir), *addresses],
        input=stdin, capture_output=True, text=True, check=False,
        env={**os.environ, **(env or {})})
    if result.returncode:
        raise UserCommandError(action, result.returncode, result.stderr)


def _batches(items: Sequence[T]) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), USERS_PER_COMMAND):
        yield items[start:start + USERS_PER_COMMAND]


def add_users(base_dir: Path, users: Iterable[tuple[str, str]],
              env: Mapping[str, str] | None = None) -> None:
    """Add (address, password) pairs with `webconf user add`, one password a stdin line."""
    pairs = list(users)
    for batch in _batches(pairs):
        if any("\n" in password or "\r" in password for _, password in batch):
            raise ValueError("a password holds a line break")
        _user_command("add", base_dir, [address for address, _ in batch],
                      "".join(f"{password}\n" for _, password in batch), env)


def remove_users(base_dir: Path, addresses: Iterable[str],
                 env: Mapping[str, str] | None = None) -> None:
    """Remove users with `webconf user remove`; `UserCommandError` if one did not exist."""
    for batch in _batches(list(addresses)):
        _user_command("remove", base_dir, list(batch), "", env)


async def aadd_users(base_dir: Path, users: Iterable[tuple[str, str]],
                     env: Mapping[str, str] | None = None) -> None:
    await asyncio.to_thread(add_users, base_dir, list(users), env)


async def aremove_users(base_dir: Path, addresses: Iterable[str],
                        env: Mapping[str, str] | None = None) -> None:
    await asyncio.to_thread(remove_users, base_dir, list(addresses), env)


# -- the forking thread ---------------------------------------------------------------------------

_spawn_queue: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
    queue.SimpleQueue())
_spawner_pid = 0
_spawner_lock = threading.Lock()


def _spawner_loop() -> None:
    while True:
        work, future = _spawn_queue.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            future.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            future.set_exception(exc)


def _in_spawner(work: Callable[[], T]) -> T:
    """Run `work` (a fork) on the process-long spawner thread and return its result."""
    global _spawner_pid
    with _spawner_lock:
        if _spawner_pid != os.getpid():  # first use, or we are a forked copy without it
            threading.Thread(target=_spawner_loop, name="webconf-spawner", daemon=True).start()
            _spawner_pid = os.getpid()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    _spawn_queue.put((work, future))
    return future.result()


# -- webconf serve --------------------------------------------------------------------------------

_LIVE_GROUPS: set[int] = set()
"""Process groups of the `webconf serve` we started and have not yet seen stop."""


def kill_leftover_servers() -> None:
    """Last resort (interrupt, crash): SIGKILL every serve process group still live."""
    for pgid in list(_LIVE_GROUPS):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        _LIVE_GROUPS.discard(pgid)


class ServeNotReady(RuntimeError):
    """`webconf serve` exited, or stayed silent, before it printed `webconf ready`."""

    def __init__(self, returncode: int | None, stderr: str, timeout: float) -> None:
        if returncode is None:
            text = f"webconf serve did not become ready in {timeout:.0f} s"
        else:
            text = f"webconf serve exited ({returncode}) before it was ready: {stderr[-800:]}"
        super().__init__(text)
        self.returncode = returncode
        """The exit status, or None when it was still running at the deadline."""
        self.stderr = stderr
        """Its stderr so far, stripped."""
        self.timeout = timeout


class ServeProcess:
    """`python -m webconf serve DIR` as a child in its own process group.

    stdout is read by a thread into `lines` (so the pipe never fills); stderr goes to
    `stderr_path` (appended) or to an unnamed temp file, readable with `stderr_text()`.
    """

    def __init__(self, base_dir: Path, env: Mapping[str, str] | None = None, *,
                 stderr_path: Path | None = None, stop_timeout: float = 30.0,
                 args: Sequence[str] = ()) -> None:
        self.base_dir = Path(base_dir)
        self.env = {**os.environ, **(env or {})}
        self.stderr_path = stderr_path
        self.stop_timeout = stop_timeout
        self.args = list(args)
        """Extra arguments after `webconf serve DIR`."""
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        """Every stdout line so far, with its line end."""
        self.ready_line: str | None = None
        self._stderr_file: IO[bytes] | None = None
        self._changed = threading.Condition()
        self._eof = False
        self._reader: threading.Thread | None = None
        self._watchers: list[Callable[[], None]] = []
        """Called (from the reader thread) when ready or at the end of stdout."""

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    # -- start ----------------------------------------------------------------------------
    def _launch(self) -> None:
        if self.proc is not None:
            raise RuntimeError("this ServeProcess was started already")
        if self.stderr_path is not None:
            stderr_fd = os.open(self.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        else:
            self._stderr_file = tempfile.TemporaryFile()  # kept until stop
            stderr_fd = os.dup(self._stderr_file.fileno())
        try:
            def popen() -> subprocess.Popen[str]:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "webconf", "serve", str(self.base_dir), *self.args],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_fd,
                    text=True, env=self.env, start_new_session=True,
                    preexec_fn=die_with_parent(signal.SIGTERM))  # see lifetime.py
                _LIVE_GROUPS.add(proc.pid)
                return proc

            self.proc = _in_spawner(popen)
        finally:
            os.close(stderr_fd)
        self._reader = threading.Thread(target=self._read_stdout, name="webconf-serve-stdout",
                                        daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                if self.ready_line is None and line.startswith("webconf ready"):
                    self.ready_line = line.strip()
                    self._notify()
        with self._changed:
            self._eof = True
            self._notify()

    def _notify(self) -> None:
        self._changed.notify_all()
        for wake in self._watchers:
            wake()

    def _settled(self) -> bool:
        return self.ready_line is not None or self._eof

    def _not_ready(self, timeout: float) -> ServeNotReady:
        assert self.proc is not None
        returncode = self.proc.poll()
        if returncode is None and self._eof:
            with contextlib.suppress(subprocess.TimeoutExpired):
                returncode = self.proc.wait(5)
        return ServeNotReady(returncode, self.stderr_text().strip(), timeout)

    def start(self, timeout: float = 60.0) -> None:
        """Start and wait for `webconf ready`; on failure stop it and raise `ServeNotReady`."""
        self._launch()
        with self._changed:
            self._changed.wait_for(self._settled, timeout)
        if self.ready_line is None:
            error = self._not_ready(timeout)
            self.stop()
            raise error

    async def astart(self, timeout: float = 60.0) -> None:
        """`start` for asyncio code: never blocks the loop, and a cancellation leaves no
        waiting thread behind (the caller stops the server)."""
        loop = asyncio.get_running_loop()
        settled = asyncio.Event()

        def wake() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settled.set)

        self._watchers.append(wake)
        await asyncio.to_thread(self._launch)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(settled.wait(), timeout)
        if self.ready_line is None:
            error = self._not_ready(timeout)
            await self.astop()
            raise error

    def stderr_text(self) -> str:
        """What the supervisor wrote on stderr so far (its log file's content if given)."""
        try:
            if self._stderr_file is not None:
                self._stderr_file.seek(0)
                return self._stderr_file.read().decode(errors="replace")
            if self.stderr_path is not None:
                return self.stderr_path.read_text(errors="replace")
        except (OSError, ValueError):
            pass
        return ""

    # -- stop -----------------------------------------------------------------------------
    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit status; `subprocess.TimeoutExpired` if it hangs."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        _LIVE_GROUPS.discard(self.proc.pid)
        return code

    def kill9(self) -> None:
        """SIGKILL the whole process group: supervisor and servers die at once."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        _LIVE_GROUPS.discard(self.proc.pid)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM, wait (`stop_timeout`), then SIGKILL the group and any straggler in it;
        the exit status (None if never started). Safe to call twice."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        # The supervisor stops its children; anything of its group still alive is a straggler.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        _LIVE_GROUPS.discard(proc.pid)
        if self._reader is not None:
            self._reader.join(5)
        if self._stderr_file is not None:
            self._stderr_file.close()
            self._stderr_file = None
        return proc.returncode

    async def astop(self, timeout: float | None = None) -> int | None:
        return await asyncio.to_thread(self.stop, timeout)

    def __enter__(self) -> ServeProcess:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> ServeProcess:
        await self.astart()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.astop()


# -- all of it in a temp dir ----------------------------------------------------------------------

class LocalDeployment:
    """A throw-away deployment: a temp dir, `init` on free ports, users, `serve`; `stop`
    stops the servers and removes the directory (unless `keep`).

    The deployment lives in `workdir / "dep"`; with `serve_log` the supervisor's stderr goes
    to `workdir / "serve.log"`. `tcp_sip` also opens a plain-TCP SIP port on the focus.
    """

    def __init__(self, *, tenants: Sequence[str] | None = None,
                 users: Iterable[tuple[str, str]] = (), env: Mapping[str, str] | None = None,
                 prefix: str = "webconf-", tcp_sip: bool = False, serve_log: bool = False,
                 ready_timeout: float = 60.0, stop_timeout: float = 30.0,
                 keep: bool = False) -> None:
        self.tenants = list(tenants) if tenants is not None else None
        self.users = list(users)
        self.env = dict(env or {})
        self.prefix = prefix
        self.tcp_sip = tcp_sip
        self.serve_log = serve_log
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.keep = keep
        self.workdir: Path | None = None
        self.cfg: Config | None = None
        self.serve: ServeProcess | None = None

    @property
    def config(self) -> Config:
        assert self.cfg is not None, "not started"
        return self.cfg

    def prepare(self) -> Config:
        """Make the directory, the deployment and the users; no server yet."""
        self.workdir = Path(tempfile.mkdtemp(prefix=self.prefix))
        self.cfg = create_deployment(self.workdir / "dep", tenants=self.tenants)
        if self.users:
            add_users(self.cfg.base_dir, self.users, self.env)
        if self.tcp_sip:
            self.cfg.focus.tcp_port = free_port()
            self.env["WEBCONF_FOCUS_TCP_PORT"] = str(self.cfg.focus.tcp_port)
        return self.cfg

    def _serve_process(self, cfg: Config) -> ServeProcess:
        log = self.workdir / "serve.log" if self.serve_log and self.workdir else None
        self.serve = ServeProcess(cfg.base_dir, self.env, stop_timeout=self.stop_timeout,
                                  stderr_path=log)
        return self.serve

    def run(self) -> None:
        """`webconf serve` the prepared deployment until ready (`ServeNotReady`)."""
        self._serve_process(self.config).start(self.ready_timeout)

    def start(self) -> Config:
        """`prepare`, then `run`; cleans up if any step fails."""
        try:
            cfg = self.prepare()
            self.run()
        except BaseException:
            self.stop()
            raise
        return cfg

    def stop(self) -> None:
        if self.serve is not None:
            self.serve.stop()
        if self.workdir is not None and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def aprepare(self) -> Config:
        return await asyncio.to_thread(self.prepare)

    async def arun(self) -> None:
        await self._serve_process(self.config).astart(self.ready_timeout)

    async def astart(self) -> Config:
        try:
            cfg = await self.aprepare()
            await self.arun()
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self.stop))
            raise
        return cfg

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> LocalDeployment:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> LocalDeployment:
        await self.astart()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.astop()
