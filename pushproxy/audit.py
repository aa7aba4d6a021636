"""The audit trail: one JSON line per login decision, from one call site.

The schema is fixed by `AuditEvent`; nothing else is ever written, so a
password or secret cannot slip in through a stray field. A write error (disk
full, file removed) is logged and counted and never breaks a login; a line
the disk took only part of is cut off again, so the file stays one JSON object
per line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, fields

from pushproxy import logs
from pushproxy.metrics import Counters

log = logging.getLogger("pushproxy.audit")


@dataclass(frozen=True)
class AuditEvent:
    """One decision about one login; the fixed schema of the audit trail."""

    time: str  # RFC 3339, UTC
    protocol: str  # "radius"
    user: str | None
    client: str  # configured client name
    source: str  # address the request came from
    calling_station: str | None
    nas: str | None
    outcome: str  # accept | reject | challenge
    reason: str
    rule: str | None  # the policy rule that decided, if one did
    latency_ms: float
    txid: str | None
    device: str | None
    joined: bool  # the login joined a push already pending for the same user
    # The User-Name as sent; ``user`` is the account the directory proved once
    # the password was right (all per-user state keys on it), else the name sent.
    sent_user: str | None = None
    # Where the client address is (pushproxy.geoip.Location.as_dict; None: no
    # context section) and the risk signals the login raised (pushproxy.risk).
    location: dict | None = None
    signals: list | None = None
    # presence (docs/presence.md): "verified", "not_verified" (approved without a
    # passkey check, as the policy allows), None when the login needed none
    presence: str | None = None

    def as_dict(self) -> dict:
        """The event's fields in schema order, as written to the trail.

        A shallow mapping, not `dataclasses.asdict`: that deep-copies every value
        (about 15x the cost here) and the record is written on every login's way
        to its reply (issue 16); the values are JSON-ready as they are."""
        return {name: getattr(self, name) for name in _FIELDS}


_FIELDS = tuple(f.name for f in fields(AuditEvent))
# One encoder for every line (json.dumps with these options builds one per call);
# it keeps no state between calls, so any thread may use it.
_encode = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


_last_second: tuple[int, str] = (-1, "")


def utc_stamp(epoch: float) -> str:
    """RFC 3339 UTC time with milliseconds."""
    # One strftime per second, not per login (a tuple swapped whole: thread-safe).
    global _last_second
    second = int(epoch // 1)
    last = _last_second
    if last[0] != second:
        last = _last_second = (second, time.strftime("%Y-%m-%dT%H:%M:%S",
                                                     time.gmtime(second)))
    return f"{last[1]}.{int((epoch % 1) * 1000):03d}Z"


def _private(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)


class AuditLog:
    """Appends audit events to a file (or stdout when ``path`` is None)."""

    def __init__(self, path: str | None, counters: Counters):
        self.path = path
        self.counters = counters
        self._file = None

    def _open(self):
        if self._file is None:
            # A new file is created 0600 (it names users and their addresses);
            # an existing one keeps its mode, which logrotate's "create" sets.
            self._file = sys.stdout if self.path is None else open(
                self.path, "a", encoding="utf-8", buffering=1, opener=_private)
        return self._file

    def record(self, event: AuditEvent) -> None:
        """Write one event; errors are logged and counted, never raised."""
        line = _encode(event.as_dict())
        start = None
        try:
            f = self._open()
            if f is not sys.stdout:
                start = f.tell()
            f.write(line + "\n")
            f.flush()
        except OSError as exc:
            self.counters.inc("audit_write_errors")
            logs.event(log, logging.ERROR, "audit.write_failed", path=self.path,
                       error=exc.strerror or str(exc))
            self.close()
            self._cut(start)
            return
        self.counters.inc("audit_events")

    def _cut(self, size: int | None) -> None:
        # A full disk can take part of a line: cut it off, or the next event
        # would be glued to the fragment and the trail would no longer parse.
        if size is not None and self.path is not None:
            try:
                os.truncate(self.path, size)
            except OSError:
                pass  # not a regular file (/dev/full) or gone: nothing to cut

    def reopen(self) -> None:
        """Close the file so the next event opens it again (log rotation)."""
        self.close()

    def close(self) -> None:
        """Close the file if it is ours."""
        f, self._file = self._file, None
        if f is not None and f is not sys.stdout:
            try:
                f.close()
            except OSError:
                pass
