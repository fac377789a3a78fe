"""The floor of a SIP join in Python: the least an asyncio server can do for one, measured.

    python -m bench.sip_floor [--seconds 8] [--rounds 3] [--json]

Not part of `make bench`: the evidence for issue 11's question "is 0.6 ms of server CPU per
join reachable in Python on this machine?". The same generator (bench/sip_gen.py) as the
`sip` rows drives, on one TLS connection with 32 joins in flight, a responder that does
only what every join needs and nothing a real focus adds:

- uvloop, TLS 1.3 with the deployment's own focus certificate, one `asyncio.Protocol`;
- per request: find the head's end, split its lines, copy Via/From/To/Call-ID/CSeq;
- INVITE without credentials: `401` with a fixed Digest challenge (SHA-256, qop=auth);
  INVITE with credentials: the Digest response checked (HA1 precomputed, two SHA-256 and a
  constant-time compare: what `auth.so` does for Kamailio's Digest row), then `200` with a
  To tag; ACK: nothing; BYE: `200`;
- every answer of one read in one write.

No nonce bookkeeping, no dialog state, no SDP, no grammar checks, no logging, no WCS, no
cookie, no database: a lower bound for the focus alone. The row prints its joins/s and its
CPU per join (utime + stime from /proc over the window, as the `sip` rows), so the focus's
and the WCS's own CPU per join can be set against it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import ssl
import subprocess
import sys
import time

from .common import median, stack
from .sip_gen import ROOT, Measurement, generate
from .sip_joins import CONF_URI, DOMAIN, N_USERS, PASSWORD

REALM = DOMAIN
NONCE = "floor-nonce"
_COPIED = (b"via", b"from", b"call-id", b"cseq")


def _digest_ok(auth: bytes, ha1s: dict[str, str]) -> bool:
    """Check a SHA-256 qop=auth Digest response against the user's HA1."""
    params: dict[str, str] = {}
    for part in auth.decode(errors="replace").partition(" ")[2].split(","):
        name, _, value = part.strip().partition("=")
        params[name.lower()] = value.strip('"')
    ha1 = ha1s.get(params.get("username", ""))
    if ha1 is None:
        return False
    ha2 = hashlib.sha256(f"INVITE:{params.get('uri', '')}".encode()).hexdigest()
    expected = hashlib.sha256(":".join((
        ha1, params.get("nonce", ""), params.get("nc", ""), params.get("cnonce", ""),
        params.get("qop", ""), ha2)).encode()).hexdigest()
    return hmac.compare_digest(expected, params.get("response", ""))


class _Floor(asyncio.Protocol):
    def __init__(self, ha1s: dict[str, str]) -> None:
        self.ha1s = ha1s
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.tags = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            lines = bytes(buf[:end]).split(b"\r\n")
            length = 0
            copied: list[bytes] = []
            to = b""
            auth = b""
            for line in lines[1:]:
                name = line.partition(b":")[0].strip().lower()
                if name in _COPIED:
                    copied.append(line)
                elif name == b"to":
                    to = line
                elif name == b"content-length":
                    length = int(line.partition(b":")[2])
                elif name == b"authorization":
                    auth = line.partition(b":")[2].strip()
            if len(buf) < end + 4 + length:
                break
            del buf[:end + 4 + length]
            method = lines[0].partition(b" ")[0]
            if method == b"ACK":
                continue
            head = b"\r\n".join(copied)
            if method == b"INVITE" and not auth:
                out.append(b"SIP/2.0 401 Unauthorized\r\n" + head + b"\r\n" + to
                           + b";tag=f\r\nWWW-Authenticate: Digest realm=\"" + REALM.encode()
                           + b"\", nonce=\"" + NONCE.encode() + b"\", algorithm=SHA-256, "
                           b"qop=\"auth\"\r\nContent-Length: 0\r\n\r\n")
            elif method == b"INVITE":
                if not _digest_ok(auth, self.ha1s):
                    out.append(b"SIP/2.0 403 Forbidden\r\n" + head + b"\r\n" + to
                               + b";tag=f\r\nContent-Length: 0\r\n\r\n")
                    continue
                self.tags += 1
                out.append(b"SIP/2.0 200 OK\r\n" + head + b"\r\n" + to + b";tag=t%d\r\n"
                           b"Contact: <sip:floor@127.0.0.1;transport=tls>\r\n"
                           b"Content-Length: 0\r\n\r\n" % self.tags)
            else:
                out.append(b"SIP/2.0 200 OK\r\n" + head + b"\r\n" + to
                           + b"\r\nContent-Length: 0\r\n\r\n")
        if out and self.transport is not None:
            self.transport.write(b"".join(out))


def serve(port: int, cert: str, key: str) -> None:
    """The responder's process: listen on 127.0.0.1:`port` until killed."""
    import uvloop

    ha1s = {f"u{i}": hashlib.sha256(f"u{i}:{REALM}:{PASSWORD}".encode()).hexdigest()
            for i in range(N_USERS)}
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: _Floor(ha1s), "127.0.0.1", port, ssl=ctx)
        print("ready", flush=True)
        await server.serve_forever()

    uvloop.run(main())


def measure(seconds: float, rounds: int) -> list[Measurement]:
    """Start a deployment (for its certificates) and the responder; drive it `rounds` times."""
    from webconf.deploy.lifetime import die_with_parent

    with stack() as st:
        certs = st.cfg.certs_dir
        port = st.cfg.focus.sip_port + 17  # beside the deployment's ports, unused by it
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.sip_floor", "--serve", str(port),
             str(certs / "focus.pem"), str(certs / "focus.key")],
            stdout=subprocess.PIPE, cwd=ROOT, preexec_fn=die_with_parent(),
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
            return [generate(
                host="127.0.0.1", port=port, tls=True, ca_file=str(certs / "ca.pem"),
                server_hostname=DOMAIN, mode="reused", concurrency=32, processes=1,
                users=[f"u{i}" for i in range(N_USERS)], password=PASSWORD, domain=DOMAIN,
                conference_uri=CONF_URI, warmup=1.0, duration=seconds,
                server_pids=lambda: {"floor": [proc.pid]}, tag=f"floor{r}")
                for r in range(rounds)]
        finally:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sip_floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve", nargs=3, metavar=("PORT", "CERT", "KEY"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1], args.serve[2])
        return
    runs = measure(args.seconds, args.rounds)
    summary = {
        "joins_per_s": round(median([m.rate for m in runs]), 1),
        "server_cpu_ms_per_join": median([m.server_cpu_ms_per_join or 0.0 for m in runs]),
        "failed": sum(m.failed for m in runs), "rounds": [m.brief() for m in runs],
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"Python floor (one TLS connection, 32 in flight): "
              f"{summary['joins_per_s']:,} joins/s, "
              f"{summary['server_cpu_ms_per_join']} ms server CPU per join, "
              f"{summary['failed']} failed")


if __name__ == "__main__":
    main()
