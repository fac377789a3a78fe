"""Reading a password for a `webconf` command: typed on a terminal, else piped on stdin.

One reader for the operator's `webconf user add` and the client commands, so a password
piped to one is read exactly as the other reads it: the next line without its line end
(`\\n` or `\\r\\n`, nothing more). Each caller keeps its own policy (an environment
variable first, an empty password refused) and its own messages, chosen by the error's
`reason`.
"""

from __future__ import annotations

import getpass
from typing import IO

MISMATCH = "mismatch"
"""The two entries typed on the terminal differ."""
CANCELLED = "cancelled"
"""End of input at the terminal prompt (Ctrl-D)."""
NO_INPUT = "no-input"
"""The piped input has no line left."""
NOT_UTF8 = "not-utf8"
"""The piped line is not UTF-8."""


class PasswordInputError(Exception):
    """No password could be read; `reason` is one of the constants above."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def read_line(stream: IO[str] | IO[bytes]) -> str:
    """The next line of `stream` without its line end; `PasswordInputError` at the end of
    the input (`NO_INPUT`) or for bytes that are not UTF-8 (`NOT_UTF8`)."""
    line = stream.readline()
    if not line:
        raise PasswordInputError(NO_INPUT)
    if isinstance(line, bytes):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            raise PasswordInputError(NOT_UTF8) from None
    else:
        text = line
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith("\n") else text


def prompt(prompt_text: str, *, confirm_text: str | None = None) -> str:
    """Ask on the terminal without echo, twice when `confirm_text` is given."""
    try:
        first = getpass.getpass(prompt_text)
        if confirm_text is not None and first != getpass.getpass(confirm_text):
            raise PasswordInputError(MISMATCH)
    except EOFError:
        raise PasswordInputError(CANCELLED) from None
    return first


def read_password(stream: IO[str] | IO[bytes], prompt_text: str, *,
                  confirm_text: str | None = None) -> str:
    """A prompt when `stream` is a terminal, else its next line (see `read_line`)."""
    if stream.isatty():
        return prompt(prompt_text, confirm_text=confirm_text)
    return read_line(stream)
