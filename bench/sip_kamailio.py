"""The Kamailio baselines of `bench/sip_joins.py`: Debian's kamailio as a stateless TLS/TCP
responder (`sl_send_reply`: no state, no DB), configured from bench/kamailio/*.tmpl.

- stateless 200 (`digest=None`): INVITE -> 200 -> ACK -> BYE -> 200, the least a SIP server
  can do for a join;
- with Digest (`digest=(realm, password)`): INVITE -> 401 (auth.so `www_challenge`, qop=auth,
  SHA-256) -> ACK -> INVITE with Digest (`pv_www_authenticate` against one fixed password)
  -> 200 -> ACK -> BYE -> 200: the Digest round trip our focus does too.

Our focus does, on top of the Digest variant, a directory lookup and two WCS calls (admit,
revoke) that commit to the database.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from webconf.deploy.lifetime import die_with_parent

from .common import children, free_port, stop_baseline

KAMAILIO_TEMPLATES = Path(__file__).resolve().parent / "kamailio"
KAMAILIO_MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules/"
"""Debian's module directory; `KAMAILIO_MODULES` in the environment overrides it."""


@dataclass
class Kamailio:
    proc: subprocess.Popen[bytes]
    tls_port: int
    tcp_port: int
    tcp_children: int
    workdir: Path
    digest: bool = False

    def pids(self) -> list[int]:
        return [self.proc.pid, *children(self.proc.pid)]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.workdir / "kamailio.log").read_text(errors="replace")[-1500:]
        return ""


def _fill(template: Path, values: dict[str, str]) -> str:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    if re.search(r"@[A-Z_]+@", text):
        raise ValueError(f"unfilled placeholder in {template.name}")
    return text


@contextlib.contextmanager
def kamailio(certs_dir: Path, *, tcp_children: int, children_udp: int = 1,
             max_connections: int = 8192,
             digest: tuple[str, str] | None = None) -> Iterator[Kamailio]:
    """Run Debian's kamailio in the foreground (-DD -E) as a stateless TLS/TCP responder;
    `digest=(realm, password)` makes it challenge every INVITE and check the answer."""
    workdir = Path(tempfile.mkdtemp(prefix="webconf-kamailio-"))
    run_dir = workdir / "run"
    run_dir.mkdir()
    tls_port, tcp_port = free_port(), free_port()
    (workdir / "tls.cfg").write_text(_fill(KAMAILIO_TEMPLATES / "tls.cfg.tmpl", {
        "CERT": str(certs_dir / "focus.pem"), "KEY": str(certs_dir / "focus.key")}))
    modules = os.environ.get("KAMAILIO_MODULES", KAMAILIO_MODULES)
    realm, password = digest or ("", "")
    if any(c in realm + password for c in '"\\\n'):
        raise ValueError("realm and password go into a quoted config string")
    (workdir / "kamailio.cfg").write_text(_fill(KAMAILIO_TEMPLATES / "kamailio.cfg.tmpl", {
        "DEFINES": "#!define WITH_DIGEST" if digest else "", "REALM": realm,
        "PASSWORD": password, "DEBUG": "1", "CHILDREN": str(children_udp),
        "TCP_CHILDREN": str(tcp_children),
        "MAX_CONNECTIONS": str(max_connections), "TLS_PORT": str(tls_port),
        "TCP_PORT": str(tcp_port), "MODULES": modules, "TLS_CFG": str(workdir / "tls.cfg")}))
    log = (workdir / "kamailio.log").open("wb")
    proc = subprocess.Popen(
        ["kamailio", "-DD", "-E", "-f", str(workdir / "kamailio.cfg"), "-Y", str(run_dir),
         "-w", str(run_dir), "-m", "64", "-M", "8"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # SIGTERM to kamailio's main stops its children too
        preexec_fn=die_with_parent())  # dies with the bench (webconf/deploy/lifetime.py)
    kam = Kamailio(proc, tls_port, tcp_port, tcp_children, workdir, digest is not None)
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"kamailio exited with {proc.returncode}: {kam.log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", tls_port), 0.5).close()
                socket.create_connection(("127.0.0.1", tcp_port), 0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"kamailio did not listen: {kam.log_tail()}") from None
                time.sleep(0.1)
        yield kam
    finally:
        stop_baseline(proc, 10)
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
