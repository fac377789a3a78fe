"""What a load test does and against whom: sizes, generated items, the plan, the target."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from webconf.protocol import conference_uri

from ..meeting import FocusAddress

DEFAULT_TENANT = "load.example"
BLOCK = 1024 * 1024
"""Generated item content: one random block per item, each copy stamped with its index."""
CONNECTION_MODES = ("per-join", "reused")

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)
_UNITS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int:
    """Bytes from `1MiB`, `256KiB`, `500k`, `2MB`, `1.5GiB`, `4096`.

    Binary units carry an `i` (KiB, MiB, GiB, TiB = powers of 1024); `k`, `M`, `G`, `T`
    with or without `B` are decimal (powers of 1000). Case does not matter.
    """
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"not a size: {text!r} (examples: 1MiB, 256KiB, 500k, 4096)")
    number, unit, binary, _ = m.groups()
    if binary and not unit:
        raise ValueError(f"not a size: {text!r}")
    base = 1024 if binary else 1000
    value = Fraction(number) * base ** _UNITS[unit.lower()]
    if value.denominator != 1:
        raise ValueError(f"not a whole number of bytes: {text!r}")
    return int(value)


def fmt_size(n: int) -> str:
    """`n` bytes for a human: 1 MiB, 1.5 GiB, 300 B."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            value = n / scale
            return f"{value:g} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{n} B"


# -- generated items ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ItemSource:
    """`size` pseudo-random bytes held as one random block (at most 1 MiB); copy i of the
    block starts with i as 8 bytes, so no two blocks of an item are equal."""

    size: int
    block: bytes
    sha256: str

    @classmethod
    def generate(cls, size: int) -> ItemSource:
        block = os.urandom(min(size, BLOCK))
        digest = hashlib.sha256()
        for chunk in _chunks(block, size):
            digest.update(chunk)
        return cls(size, block, digest.hexdigest())

    def chunks(self) -> Iterator[bytes]:
        return _chunks(self.block, self.size)

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks():
            yield chunk


def _chunks(block: bytes, size: int) -> Iterator[bytes]:
    left, index = size, 0
    while left > 0:
        n = min(len(block), left)
        stamp = index.to_bytes(8, "big")
        yield (stamp + block[8:n])[:n] if n > 8 else block[:n]
        left -= n
        index += 1


# -- the target and the plan -------------------------------------------------------------------

@dataclass
class Target:
    """Whom the load test talks to, and as whom."""

    description: str
    focus: FocusAddress
    ca: Path
    password: str
    organizers: list[str]
    """One per conference: the conference's organizer (joins first)."""
    participants: list[str]
    conference_ids: list[str]
    pids: Callable[[], dict[str, list[int]] | None] = lambda: None

    def conference_uri(self, m: int) -> str:
        """Conference m's URI (docs/protocol.md §2)."""
        return conference_uri(self.organizers[m], self.conference_ids[m])


@dataclass(frozen=True)
class Plan:
    """How much load: the command line's numbers, checked."""

    participants: int = 20
    conferences: int = 2
    items: int = 2
    item_size: int = BLOCK
    concurrency: int = 10
    connection: str = "per-join"
    timeout: float = 60.0
    present_pages: int = 0
    """With `--present`: page turns per conference (docs/protocol.md §9.1); 0: none."""
