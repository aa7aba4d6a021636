"""Structured logging: one event name plus key=value fields per line.

Lines look like ``2026-11-27T10:00:00Z info radius.drop reason=malformed
client=vpn-gw-1``. Values are quoted when they hold spaces or quotes, so a
hostile username cannot forge a second field or a second line. Twisted's own
log events are routed into the same stream.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time

from twisted.logger import globalLogBeginner, STDLibLogObserver

_twisted_routed = False
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
    fields = {k: v for k, v in fields.items() if v is not None}
    logger.log(level, " ".join([name] + [f"{k}={_value(v)}" for k, v in fields.items()]),
               extra={"event": name, "fields": fields})


def _stamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


class TextFormatter(logging.Formatter):
    """``TIME level event key=value ...``, one line per event."""

    def __init__(self, with_time: bool = True):
        super().__init__()
        self.with_time = with_time

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage().replace("\n", "\\n")
        line = f"{record.levelname.lower()} {text}"
        if self.with_time:
            line = f"{_stamp(record)} {line}"
        if record.exc_info:
            line += " traceback=" + json.dumps(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event and the event's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": _stamp(record), "level": record.levelname.lower(),
               "logger": record.name}
        name = getattr(record, "event", None)
        if name:
            out["event"] = name
            out.update({k: v if isinstance(v, (int, float, bool)) else str(v)
                        for k, v in getattr(record, "fields", {}).items()
                        if k not in ("time", "level", "logger", "event")})
        else:
            out["message"] = record.getMessage()
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=True)


def setup(level: str = "info", stream=None, *, fmt: str = "text",
          use_syslog: bool = False) -> None:
    """Send pushproxy's and Twisted's logs to ``stream`` (stderr), and to syslog if asked."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handlers = [handler]
    if use_syslog and os.path.exists("/dev/log"):
        syslog = logging.handlers.SysLogHandler(
            address="/dev/log", facility=logging.handlers.SysLogHandler.LOG_DAEMON)
        syslog.setFormatter(TextFormatter(with_time=False))
        syslog.ident = "pushproxy: "
        handlers.append(syslog)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    if use_syslog and len(handlers) == 1:
        root.warning("log.syslog_unavailable path=/dev/log")
    global _twisted_routed
    if not _twisted_routed:  # Twisted allows choosing its log target once per process
        _twisted_routed = True
        globalLogBeginner.beginLoggingTo([STDLibLogObserver(name="twisted")],
                                         redirectStandardIO=False)
