"""The Kamailio baseline of `bench/sip_joins.py`: Debian's kamailio as a stateless TLS/TCP
responder (`sl_send_reply`: no auth, no state, no DB), configured from bench/kamailio/*.tmpl.

It answers INVITE -> 200 -> ACK -> BYE -> 200, which is the least a SIP server can do for a
join; our focus does a Digest round trip and two WCS calls over mTLS on top of that.
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
             max_connections: int = 8192) -> Iterator[Kamailio]:
    """Run Debian's kamailio in the foreground (-DD -E) as a stateless TLS/TCP responder."""
    workdir = Path(tempfile.mkdtemp(prefix="webconf-kamailio-"))
    run_dir = workdir / "run"
    run_dir.mkdir()
    tls_port, tcp_port = free_port(), free_port()
    (workdir / "tls.cfg").write_text(_fill(KAMAILIO_TEMPLATES / "tls.cfg.tmpl", {
        "CERT": str(certs_dir / "focus.pem"), "KEY": str(certs_dir / "focus.key")}))
    modules = os.environ.get("KAMAILIO_MODULES", KAMAILIO_MODULES)
    (workdir / "kamailio.cfg").write_text(_fill(KAMAILIO_TEMPLATES / "kamailio.cfg.tmpl", {
        "DEBUG": "1", "CHILDREN": str(children_udp), "TCP_CHILDREN": str(tcp_children),
        "MAX_CONNECTIONS": str(max_connections), "TLS_PORT": str(tls_port),
        "TCP_PORT": str(tcp_port), "MODULES": modules, "TLS_CFG": str(workdir / "tls.cfg")}))
    log = (workdir / "kamailio.log").open("wb")
    proc = subprocess.Popen(
        ["kamailio", "-DD", "-E", "-f", str(workdir / "kamailio.cfg"), "-Y", str(run_dir),
         "-w", str(run_dir), "-m", "64", "-M", "8"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)
    kam = Kamailio(proc, tls_port, tcp_port, tcp_children, workdir)
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
