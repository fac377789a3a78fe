"""JSON-lines logging shared by every server process of a deployment.

One JSON object per line on stderr (the supervisor appends it to `DIR/var/log/<name>.log`).
A message that is itself a JSON object is merged into the line, so call sites log
`json.dumps({"event": ...})`. Secrets never reach a log call: cookies, keys, passwords and
HA1s are not passed to loggers anywhere.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from typing import Any


class Event(dict[str, Any]):
    """A log message that is a JSON object, for hot paths: the line takes its fields as
    they are instead of parsing them back from text (its text, for any other handler, is
    the same JSON)."""

    def __str__(self) -> str:
        return json.dumps(self)


def configure_logging(component: str) -> None:
    """One JSON object per line on stderr; secrets never reach a log call."""

    class JsonLines(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            line: dict[str, Any] = {
                "ts": round(record.created, 3), "level": record.levelname.lower(),
                "component": component, "logger": record.name}
            if type(record.msg) is Event and not record.args and not record.exc_info:
                line.update(record.msg)  # a hot path's event: no text to parse back
                return json.dumps(line)
            msg = record.getMessage()
            if msg.startswith("{"):
                with contextlib.suppress(ValueError):
                    line.update(json.loads(msg))
                    msg = ""
            if msg:
                line["msg"] = msg
            if record.exc_info:
                line["exc"] = self.formatException(record.exc_info)
            return json.dumps(line)

    # The line uses none of the record's thread, process or source location: not gathering
    # them is the logging HOWTO's "Optimization" advice, a fifth of a hot line's cost.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging._srcfile = None  # no stack walk per record
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    handler.addFilter(_quiet_protocol_errors)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _quiet_protocol_errors(record: logging.LogRecord) -> bool:
    """Bad HTTP from a client is the client's problem: one warning line, no traceback.

    aiohttp logs every unparseable request at ERROR with a full traceback, which would let
    any client flood the logs; real server bugs keep their tracebacks.
    """
    if record.name.startswith("aiohttp.server") and record.exc_info:
        exc = record.exc_info[1]
        from aiohttp.http_exceptions import HttpProcessingError

        if isinstance(exc, HttpProcessingError):
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.msg, record.args = "bad HTTP request: %s", (type(exc).__name__,)
    return True

