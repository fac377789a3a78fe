"""Page turns: one presenter turns a PDF's pages for 500 attendees of one conference.

    python -m bench.present [--smoke]

A real deployment (`webconf serve`: focus + WCS processes). The presenter (the organizer,
in this process) joins and shares a generated PDF (its pages counted by the WCS at upload,
docs/protocol.md §9.1); the attendees join from two client processes (`bench.loadgen`,
channels open, no downloads). Each round the presenter turns to the next page with
`PUT .../presentation`; t0 = `time.time()` just before the request is sent, and every
attendee's worker reports the wall-clock moment its `presentation.changed` arrived. The
row is the median over rounds of the per-round p99 of (arrival - t0); goal < 50 ms.
Rounds are spaced within the presenter's rate (5 turns a second); `WARMUP` turns before
them are not measured (the first sends on 500 fresh channels, after the join burst).
"""

from __future__ import annotations

import asyncio
import io
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from clients.meeting import FocusAddress, MeetingClient
from clients.wcs import client_ssl_context
from webconf.protocol import conference_uri
from webconf.stats import summary_ms

from .common import Stack, median, stack, standalone
from .loadgen import Fleet, Member, Target, WorkerSpec, raise_nofile, split
from .report import Row

TENANT = "contoso.example"
CONFERENCE = "PRESENT"
PASSWORD = "bench-" + "pw"
TARGET_MS = 50.0
WARMUP = 2
TURN_GAP = 0.3
"""Seconds between turns: within the presenter's 5 a second (docs/protocol.md §9.1)."""


def deck(pages: int) -> bytes:
    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(pages):
        writer.add_blank_page(width=960, height=540)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


async def _measure(st: Stack, *, attendees: int, rounds: int, workers: int,
                   timeout: float, say: Any) -> dict[str, Any]:
    cfg = st.cfg
    host, ca = cfg.public_host, str(cfg.certs_dir / "ca.pem")
    organizer = f"presenter@{TENANT}"
    uri = conference_uri(organizer, CONFERENCE)
    presenter = MeetingClient(uri, organizer, PASSWORD,
                              focus=FocusAddress(host, cfg.focus.sip_port),
                              ssl_context=client_ssl_context(ca))
    await presenter.join()
    members = [Member(uri, f"p{i}@{TENANT}") for i in range(attendees)]
    target = Target(host, cfg.focus.sip_port, ca, PASSWORD)
    specs = [WorkerSpec(i, target, part, sip_per_connection=25, download=False,
                        join_concurrency=max(10, 200 // workers), timeout=timeout)
             for i, part in enumerate(split(members, workers))]
    fleet = Fleet(specs)
    try:
        joins = await fleet.acall("join", 600)
        joined = sum(r["joined"] for r in joins)
        errors: Counter[str] = Counter()
        for r in joins:
            errors.update(r["errors"])
        say(f"present: {joined}/{attendees} joined, errors={dict(errors)}")
        data = deck(WARMUP + rounds)

        async def body() -> AsyncIterator[bytes]:
            yield data

        assert presenter.wcs is not None
        item = await presenter.wcs.upload(body(), name="bench-deck.pdf",
                                          content_type="application/pdf", sha256=False,
                                          size=len(data))
        if item.get("pages") != WARMUP + rounds:
            raise RuntimeError(f"the deck's page count is {item.get('pages')}, "
                               f"not {WARMUP + rounds}")
        await asyncio.sleep(1.0)
        results = []
        for page in range(1, WARMUP + rounds + 1):
            t0 = time.time()
            await presenter.set_page(str(item["id"]), page)
            t_answer = time.time()
            replies = await fleet.acall("turn", timeout + 30, item_id=str(item["id"]),
                                        page=page, timeout=timeout)
            arrived = [t - t0 for r in replies for t in r["arrived"]]
            for r in replies:
                errors.update(r["errors"])
            if page <= WARMUP:
                await asyncio.sleep(TURN_GAP)
                continue
            results.append({"latency": summary_ms(arrived, with_max=True),
                            "arrived": len(arrived), "put_ms": (t_answer - t0) * 1000,
                            "all": arrived})
            await asyncio.sleep(TURN_GAP)
    finally:
        await asyncio.to_thread(fleet.close)
        await presenter.leave()
        await presenter.close()
    return {"joined": joined, "rounds": results, "errors": dict(errors)}


def measure(*, attendees: int, rounds: int, workers: int = 2, timeout: float = 60.0,
            verbose: bool = True) -> dict[str, Any]:
    raise_nofile()
    users = [(f"presenter@{TENANT}", PASSWORD)] + [
        (f"p{i}@{TENANT}", PASSWORD) for i in range(attendees)]
    say = print if verbose else (lambda *_: None)
    with stack(users=users, tenants=(TENANT,)) as st:
        return asyncio.run(_measure(st, attendees=attendees, rounds=rounds, workers=workers,
                                    timeout=timeout, say=say))


def rows_from(result: dict[str, Any], *, attendees: int) -> list[Row]:
    rounds = result["rounds"]

    def med(stat: str) -> float:
        return round(median([r["latency"][stat] or 0.0 for r in rounds]), 1)

    pooled = summary_ms([t for r in rounds for t in r["all"]], with_max=True)
    n_err = sum(result["errors"].values())
    p99 = med("p99")
    detail = {
        "rounds": len(rounds), "attendees_joined": result["joined"],
        "p50_ms": med("p50"), "p95_ms": med("p95"), "max_ms": med("max"),
        "pooled_ms": pooled, "put_answer_ms": round(median([r["put_ms"] for r in rounds]), 1),
        "p99_per_round_ms": [r["latency"]["p99"] for r in rounds],
        "arrivals": sum(r["arrived"] for r in rounds),
        "errors": n_err, "error_kinds": result["errors"], "cores": os.cpu_count(),
    }
    return [Row(f"page turn to {attendees} attendees: presentation.changed p99", p99, None,
                f"< {TARGET_MS:.0f} ms", p99 < TARGET_MS and n_err == 0, "ms", True, detail)]


def run(smoke: bool) -> list[Row]:
    kw: dict[str, Any] = ({"attendees": 20, "rounds": 3, "timeout": 30.0} if smoke
                          else {"attendees": 500, "rounds": 20})
    return rows_from(measure(**kw, verbose=not smoke), attendees=kw["attendees"])


if __name__ == "__main__":
    standalone("python -m bench.present", __doc__, run)
