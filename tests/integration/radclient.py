"""Drive the real FreeRADIUS ``radclient`` (3.2.x) from tests.

:func:`radclient` runs ``/usr/bin/radclient`` through
:func:`twisted.internet.utils.getProcessOutputAndValue`, so it never blocks the
reactor and can be used inside pytest-twisted tests; :func:`radclient_sync` is
the blocking equivalent built on :mod:`subprocess`.

Both send one request built from ``(attribute, value)`` pairs, run radclient
with ``-x`` and parse the printed replies.  With ``-x`` radclient 3.2.1 writes
to stdout::

    Sent Access-Request Id 41 from 0.0.0.0:46573 to 127.0.0.1:18120 length 76
    \tUser-Name = "alice"
    Received Access-Accept Id 41 from 127.0.0.1:18120 to 127.0.0.1:46573 length 65
    \tMessage-Authenticator = 0xc80a2a978213d7f621b4459fbb4e1691
    \tReply-Message = "hello \\"world\\""
    (0) No reply from server for ID 34 socket 3

and exits 0 only when every reply is an Access-Accept (1 for rejects,
challenges and timeouts).  ``-r N`` is the total number of attempts per packet.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from twisted.internet.defer import Deferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.python.failure import Failure

RADCLIENT_BIN = "/usr/bin/radclient"
TIMEOUT_BIN = "/usr/bin/timeout"

_ATTR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
_RECEIVED = re.compile(r"^Received (\S+) Id \d+ ")
_PAIR = re.compile(r"^\t(\S+) = (.*)$")
_ENCODE = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_DECODE = {"\\": b"\\", '"': b'"', "'": b"'", "n": b"\n", "r": b"\r", "t": b"\t"}


@dataclass(frozen=True)
class RadclientReply:
    """One reply packet printed by radclient: its code name and attributes."""

    code: str
    attributes: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class RadclientResult:
    """Outcome of one radclient run.

    ``code`` is the first reply's code name (``"Access-Accept"``,
    ``"Access-Reject"``, ``"Access-Challenge"``, ...) or None when nothing was
    received; ``attributes`` are that reply's ``(name, value)`` pairs with
    string values unquoted and unescaped (other values, e.g. ``0x...`` octets,
    integers and enum names, verbatim).  ``replies`` holds every reply (more
    than one with ``count > 1``).  ``exit_code`` is radclient's exit status
    (124 if the safety timeout killed it).
    """

    code: str | None
    attributes: list[tuple[str, str]]
    exit_code: int
    stdout: str
    stderr: str
    replies: tuple[RadclientReply, ...] = ()

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of reply attribute *name*, or *default*."""
        for key, value in self.attributes:
            if key == name:
                return value
        return default

    def values(self, name: str) -> list[str]:
        """Return all values of reply attribute *name* in order."""
        return [value for key, value in self.attributes if key == name]


def format_value(value: str | int) -> str:
    """Render a value for radclient input.

    Integers and strings starting with ``0x`` (octets such as
    ``Message-Authenticator = 0x00``) pass through raw; everything else is
    double-quoted with backslash escapes (radclient also accepts quoted
    integers and enum names, e.g. ``"Login-User"``).
    """
    if isinstance(value, int):
        return str(value)
    if value[:2].lower() == "0x":
        return value
    return '"' + "".join(_ENCODE.get(ch, ch) for ch in value) + '"'


def build_input(attributes: Iterable[tuple[str, str | int]]) -> bytes:
    """Return radclient's stdin: one ``Attr = value`` line per attribute."""
    lines = []
    for name, value in attributes:
        if not _ATTR_NAME.match(name):
            raise ValueError(f"invalid RADIUS attribute name {name!r}")
        lines.append(f"{name} = {format_value(value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")


def unquote(value: str) -> str:
    """Undo radclient's quoting of a printed value; unquoted values pass through.

    Handles ``\\\\``, ``\\"``, ``\\n``, ``\\r``, ``\\t`` and ``\\NNN`` octal
    escapes (the latter are raw bytes, decoded together as UTF-8).
    """
    if len(value) < 2 or not (value.startswith('"') and value.endswith('"')):
        return value
    body, out, i = value[1:-1], bytearray(), 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            octal = body[i + 1:i + 4]
            if len(octal) == 3 and all(c in "01234567" for c in octal):
                out.append(int(octal, 8) & 0xFF)
                i += 4
                continue
            out += _DECODE.get(nxt, ("\\" + nxt).encode("utf-8"))
            i += 2
            continue
        out += ch.encode("utf-8")
        i += 1
    return out.decode("utf-8", errors="replace")


def parse_output(stdout: str) -> tuple[RadclientReply, ...]:
    """Extract every ``Received ...`` block from radclient ``-x`` output."""
    replies: list[RadclientReply] = []
    current: RadclientReply | None = None
    for line in stdout.splitlines():
        match = _RECEIVED.match(line)
        if match:
            current = RadclientReply(match.group(1))
            replies.append(current)
            continue
        pair = _PAIR.match(line) if current is not None else None
        if pair:
            current.attributes.append((pair.group(1), unquote(pair.group(2))))
        else:
            current = None
    return tuple(replies)


def _make_result(out: bytes, err: bytes, exit_code: int) -> RadclientResult:
    stdout = out.decode("utf-8", errors="replace")
    replies = parse_output(stdout)
    first = replies[0] if replies else None
    return RadclientResult(
        code=first.code if first else None,
        attributes=list(first.attributes) if first else [],
        exit_code=exit_code,
        stdout=stdout,
        stderr=err.decode("utf-8", errors="replace"),
        replies=replies,
    )


def _argv(host_port: str, secret: str, retries: int, timeout: float, count: int,
          code: str, raddb: str | None) -> list[str]:
    argv = ["-x", "-r", str(retries), "-t", str(timeout), "-c", str(count)]
    if raddb is not None:
        argv += ["-d", raddb]
    # "--": a secret starting with "-" is not an option (getopt permutes arguments)
    return argv + ["--", host_port, code, secret]


def _deadline(retries: int, timeout: float, count: int) -> float:
    """Generous upper bound on radclient's own run time, in seconds."""
    return max(1, retries) * timeout * max(1, count) + 10.0


def radclient(
    host_port: str,
    secret: str,
    attributes: Sequence[tuple[str, str | int]],
    *,
    retries: int = 1,
    timeout: float = 5.0,
    count: int = 1,
    code: str = "auth",
    raddb: str | None = None,
) -> "Deferred[RadclientResult]":
    """Run radclient without blocking the reactor; fires with a RadclientResult.

    :param host_port: ``"127.0.0.1:1812"``.
    :param attributes: request ``(name, value)`` pairs; include
        ``("Message-Authenticator", "0x00")`` to have one added.
    :param retries: total attempts per packet (``-r``).
    :param timeout: seconds to wait per attempt (``-t``).
    :param count: send the packet this many times (``-c``).
    :param code: ``auth``, ``acct``, ``status``, ``coa``, ``disconnect``.
    :param raddb: directory holding the user ``dictionary`` (``-d``).

    The child is wrapped in ``timeout(1)`` so a hung radclient is killed.
    """
    stdin = build_input(attributes)
    argv = [
        "-k", "2", f"{_deadline(retries, timeout, count):.1f}", RADCLIENT_BIN,
        *_argv(host_port, secret, retries, timeout, count, code, raddb),
    ]
    d = getProcessOutputAndValue(TIMEOUT_BIN, argv, env=dict(os.environ), stdinBytes=stdin)

    def on_signal(failure: Failure) -> RadclientResult | Failure:
        """Turn "killed by signal" into a result with a negative exit code."""
        value = failure.value
        if isinstance(value, tuple) and len(value) == 3:
            out, err, sig = value
            return _make_result(out, err, -int(sig))
        return failure

    d.addCallbacks(lambda res: _make_result(*res), on_signal)
    return d


def radclient_sync(
    host_port: str,
    secret: str,
    attributes: Sequence[tuple[str, str | int]],
    *,
    retries: int = 1,
    timeout: float = 5.0,
    count: int = 1,
    code: str = "auth",
    raddb: str | None = None,
) -> RadclientResult:
    """Blocking variant of :func:`radclient` (same arguments and result).

    For use outside the reactor thread (plain tests, benchmarks, threads).
    """
    argv = [RADCLIENT_BIN, *_argv(host_port, secret, retries, timeout, count, code, raddb)]
    try:
        proc = subprocess.run(
            argv, input=build_input(attributes), capture_output=True,
            timeout=_deadline(retries, timeout, count), check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return _make_result(exc.stdout or b"", exc.stderr or b"", 124)
    return _make_result(proc.stdout, proc.stderr, proc.returncode)
