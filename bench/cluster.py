"""Nodes of one deployment on PostgreSQL, for the scale-out rows (bench/scaleout.py).

What docs/deployment.md ("Many nodes") tells an operator to do, on loopback and without a
balancer (the bench talks to each node's own ports, to know which node served what):
- `init_deployment(DIR, database=URL, share=SHARE)` once (`webconf init DIR --database URL
  --share SHARE`), users added once (the directory lives in the database);
- the first node serves DIR itself; every further node is a copy of DIR (without `var/` and
  the CA's private key) whose ports differ by `WEBCONF_FOCUS_SIP_PORT`,
  `WEBCONF_WCS_HTTPS_PORT` and `WEBCONF_WCS_INTERNAL_PORT`;
- each node is `webconf serve COPY --node NAME [--workers N]` (`local.ServeProcess`: its own
  process group, dying with this process through `PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from webconf.deploy.config import Config
from webconf.deploy.init import init_deployment
from webconf.deploy.local import ServeProcess, add_users, free_port

from .common import children, cmdline, pg_database

NODE_ENV = {
    "WEBCONF_FOCUS_MAX_CONNECTIONS_PER_SOURCE": "1000000",
    "WEBCONF_FOCUS_MAX_CONNECTIONS": "1000000",
    "WEBCONF_WCS_SHUTDOWN_GRACE_SECONDS": "3",
}
"""Every node's settings: a load generator is one source; a bench node stops quickly."""


@dataclass
class Node:
    """One `webconf serve` of the deployment directory or of a copy of it."""

    name: str
    base_dir: Path
    sip_port: int
    https_port: int
    internal_port: int
    env: dict[str, str]
    serve: ServeProcess | None = None
    workers: int = 1

    @property
    def url(self) -> str:
        """This node's public HTTPS address."""
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def internal_url(self) -> str:
        return f"https://127.0.0.1:{self.internal_port}"

    def start(self, *, workers: int = 1, timeout: float = 90.0) -> None:
        """`webconf serve DIR --node NAME [--workers N]` until it prints `webconf ready`."""
        self.stop()
        args = ["--node", self.name] + (["--workers", str(workers)] if workers > 1 else [])
        self.serve = ServeProcess(self.base_dir, self.env, args=args, stop_timeout=20,
                                  stderr_path=self.base_dir.parent / f"{self.name}.serve.log")
        self.workers = workers
        self.serve.start(timeout)

    def stop(self) -> None:
        if self.serve is not None:
            self.serve.stop()
            self.serve = None

    def pids(self) -> dict[str, list[int]]:
        """The node's server processes by kind: `wcs` (one per worker) and `focus`."""
        out: dict[str, list[int]] = {"wcs": [], "focus": []}
        if self.serve is None:
            return out
        for child in children(self.serve.pid):
            line = cmdline(child)
            if "-m conferencing" in line:
                out["wcs"].append(child)
            elif "-m focus" in line:
                out["focus"].append(child)
        return out


@dataclass
class Cluster:
    """A deployment on its own fresh PostgreSQL database and a shared share directory."""

    workdir: Path
    database_url: str
    cfg: Config
    """The deployment as `init` wrote it: the first node's ports, certificates, keys."""
    nodes: dict[str, Node] = field(default_factory=dict)

    def node(self, name: str) -> Node:
        """The node `name`, made on first use: the first one serves DIR itself, the others
        a copy of it on their own free ports (not started)."""
        if name in self.nodes:
            return self.nodes[name]
        if not self.nodes:
            made = Node(name, self.cfg.base_dir, self.cfg.focus.sip_port,
                        self.cfg.wcs.https_port, self.cfg.wcs.internal_port, dict(NODE_ENV))
        else:
            copy = self.workdir / name / "dep"
            shutil.copytree(self.cfg.base_dir, copy, symlinks=True,  # keys stay 0600
                            ignore=self._not_copied)
            sip, https, internal = free_port(), free_port(), free_port()
            made = Node(name, copy, sip, https, internal, {
                **NODE_ENV, "WEBCONF_FOCUS_SIP_PORT": str(sip),
                "WEBCONF_WCS_HTTPS_PORT": str(https),
                "WEBCONF_WCS_INTERNAL_PORT": str(internal)})
        self.nodes[name] = made
        return made

    def _not_copied(self, directory: str, names: list[str]) -> set[str]:
        """What a node's copy leaves out: the first node's run-time files and the CA key."""
        if Path(directory) != self.cfg.base_dir:
            return set()
        return {"var", "ca-private"} & set(names)

    def stop(self) -> None:
        for node in reversed(list(self.nodes.values())):
            node.stop()


@contextlib.contextmanager
def cluster(*, users: Iterable[tuple[str, str]] = (),
            tenants: Sequence[str] = ("contoso.example",),
            prefix: str = "webconf-bench-pg-") -> Iterator[Cluster]:
    """A fresh database, `init` on it (free loopback ports, a share in the temp dir), the
    users; no node started yet. Every node is stopped, the database dropped and the temp
    dir removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        with pg_database() as url:
            cfg = init_deployment(workdir / "dep", sip_port=free_port(),
                                  https_port=free_port(), internal_port=free_port(),
                                  tenants=list(tenants), database=url,
                                  share=str(workdir / "share"))
            pairs = list(users)
            if pairs:
                add_users(cfg.base_dir, pairs)
            made = Cluster(workdir, url, cfg)
            try:
                yield made
            finally:
                made.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
