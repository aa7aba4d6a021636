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
import re
import sys
import time

from twisted.logger import LogLevel, formatEvent, globalLogBeginner

_twisted_routed = False
# Values made only of these (ASCII) characters are written bare, anything else
# quoted. One compiled pattern, not a test per character: every login's
# decision line has a dozen values, written before its reply (issue 16).
_SAFE = re.compile(r"[a-zA-Z0-9\-_.:/@\[\]+=,]+")
# The same test for a whole line's values at once, joined by spaces: when it
# passes and the line has no spaces but the joins, as most lines, every value
# is bare (one search per line, not one per value).
_ALL_SAFE = re.compile(r"[a-zA-Z0-9\-_.:/@\[\]+=,]+(?: [a-zA-Z0-9\-_.:/@\[\]+=,]+)*")


def _value(value: object) -> str:
    text = str(value)
    if _SAFE.fullmatch(text) is not None:
        return text
    return json.dumps(text, ensure_ascii=True)


def event(logger: logging.Logger, level: int, name: str, /, **fields: object) -> None:
    """Log one structured event; None values are left out."""
    if not logger.isEnabledFor(level):
        return
    fields = {k: v for k, v in fields.items() if v is not None}
    texts = [str(v) for v in fields.values()]
    if texts:
        joined = " ".join(texts)
        if _ALL_SAFE.fullmatch(joined) is None or joined.count(" ") != len(texts) - 1:
            texts = [_value(v) for v in texts]
    text = " ".join([name] + [f"{k}={t}" for k, t in zip(fields, texts)])
    # The record made here rather than by `Logger.log`, which would also walk the
    # stack for the caller's file, line and function: no formatter here prints
    # them, and every login writes a line before its reply (issue 16).
    logger.handle(logger.makeRecord(logger.name, level, "(unknown file)", 0, text, (), None,
                                    extra={"event": name, "fields": fields}))


_last_second: tuple[int, str] = (-1, "")


def _stamp(record: logging.LogRecord) -> str:
    # One strftime per second, not per line (a tuple swapped whole: any thread may log).
    global _last_second
    second = int(record.created)
    last = _last_second
    if last[0] != second:
        last = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                     time.gmtime(second)))
    return last[1]


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
    # No formatter here prints a record's thread or process: skip looking them up
    # for every record (the logging HOWTO's "Optimization"; issue 16).
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root.setLevel(level.upper())
    if use_syslog and len(handlers) == 1:
        root.warning("log.syslog_unavailable path=/dev/log")
    global _twisted_routed
    if not _twisted_routed:  # Twisted allows choosing its log target once per process
        _twisted_routed = True
        globalLogBeginner.beginLoggingTo([twisted_observer], redirectStandardIO=False)


_TWISTED = logging.getLogger("twisted")
_LEVELS = {LogLevel.debug: logging.DEBUG, LogLevel.info: logging.INFO,
           LogLevel.warn: logging.WARNING, LogLevel.error: logging.ERROR,
           LogLevel.critical: logging.CRITICAL}
# Twisted's lifecycle chatter ("Starting factory <...>", "(UDP Port 1812 Closed)"):
# pushproxy logs its own *.listening events, so these are debug detail.
_ROUTINE = re.compile(r"^(?:\S+ \(\S+\) starting on \d+|\S+ starting on \d+|"
                      r"(?:Starting|Stopping) (?:factory|protocol) |\(\S+ Port \d+ Closed\)|"
                      r"Main loop terminated\.)")


def twisted_observer(evt: dict) -> None:
    """One of Twisted's own log events as a structured line: ``twisted.log message=...``.

    Twisted writes free text ("Received SIGTERM, shutting down."); routing it
    through `event` keeps one event per line with quoted values, and a failure
    becomes ``twisted.error`` with its traceback on the same line.
    """
    failure = evt.get("log_failure")
    level = _LEVELS.get(evt.get("log_level"), logging.INFO)
    if evt.get("isError") or failure is not None:
        level = max(level, logging.ERROR)
    try:
        text = formatEvent(evt) or ""
    except Exception:  # a broken format string must not lose the event
        text = repr(evt.get("log_format"))
    if level == logging.INFO and _ROUTINE.match(text):
        level = logging.DEBUG
    if not _TWISTED.isEnabledFor(level):
        return
    name = "twisted.error" if level >= logging.ERROR else "twisted.log"
    fields = {"message": text.strip(), "source": evt.get("log_namespace")}
    line = " ".join([name] + [f"{k}={_value(v)}" for k, v in fields.items() if v])
    exc_info = None
    if failure is not None:
        exc_info = (failure.type, failure.value, failure.getTracebackObject())
    _TWISTED.log(level, line, exc_info=exc_info, extra={"event": name, "fields": fields})
