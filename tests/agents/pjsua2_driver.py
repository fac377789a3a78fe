"""Drive pjsua2 (PyPI `pjsua2-python`) through one conference join, in its own process.

pjsua2 owns native threads and sockets and can crash the interpreter, so the tests run this
script as a subprocess. It speaks JSON lines on stdout (pjsip's own log goes to stderr):

1. `{"event": "version", "pjsip": "2.15.1"}` right away;
2. `{"event": "answered", "status": 200, "content_type": ..., "body": ..., "tls": ...}` once
   the INVITE has a final response (`body` is the response's body, `tls` the negotiated
   protocol as pjsip reports it, e.g. "TLSv1.2");
3. it then waits for a line `hangup` on stdin (or `--hold` seconds), sends BYE and reports
   `{"event": "ended", "state": "DISCONNECTED", "status": ...}`, then exits.

usage: pjsua2_driver.py --port P --ca CA.pem --user alice@contoso.example --password PW
                        --uri 'sip:alice@contoso.example;gruu;opaque=app:conf:focus:id:X'
                        [--tls 1.2|1.3] [--hold SECONDS] [--accept VALUE]
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
import time
from typing import Any

import pjsua2 as pj

# The real stdout carries only our JSON lines; everything native writes goes to stderr.
_OUT = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)


def emit(**event: Any) -> None:
    _OUT.write(json.dumps(event) + "\n")
    _OUT.flush()


TLS_PROTOCOLS = [  # pj_ssl_sock_proto bits, newest first
    ("TLSv1.3", pj.PJ_SSL_SOCK_PROTO_TLS1_3), ("TLSv1.2", pj.PJ_SSL_SOCK_PROTO_TLS1_2),
    ("TLSv1.1", pj.PJ_SSL_SOCK_PROTO_TLS1_1), ("TLSv1", pj.PJ_SSL_SOCK_PROTO_TLS1)]


class Endpoint(pj.Endpoint):
    def __init__(self) -> None:
        super().__init__()
        self.tls: dict[str, Any] = {}

    def onTransportState(self, prm: Any) -> None:
        info = prm.tlsInfo
        if info is not None and not info.isEmpty() and info.established:
            protocol = next((name for name, bit in TLS_PROTOCOLS if info.protocol & bit),
                            str(info.protocol))
            self.tls = {"protocol": protocol, "cipher": info.cipherName,
                        "verify_status": info.verifyStatus,
                        "verify_msgs": list(info.verifyMsgs)}


class Call(pj.Call):
    def __init__(self, account: pj.Account) -> None:
        super().__init__(account)
        self.final: dict[str, Any] | None = None
        self.state = pj.PJSIP_INV_STATE_NULL
        self.state_text = "NULL"
        self.last_status = 0

    def onCallTsxState(self, prm: Any) -> None:
        """Catch the INVITE's final response with its raw message (body included)."""
        event = prm.e
        if event.type != pj.PJSIP_EVENT_TSX_STATE or self.final is not None:
            return
        tsx = event.body.tsxState
        if tsx.type != pj.PJSIP_EVENT_RX_MSG:
            return
        whole = tsx.src.rdata.wholeMsg
        first, _, _ = whole.partition("\r\n")
        if not first.startswith("SIP/2.0 ") or " INVITE" not in _header(whole, "CSeq"):
            return
        status = int(first.split()[1])
        if status < 200 or status in (401, 407):
            return  # provisional, or the Digest challenge pjsip answers by itself
        head, _, body = whole.partition("\r\n\r\n")
        self.final = {"status": status, "reason": first.split(" ", 2)[2],
                      "content_type": _header(head, "Content-Type"),
                      "contact": _header(head, "Contact"), "body": body}

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        self.state, self.state_text = info.state, info.stateText
        self.last_status = info.lastStatusCode

    @property
    def ended(self) -> bool:
        return bool(self.state == pj.PJSIP_INV_STATE_DISCONNECTED)

    @property
    def confirmed(self) -> bool:
        return bool(self.state == pj.PJSIP_INV_STATE_CONFIRMED)


def _header(head: str, name: str) -> str:
    for line in head.split("\r\n")[1:]:
        if not line:
            break
        key, colon, value = line.partition(":")
        if colon and key.strip().lower() == name.lower():
            return value.strip()
    return ""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True,
                    help="outbound proxy URI, e.g. sip:127.0.0.1:5061;transport=tls;lr")
    ap.add_argument("--ca", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--uri", required=True)
    ap.add_argument("--tls", choices=["1.2", "1.3"], default="1.2")
    ap.add_argument("--hold", type=float, default=20.0)
    ap.add_argument("--accept",
                    default="application/sdp, multipart/mixed, application/vnd.webconf.join+json")
    args = ap.parse_args()
    user, domain = args.user.split("@", 1)

    ep = Endpoint()
    ep.libCreate()
    emit(event="version", pjsip=ep.libVersion().full)
    cfg = pj.EpConfig()
    cfg.uaConfig.threadCnt = 0  # all callbacks on this thread, from libHandleEvents
    cfg.uaConfig.mainThreadOnly = False
    cfg.uaConfig.maxCalls = 1
    cfg.logConfig.level = 5
    cfg.logConfig.consoleLevel = 5
    cfg.logConfig.msgLogging = True
    cfg.medConfig.hasIoqueue = True
    ep.libInit(cfg)

    tcfg = pj.TransportConfig()
    tcfg.boundAddress = "127.0.0.1"
    tcfg.port = 0
    tls = tcfg.tlsConfig
    tls.CaListFile = args.ca
    tls.verifyServer = True
    tls.method = pj.PJSIP_TLSV1_2_METHOD if args.tls == "1.2" else pj.PJSIP_TLSV1_3_METHOD
    tls.proto = (pj.PJ_SSL_SOCK_PROTO_TLS1_2 if args.tls == "1.2"
                 else pj.PJ_SSL_SOCK_PROTO_TLS1_3)
    tls.msecTimeout = 5000
    ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tcfg)
    ep.libStart()
    ep.audDevManager().setNullDev()

    acfg = pj.AccountConfig()
    acfg.idUri = f"sip:{user}@{domain}"
    acfg.regConfig.registerOnAdd = False
    acfg.sipConfig.proxies.append(args.proxy)
    acfg.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, args.password))
    acfg.natConfig.iceEnabled = False
    acfg.natConfig.sipOutboundUse = 0
    acfg.natConfig.contactRewriteUse = 0
    acfg.natConfig.viaRewriteUse = 0
    acfg.natConfig.sdpNatRewriteUse = 0
    acfg.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
    account = pj.Account()
    account.create(acfg)

    call = Call(account)
    op = pj.CallOpParam(True)
    op.opt.audioCount = 1
    op.opt.videoCount = 0
    accept = pj.SipHeader()
    accept.hName = "Accept"
    accept.hValue = args.accept
    op.txOption.headers.append(accept)
    call.makeCall(args.uri, op)

    deadline = time.monotonic() + 15
    while call.final is None and not call.ended and time.monotonic() < deadline:
        ep.libHandleEvents(20)
    for _ in range(10):  # let the ACK go out and the state settle
        ep.libHandleEvents(20)
    final = call.final or {"status": call.last_status or 0, "body": "", "content_type": ""}
    emit(event="answered", state=call.state_text, tls=ep.tls.get("protocol"), tls_info=ep.tls,
         **final)

    hold_until = time.monotonic() + args.hold
    while call.confirmed and time.monotonic() < hold_until:
        ep.libHandleEvents(20)
        ready, _, _ = select.select([sys.stdin], [], [], 0)
        if ready and sys.stdin.readline().strip() in ("hangup", ""):
            break
    if not call.ended:
        call.hangup(pj.CallOpParam(True))
    deadline = time.monotonic() + 5
    while not call.ended and time.monotonic() < deadline:
        ep.libHandleEvents(20)
    emit(event="ended", state=call.state_text, status=call.last_status)
    _OUT.flush()
    os._exit(0)  # skip pjsua2's destructors: the process is done, they only risk a crash


if __name__ == "__main__":
    raise SystemExit(main())
