"""JSON from clients, parsed so that no input can raise anything but `JsonError`.

`json.loads` alone lets hostile input through in two ways: nesting deep enough exhausts the
parser's recursion (a `RecursionError`, which is not a `ValueError`), and `\\ud800` escapes
(or CESU-style bytes, which `json.loads(bytes)` decodes with `surrogatepass`) yield strings
holding lone surrogates that fail later, far from the parser, when encoded to UTF-8. Here the
bytes are decoded as strict UTF-8, the nesting depth is measured before parsing (strings
skipped by one linear regex), and every string of the result must be encodable.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32
"""Deeper than any document of the API needs (they are 1 or 2 levels deep)."""
_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET_RE = re.compile(r"[^\[\]{}]+")


class JsonError(ValueError):
    """The input is not acceptable JSON; the message is safe to show to the client."""


def _depth(text: str) -> int:
    """The deepest nesting of arrays and objects in `text`, ignoring string contents."""
    brackets = _NOT_BRACKET_RE.sub("", _STRING_RE.sub("", text))
    depth = deepest = 0
    for bracket in brackets:
        if bracket in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _check_strings(value: Any) -> None:
    """Refuse any string (key or value) holding a lone surrogate; no recursion."""
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            pending.extend(node.keys())
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
        elif isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                raise JsonError("strings must be valid Unicode (no lone surrogates)") from None


def loads(raw: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse `raw` (UTF-8 bytes, or text) or raise `JsonError`."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise JsonError("body is not UTF-8") from None
    else:
        text = raw
    if _depth(text) > max_depth:
        raise JsonError(f"JSON nested deeper than {max_depth} levels")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise JsonError("not valid JSON") from None
    _check_strings(value)
    return value
