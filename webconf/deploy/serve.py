"""`webconf serve DIR`: run the deployment's server processes and supervise them.

Each component is a real child process (`python -m <module> DIR`) that prints
`<name> ready ...` on stdout once it accepts connections; its stderr (JSON log lines) goes
to `DIR/var/log/<name>.log`. The supervisor prints `webconf ready ...` only when every
component is ready. A component that fails to start the first time ends `serve`: that is a
broken deployment, not a crash (exit 2 when the child exited 2, i.e. a configuration,
schema or database it cannot start with, else 1). A database that cannot be reached is
found before any child starts: one line, exit 2.

Nodes and workers (issue 10, §8). `--node NAME` names the node (`WEBCONF_SERVER_NODE` for
the children: the focus's lease name). `--workers N` runs N WCS processes, `wcs-1` ...
`wcs-N` (their logs, restarts and metrics labels), on the same public and internal ports
(`wcs.reuse_port`, SO_REUSEPORT); each is supervised on its own. That needs PostgreSQL,
through which the workers share events like separate nodes: with SQLite (one process)
`--workers` above 1 is refused.

Restarts (like nginx's master). A child that dies while the node runs is restarted on the
same ports after a `Backoff` delay, and the restart is logged on stderr and counted in the
state file `DIR/var/run/supervisor.json`, which the WCS exposes as the gauge
`webconf_restarts{component=...}` on /metrics (`read_restarts`). A file rather than an
environment variable, because the WCS must also report the restarts of the focus, which it
outlives. More than `--max-restarts` restarts of one component within `--restart-window`
seconds is a crash loop: `serve` says so in one line and exits 1, except while the database
cannot be reached (a child that exits 2 and a failed probe): an outage is waited out with
the same backoff, however long it lasts. A restarted focus has lost
its in-memory dialogs; their cookies stay valid at the WCS until their `exp` (the focus
leases of issue 10 revoke them).

Stopping. SIGTERM/SIGINT stop the node within `wcs.shutdown_grace_seconds` (plus
`STOP_MARGIN_SECONDS`): the children are stopped in reverse start order, the focus first, so
that it revokes its open dialogs at a WCS that still answers; the WCS then drains in-flight
requests for what is left of the grace (the supervisor writes that deadline into the state
file, `drain_seconds`). Whatever still runs at grace + margin gets SIGKILL. Under systemd
use `KillMode=mixed`, so that the unit's SIGTERM reaches only this process and the order
holds (docs/deployment.md).

If the supervisor itself dies (even by SIGKILL), each child gets SIGTERM from the kernel
(`PR_SET_PDEATHSIG`, see lifetime.py): the children are forked by the event loop's thread,
which lives as long as the supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..retry import Backoff
from .config import Config, ConfigError, load_config
from .db import DatabaseUnavailable, open_engine
from .lifetime import die_with_parent

READY_TIMEOUT_SECONDS = 60.0
STOP_MARGIN_SECONDS = 2.0
"""Beyond `wcs.shutdown_grace_seconds`: what a stopping node may take before SIGKILL."""
MAX_RESTARTS = 5
"""Default of `--max-restarts`: restarts of one component allowed within the window."""
RESTART_WINDOW_SECONDS = 60.0
"""Default of `--restart-window`; a child that stayed up this long also resets its backoff."""
STATE_FILE = Path("run") / "supervisor.json"
"""Under `DIR/var`: the supervisor's pid and restart counts, read by the WCS's /metrics."""
MAX_WORKERS = 64
"""`--workers` above this is refused: more processes than any machine's cores, and each
holds its own database pool (`webconf.deploy.db.open_engine`)."""


@dataclass(frozen=True)
class Component:
    name: str
    """Its log file, restart count and metrics label: `wcs`, `wcs-2`, `focus`."""
    module: str
    label: str = ""
    """The word its ready line starts with (`wcs` for every WCS worker); default `name`."""
    env: tuple[tuple[str, str], ...] = ()
    """Environment added for this child."""

    @property
    def ready_word(self) -> str:
        return self.label or self.name


def _last_line(path: Path, limit: int = 4096) -> str:
    """The last non-empty line of a child's log (its last words before a failed start)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - limit))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class StartFailed(Exception):
    """A child exited, or stayed silent, before it printed its ready line."""

    def __init__(self, message: str, returncode: int | None) -> None:
        super().__init__(message)
        self.returncode = returncode
        """Its exit status, or None when it was killed for not becoming ready in time."""


def components(workers: int = 1) -> list[Component]:
    """The processes of one node, in start order (they stop in reverse: the focus first)."""
    if workers == 1:
        parts = [Component("wcs", "conferencing")]
    else:
        shared = (("WEBCONF_WCS_REUSE_PORT", "1"),)
        parts = [Component(f"wcs-{i}", "conferencing", "wcs", shared)
                 for i in range(1, workers + 1)]
    if importlib.util.find_spec("focus.__main__") is not None:
        parts.append(Component("focus", "focus"))
    return parts


def state_path(cfg: Config) -> Path:
    return cfg.var_dir / STATE_FILE


def _read_state(cfg: Config, supervisor_pid: int | None) -> dict[str, Any]:
    """The state file of the supervisor `supervisor_pid` (default: our parent); empty when
    it is missing, unreadable or another supervisor's (stale)."""
    try:
        state = json.loads(state_path(cfg).read_text())
    except (OSError, ValueError):
        return {}
    wanted = os.getppid() if supervisor_pid is None else supervisor_pid
    return state if isinstance(state, dict) and state.get("pid") == wanted else {}


def read_restarts(cfg: Config, supervisor_pid: int | None = None) -> dict[str, int]:
    """Restarts per component made by our supervisor (`supervisor_pid`: by that one)."""
    try:
        restarts = _read_state(cfg, supervisor_pid).get("restarts", {})
        return {str(name): int(count) for name, count in restarts.items()}
    except (ValueError, TypeError, AttributeError):
        return {}


def drain_seconds(cfg: Config) -> float:
    """How long a stopping WCS may drain: `wcs.shutdown_grace_seconds`, or less when our
    supervisor is stopping the node and the focus's revocations used part of that grace."""
    grace = cfg.wcs.shutdown_grace_seconds
    until = _read_state(cfg, None).get("drain_until")
    if not isinstance(until, int | float):
        return grace
    return max(0.0, min(grace, float(until) - time.time()))


class Supervisor:
    """One node's children: start, watch, restart with backoff, stop in order."""

    def __init__(self, cfg: Config, *, max_restarts: int = MAX_RESTARTS,
                 restart_window_seconds: float = RESTART_WINDOW_SECONDS,
                 workers: int = 1) -> None:
        self.cfg = cfg
        self.workers = workers
        self.parts = components(workers)
        self.max_restarts = max_restarts
        self.restart_window_seconds = restart_window_seconds
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        """The current process of each component started so far."""
        self.restarts = {part.name: 0 for part in self.parts}
        self.started_at: dict[str, float] = {}
        """Monotonic time each component's current process became ready."""
        self.recent_restarts: dict[str, deque[float]] = {
            part.name: deque() for part in self.parts}
        """Monotonic times of each component's restarts within the window."""
        self.backoffs = {part.name: Backoff(initial=0.5, maximum=30.0) for part in self.parts}
        self.stopping = asyncio.Event()
        self.drain_until: float | None = None
        """Wall-clock time by which the WCS must have drained, once the node is stopping."""

    # -- the whole run ------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        self._write_state()
        try:
            return await self._run()
        finally:
            await self._stop_all()
            with contextlib.suppress(OSError):
                state_path(self.cfg).unlink()

    async def _run(self) -> int:
        for part in self.parts:
            if self.stopping.is_set():
                return 0
            try:
                line = await self._start(part)
            except StartFailed as exc:
                _say(str(exc))
                return 2 if exc.returncode == 2 else 1
            if line is None:  # stopping
                return 0
            print(line, flush=True)
        workers = f" workers={self.workers}" if self.workers > 1 else ""
        wss = (f" wss=wss://{self.cfg.public_host}:{self.cfg.focus.wss_port}"
               if self.cfg.focus.wss_port else "")
        print(f"webconf ready https={self.cfg.public_url} sip=sips:{self.cfg.public_host}:"
              f"{self.cfg.focus.sip_port}{wss} dir={self.cfg.base_dir} "
              f"node={self.cfg.node_name}{workers}", flush=True)
        while not self.stopping.is_set():
            dead = await self._wait_for_death()
            for part in dead:
                if not await self._restart(part):
                    return 1
        return 0

    async def _wait_for_death(self) -> list[Component]:
        """The components whose process exited; empty once a stop was asked for."""
        waiters = {asyncio.ensure_future(self.procs[p.name].wait()): p for p in self.parts
                   if p.name in self.procs}
        stopper = asyncio.ensure_future(self.stopping.wait())
        try:
            done, _ = await asyncio.wait([stopper, *waiters],
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in [stopper, *waiters]:
                fut.cancel()
        if self.stopping.is_set():
            return []
        return [waiters[fut] for fut in done if fut in waiters]

    # -- restarts -------------------------------------------------------------------------------
    async def _restart(self, part: Component) -> bool:
        """Restart a dead component until it is ready again; False on a crash loop."""
        name = part.name
        code = self.procs[name].returncode
        now = time.monotonic()
        if now - self.started_at.get(name, now) >= self.restart_window_seconds:
            self.backoffs[name].reset()  # it had been stable: start again from the shortest
        while not self.stopping.is_set():
            recent = self.recent_restarts[name]
            while recent and recent[0] <= time.monotonic() - self.restart_window_seconds:
                recent.popleft()
            if len(recent) >= self.max_restarts:
                _say(f"{name} exited with {code} after {len(recent)} restarts within "
                     f"{self.restart_window_seconds:g} s: crash loop, giving up; see "
                     f"{self.cfg.log_dir / (name + '.log')}")
                return False
            delay = self.backoffs[name].next_delay()
            _say(f"{name} exited with {code}; restarting it in {delay:.1f} s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                break
            recent.append(time.monotonic())
            self.restarts[name] += 1
            self._write_state()
            try:
                line = await self._start(part)
            except StartFailed as exc:
                code = exc.returncode
                if code == 2 and await self._database_down(name):
                    recent.pop()  # an outage, not a crash loop: retried until it ends
                continue
            if line is not None:
                _say(f"{name} restarted (restart {self.restarts[name]}): {line}")
            break
        return True

    async def _database_down(self, name: str) -> bool:
        """True (and said) when the database cannot be reached: why `name` exited 2."""
        try:
            await probe_database(self.cfg.store_url)
        except DatabaseUnavailable as exc:
            _say(f"{name} cannot start: {exc}; retrying until it is back")
            return True
        return False

    def _write_state(self) -> None:
        """Replace the state file at once, so the WCS never reads half of it."""
        path = state_path(self.cfg)
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temp = path.with_suffix(".tmp")
            temp.write_text(json.dumps({"pid": os.getpid(), "restarts": self.restarts,
                                        "drain_until": self.drain_until}))
            os.replace(temp, path)
        except OSError as exc:  # the node runs on; only its restart metric goes stale
            _say(f"cannot write {path}: {exc.strerror or exc}")

    # -- one child ---------------------------------------------------------------------------
    async def _start(self, part: Component) -> str | None:
        """Start `part` and wait for its ready line (returned); None if a stop came first."""
        log_dir = self.cfg.log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        log_fd = os.open(log_dir / f"{part.name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                         0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", part.module, str(self.cfg.base_dir),
                stdout=asyncio.subprocess.PIPE, stderr=log_fd, stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, **dict(part.env)},
                preexec_fn=die_with_parent(signal.SIGTERM))  # see lifetime.py
        finally:
            os.close(log_fd)
        self.procs[part.name] = proc  # from now on `_stop_all` stops it
        ready = asyncio.ensure_future(self._ready_line(part, proc))
        stopper = asyncio.ensure_future(self.stopping.wait())
        try:
            done, _ = await asyncio.wait([ready, stopper], timeout=READY_TIMEOUT_SECONDS,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            ready.cancel()
        if ready in done:
            self.started_at[part.name] = time.monotonic()
            return ready.result()
        if stopper in done:
            return None
        proc.kill()
        await proc.wait()
        raise StartFailed(f"{part.name} did not become ready in {READY_TIMEOUT_SECONDS:g} s",
                          None)

    async def _ready_line(self, part: Component, proc: asyncio.subprocess.Process) -> str:
        assert proc.stdout is not None
        while True:
            line = await proc.stdout.readline()
            if not line:
                code = await proc.wait()
                log_path = self.cfg.log_dir / (part.name + ".log")
                said = _last_line(log_path)  # e.g. the one line naming `webconf db upgrade`
                raise StartFailed(f"{part.name} exited with {code} before it was ready"
                                  f"{': ' + said if said else ''}; see {log_path}", code)
            text = line.decode(errors="replace").strip()
            if text.startswith(f"{part.ready_word} ready"):
                return part.name + text[len(part.ready_word):]  # `wcs-2 ready ...`

    async def _stop_all(self) -> None:
        """SIGTERM the children in reverse start order and wait for them, all within the
        grace plus `STOP_MARGIN_SECONDS`; SIGKILL whatever is left at that deadline. The
        WCS workers stop together, after the focus."""
        loop = asyncio.get_running_loop()
        grace = self.cfg.wcs.shutdown_grace_seconds
        budget = grace + STOP_MARGIN_SECONDS
        deadline = loop.time() + budget
        self.drain_until = time.time() + grace  # the WCS drains in what the focus left
        self._write_state()
        stages: list[list[Component]] = []
        for part in reversed(self.parts):
            if stages and stages[-1][0].module == part.module:
                stages[-1].append(part)
            else:
                stages.append([part])
        for stage in stages:
            await asyncio.gather(*(self._stop_one(part, deadline, budget) for part in stage))

    async def _stop_one(self, part: Component, deadline: float, budget: float) -> None:
        proc = self.procs.get(part.name)
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(proc.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            _say(f"{part.name} did not stop within {budget:g} s; killed")
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


def _say(text: str) -> None:
    print(f"webconf: {text}", file=sys.stderr, flush=True)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="deployment directory made by `webconf init`")
    parser.add_argument("--node", metavar="NAME",
                        help="this node's name among the nodes of one database (sets "
                             "WEBCONF_SERVER_NODE; default: server.node, else the host name)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="WCS processes sharing the public and internal ports "
                             "(SO_REUSEPORT; PostgreSQL only; default 1)")
    parser.add_argument("--max-restarts", type=int, default=MAX_RESTARTS, metavar="N",
                        help="restarts of one server process allowed within the window before "
                             f"serve gives up (default {MAX_RESTARTS})")
    parser.add_argument("--restart-window", type=float, default=RESTART_WINDOW_SECONDS,
                        metavar="SECONDS",
                        help=f"the crash-loop window (default {RESTART_WINDOW_SECONDS:g})")


class UsageError(Exception):
    """Arguments that do not fit the deployment; the message is one line."""


def check_workers(cfg: Config, workers: int) -> None:
    """`UsageError` unless this deployment can run `workers` WCS processes."""
    if not 1 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}, not {workers}")
    if workers == 1:
        return
    if cfg.store_url.startswith("sqlite"):
        raise UsageError(f"--workers {workers} needs a PostgreSQL store: SQLite serves one "
                         "process (see `webconf init --database`)")
    if cfg.wcs.https_port == 0 or cfg.wcs.internal_port == 0:
        raise UsageError(f"--workers {workers} needs fixed wcs.https_port and "
                         "wcs.internal_port, not 0")


async def probe_database(url: str) -> None:
    """Open one connection and close it: `DatabaseUnavailable` (one line) if the database
    cannot be reached, before any child starts. SQLite: nothing to reach."""
    if url.startswith("sqlite"):
        return
    engine = open_engine(url, pool_size=1, max_overflow=0)
    try:
        async with engine.connect():
            pass
    finally:
        await engine.dispose()


async def _supervise(args: argparse.Namespace) -> int:
    if args.node is not None:  # before the config is read: it is `server.node`
        os.environ["WEBCONF_SERVER_NODE"] = args.node
    cfg = load_config(args.dir)
    check_workers(cfg, args.workers)
    await probe_database(cfg.store_url)
    supervisor = Supervisor(cfg, max_restarts=args.max_restarts,
                            restart_window_seconds=args.restart_window, workers=args.workers)
    return await supervisor.run()


def run_serve(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_supervise(args))
    except (ConfigError, UsageError, DatabaseUnavailable) as exc:
        print(f"webconf serve: {exc}", file=sys.stderr)
        return 2
