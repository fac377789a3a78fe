"""`webconf serve DIR`: run the deployment's server processes and supervise them.

Each component is a real child process (`python -m <module> DIR`) that prints
`<name> ready ...` on stdout once it accepts connections; its stderr (JSON log lines) goes
to `DIR/var/log/<name>.log`. The supervisor prints `webconf ready ...` only when every
component is ready. SIGTERM/SIGINT are forwarded so each child drains and exits; if any
child dies, the others are stopped and `serve` exits non-zero. If the supervisor itself
dies (even by SIGKILL), each child gets SIGTERM from the kernel (`PR_SET_PDEATHSIG`, see
lifetime.py): the children are forked by the event loop's thread, which lives as long as
the supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, load_config
from .lifetime import die_with_parent

READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class Component:
    name: str
    module: str


def components() -> list[Component]:
    """The processes of one node. The focus joins once its package provides `__main__`."""
    parts = [Component("wcs", "conferencing")]
    if importlib.util.find_spec("focus.__main__") is not None:
        parts.append(Component("focus", "focus"))
    return parts


async def _start(component: Component, base_dir: Path, log_dir: Path
                 ) -> tuple[asyncio.subprocess.Process, str]:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_dir / f"{component.name}.log",
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", component.module, str(base_dir),
            stdout=asyncio.subprocess.PIPE, stderr=log_fd, stdin=asyncio.subprocess.DEVNULL,
            preexec_fn=die_with_parent(signal.SIGTERM))  # see lifetime.py
    finally:
        os.close(log_fd)
    assert proc.stdout is not None
    while True:
        line = await asyncio.wait_for(proc.stdout.readline(), READY_TIMEOUT_SECONDS)
        if not line:
            code = await proc.wait()
            raise RuntimeError(f"{component.name} exited with {code} before it was ready; "
                               f"see {log_dir / (component.name + '.log')}")
        text = line.decode(errors="replace").strip()
        if text.startswith(f"{component.name} ready"):
            return proc, text


async def _supervise(base_dir: Path) -> int:
    cfg = load_config(base_dir)
    procs: dict[str, asyncio.subprocess.Process] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        for component in components():
            proc, line = await _start(component, cfg.base_dir, cfg.log_dir)
            procs[component.name] = proc
            print(line, flush=True)
            if stop.is_set():
                break
    except (RuntimeError, TimeoutError) as exc:
        print(f"webconf: {exc or 'a component did not become ready in time'}",
              file=sys.stderr, flush=True)
        await _stop_all(procs)
        return 1
    if not stop.is_set():
        print(f"webconf ready https={cfg.public_url} sip=sips:{cfg.public_host}:"
              f"{cfg.focus.sip_port} dir={cfg.base_dir}", flush=True)
    waiters = {asyncio.ensure_future(p.wait()): name for name, p in procs.items()}
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([stopper, *waiters], return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0
    for fut in done:
        if fut in waiters:
            print(f"webconf: {waiters[fut]} exited with {fut.result()}", file=sys.stderr,
                  flush=True)
            exit_code = 1
    await _stop_all(procs)
    stopper.cancel()
    return exit_code


async def _stop_all(procs: dict[str, asyncio.subprocess.Process]) -> None:
    for proc in procs.values():
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_SECONDS)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, help="deployment directory made by `webconf init`")


def run_serve(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(_supervise(args.dir))
    except ConfigError as exc:
        print(f"webconf serve: {exc}", file=sys.stderr)
        return 2
