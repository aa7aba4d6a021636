"""Structured logging: one event name plus key=value fields per line.

Lines look like ``2026-11-27T10:00:00Z info radius.drop reason=malformed
client=vpn-gw-1``. Values are quoted when they hold spaces or quotes, so a
hostile username cannot forge a second field or a second line. Twisted's own
log events are routed into the same stream.
"""

from __future__ import annotations

import json
import logging
import sys
import time

from twisted.logger import globalLogBeginner, STDLibLogObserver

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@[]+=,")


def _value(value: object) -> str:
    text = str(value)
    if text and all(ch in _SAFE for ch in text):
        return text
    return json.dumps(text, ensure_ascii=True)


def event(logger: logging.Logger, level: int, name: str, /, **fields: object) -> None:
    """Log one structured event; None values are left out."""
    if not logger.isEnabledFor(level):
        return
    parts = [name] + [f"{k}={_value(v)}" for k, v in fields.items() if v is not None]
    logger.log(level, " ".join(parts))


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
        text = record.getMessage().replace("\n", "\\n")
        line = f"{stamp} {record.levelname.lower()} {text}"
        if record.exc_info:
            line += " traceback=" + json.dumps(self.formatException(record.exc_info))
        return line


def setup(level: str = "info", stream=None) -> None:
    """Send pushproxy's and Twisted's logs to ``stream`` (stderr) at ``level``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    globalLogBeginner.beginLoggingTo([STDLibLogObserver(name="twisted")],
                                     redirectStandardIO=False)
