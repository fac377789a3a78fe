"""HTTP validators and byte ranges, shared by the ciphertext and plaintext downloads
(docs/protocol.md §4.1, §8.3): one `bytes=` range (RFC 9110 §14), `If-None-Match`,
`If-Range`.
"""

from __future__ import annotations

import re

from ..service import ServiceError

_RANGE_SPEC_RE = re.compile(r"^([0-9]*)-([0-9]*)$")  # ASCII digits only: `\d` is Unicode
_INT64_DIGITS = 19


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range as (start, end_exclusive); None means serve the whole blob.

    Raises ServiceError(range_not_satisfiable) for a malformed or unsatisfiable range.
    Multiple ranges are answered with the whole representation (RFC 9110 §14.2 allows it).
    """
    header = header.strip()
    if header[:6].lower() != "bytes=":
        return None  # unknown unit: ignore the header
    if "," in header:
        return None
    # The unit is case-insensitive (RFC 9110 §14.1); OWS is tolerated anywhere.
    m = _RANGE_SPEC_RE.match(header[len("bytes="):].replace(" ", "").replace("\t", ""))
    if m is None or (m.group(1) == "" and m.group(2) == ""):
        raise ServiceError("range_not_satisfiable", "malformed Range header")
    # Leading zeros are allowed; a position past int64 is past any blob. Never int() a
    # digit string that long (Python refuses over 4300 digits, and it costs time).
    first, last = m.group(1), m.group(2)
    first = first.lstrip("0") or ("0" if first else "")
    last = last.lstrip("0") or ("0" if last else "")
    if len(first) > _INT64_DIGITS:
        raise ServiceError("range_not_satisfiable", "Range out of bounds")
    huge = 1 << 63
    last_pos = None if last == "" else (int(last) if len(last) <= _INT64_DIGITS else huge)
    if first == "":
        suffix = last_pos or 0
        if suffix == 0 or size == 0:
            raise ServiceError("range_not_satisfiable", "empty suffix range")
        return max(0, size - suffix), size  # a suffix longer than the blob: all of it
    start = int(first)
    if start >= size or (last_pos is not None and last_pos < start):
        raise ServiceError("range_not_satisfiable", "Range not satisfiable")
    end = size - 1 if last_pos is None else min(last_pos, size - 1)
    return start, end + 1


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """`If-None-Match` names `etag` (or is `*`): the client's copy is current (304)."""
    if if_none_match is None:
        return False
    return if_none_match.strip() == "*" or etag in [t.strip() for t in if_none_match.split(",")]


def requested_span(range_header: str | None, if_range: str | None, etag: str,
                   size: int) -> tuple[int, int] | None:
    """The span a request asks for, None for the whole representation: `Range` applies
    only while `If-Range` (if any) is the current ETag. Raises like `parse_range`."""
    if range_header is None or (if_range is not None and if_range.strip() != etag):
        return None
    return parse_range(range_header, size)
