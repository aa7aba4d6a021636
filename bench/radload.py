"""The load generators: radclient for throughput, a small asyncio RADIUS client for latency.

`run_radclient` drives FreeRADIUS's own ``radclient`` with a load file, in
parallel (``-p``), once per request, and reads its packet summary; the same
command line is used against both servers.

`RadiusClient` is an asyncio PAP client written for the benchmark (no pyrad:
encoding a request here costs a few microseconds, so the generator stays out
of the way). It keeps many requests outstanding over several UDP sockets (256
identifiers each), stamps every reply with ``time.monotonic()`` (the same
clock in every process on the machine, so the device process's timestamps can
be compared with it) and checks each reply's Response Authenticator.

Each reply also carries the time the kernel took the datagram in
(``SIOCGSTAMPNS`` on the socket, read right after the read, turned to the
same monotonic clock): ``received`` includes the wait for this process's
event loop to get to the socket, ``arrived`` does not. On a machine whose
cores are shared by the daemon, the phones' process and this one, that wait
is the generator's, not the daemon's (docs/benchmarks.md, issue 16).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import hashlib
import hmac
import os
import random
import re
import resource
import socket
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ACCESS_REQUEST, ACCESS_ACCEPT, ACCESS_REJECT, ACCESS_CHALLENGE = 1, 2, 3, 11
CODE_NAMES = {ACCESS_ACCEPT: "accept", ACCESS_REJECT: "reject", ACCESS_CHALLENGE: "challenge"}
RADCLIENT_BIN = "/usr/bin/radclient"


# -- radclient --------------------------------------------------------------------------------


def write_load_file(path: Path, logins: list[tuple[str, str]], nas: str = "bench") -> None:
    """One Access-Request per (user, password), each with a Message-Authenticator."""
    with open(path, "w", encoding="utf-8") as out:
        for i, (user, password) in enumerate(logins):
            out.write(f'User-Name = "{user}"\nUser-Password = "{password}"\n'
                      f'Calling-Station-Id = "198.51.100.{i % 250 + 1}"\n'
                      f'NAS-Identifier = "{nas}"\nMessage-Authenticator = 0x00\n\n')


@dataclass(frozen=True)
class RadclientRun:
    """What one radclient load run did."""

    elapsed: float  # wall seconds from start to exit
    accepted: int
    rejected: int
    lost: int
    cpu: float  # radclient's own user+system CPU seconds
    exit_code: int

    @property
    def rate(self) -> float:
        """Accepted logins per second."""
        return self.accepted / self.elapsed if self.elapsed > 0 else 0.0


def run_radclient(address: str, secret: str, load_file: Path, *, parallel: int = 128,
                  timeout: float = 10.0, limit: float = 600.0) -> RadclientRun:
    """``radclient -q -s -p N -c 1 -r 1 -t T -f FILE HOST auth SECRET``; bounded by ``limit``."""
    argv = [RADCLIENT_BIN, "-q", "-s", "-p", str(parallel), "-c", "1", "-r", "1",
            "-t", str(timeout), "-f", str(load_file), address, "auth", secret]
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    deadline = started + limit
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.002)
    elapsed = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read().decode("utf-8", "replace")
    proc.stdout.close()

    def count(label: str) -> int:
        match = re.search(rf"{label}\s*:\s*(\d+)", out)
        return int(match.group(1)) if match else 0

    return RadclientRun(elapsed=elapsed, accepted=count("Accepted"), rejected=count("Rejected"),
                        lost=count("Lost"), cpu=usage.ru_utime + usage.ru_stime,
                        exit_code=proc.returncode)


# -- the asyncio client -----------------------------------------------------------------------


def _attr(kind: int, value: bytes) -> bytes:
    return struct.pack("!BB", kind, len(value) + 2) + value


def hide_password(password: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 5.2 User-Password hiding."""
    padded = password + b"\0" * (-len(password) % 16 or (16 if not password else 0))
    out, last = b"", authenticator
    for i in range(0, len(padded), 16):
        digest = hashlib.md5(secret + last).digest()
        last = bytes(a ^ b for a, b in zip(padded[i:i + 16], digest))
        out += last
    return out


def encode_request(ident: int, authenticator: bytes, secret: bytes, user: str, password: str,
                   station: str, nas: str) -> bytes:
    """An Access-Request with Message-Authenticator (RFC 3579), signed with ``secret``."""
    attrs = (_attr(1, user.encode()) + _attr(2, hide_password(password.encode(), secret,
                                                              authenticator))
             + _attr(31, station.encode()) + _attr(32, nas.encode()) + _attr(80, b"\0" * 16))
    header = struct.pack("!BBH", ACCESS_REQUEST, ident, 20 + len(attrs)) + authenticator
    unsigned = header + attrs
    mac = hmac.new(secret, unsigned, hashlib.md5).digest()
    return unsigned[:-16] + mac


# ioctl: the kernel's receive time of the last datagram read from a socket
# (struct timespec, CLOCK_REALTIME); the first call switches the stamping on.
SIOCGSTAMPNS = 0x8907


def enable_arrival_stamps(sock: socket.socket) -> None:
    """Have the kernel stamp every datagram ``sock`` takes in (see `arrival`)."""
    try:
        fcntl.ioctl(sock.fileno(), SIOCGSTAMPNS, bytes(16))
    except OSError:
        pass  # ENOENT: nothing received yet (expected); stamping is on from now


def arrival(fd: int, now: float) -> float | None:
    """When the kernel took in the datagram just read from ``fd``, on the
    ``time.monotonic()`` clock (never after ``now``, the time it was read); None
    where the kernel gives no stamp (or only the time of asking)."""
    try:
        sec, nsec = struct.unpack("@ll", fcntl.ioctl(fd, SIOCGSTAMPNS, bytes(16)))
    except OSError:
        return None
    offset = time.time() - time.monotonic()  # CLOCK_REALTIME - CLOCK_MONOTONIC now
    stamp = sec + nsec / 1e9 - offset
    # A datagram the kernel took in before stamping was on (the first ioctl turns it
    # on system-wide through a deferred work item, which a busy machine runs late)
    # has no stamp, and the ioctl then answers the time of asking: after the read.
    return None if stamp > now else stamp


@dataclass(frozen=True)
class LoginResult:
    """One login as the client saw it."""

    user: str
    outcome: str | None  # accept / reject / challenge, None: no reply in time
    sent: float  # time.monotonic() at send
    received: float | None  # time.monotonic() when the reply arrived
    retransmits: int = 0  # NAS-style resends of the same request before the reply
    # time.monotonic() when the kernel took the reply in (before this process's
    # event loop got to it); None without a reply or a kernel stamp
    arrived: float | None = None

    @property
    def rtt(self) -> float | None:
        """Seconds from send to reply."""
        return None if self.received is None else self.received - self.sent


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, owner: "RadiusClient"):
        self.owner = owner
        self.transport = None
        self.free = list(range(256))
        self.waiting: dict[int, tuple[bytes, asyncio.Future]] = {}

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        self.fd = sock.fileno() if sock is not None else None

    def datagram_received(self, data, addr):
        now = time.monotonic()
        # read now, before anything else is read from the socket
        arrived = arrival(self.fd, now) if self.fd is not None else None
        if len(data) < 20:
            return
        code, ident, length = struct.unpack("!BBH", data[:4])
        entry = self.waiting.get(ident)
        if entry is None:
            return
        authenticator, future = entry
        expected = hashlib.md5(data[:4] + authenticator + data[20:length]
                               + self.owner.secret).digest()
        if expected != data[4:20]:
            self.owner.bad_replies += 1
            return
        if not future.done():
            future.set_result((code, now, arrived))


class RadiusClient:
    """Many concurrent PAP logins to one server from one asyncio loop."""

    def __init__(self, host: str, port: int, secret: str, *, sockets: int = 4,
                 nas: str = "bench"):
        self.address = (host, port)
        self.secret = secret.encode()
        self.nas = nas
        self.count = sockets
        self.sockets: list[_Socket] = []
        self.bad_replies = 0
        self.retransmits = 0  # resends of every login together
        self._slot = None
        self._ready: collections.deque = collections.deque()

    async def open(self) -> "RadiusClient":
        """Open the UDP sockets (each with a large receive buffer)."""
        loop = asyncio.get_running_loop()
        for _ in range(self.count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            sock.bind(("127.0.0.1", 0))
            enable_arrival_stamps(sock)
            _, proto = await loop.create_datagram_endpoint(lambda: _Socket(self), sock=sock)
            self.sockets.append(proto)
        self._ready = collections.deque(self.sockets)
        self._slot = asyncio.Semaphore(256 * self.count)
        return self

    def close(self) -> None:
        """Close every socket."""
        for proto in self.sockets:
            if proto.transport is not None:
                proto.transport.close()

    async def login(self, user: str, password: str, *, station: str = "198.51.100.7",
                    timeout: float = 10.0, retransmit: tuple[float, ...] = ()) -> LoginResult:
        """One Access-Request; the reply or None after ``timeout``.

        ``retransmit``: seconds to wait before each resend of the identical
        datagram (same identifier and authenticator), like a NAS; the last
        interval repeats until ``timeout`` (each with +-25% jitter). Empty: no
        retransmission.

        A login waits on its reply future with one timer callback armed at a
        time (the next resend or the end), not a ``wait_for`` task and shield
        per interval: with 100,000 logins outstanding the generator must not
        become the bottleneck it measures (it did: ``asyncio.wait_for``'s
        timers and cancellations took a whole core at 40,000 outstanding)."""
        async with self._slot:
            proto = self._pick()
            ident = proto.free.pop()
            authenticator = os.urandom(16)
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            proto.waiting[ident] = (authenticator, future)
            data = encode_request(ident, authenticator, self.secret, user, password, station,
                                  self.nas)
            sent = time.monotonic()
            proto.transport.sendto(data, self.address)
            timer = _Resender(self, proto, data, future, sent + timeout, retransmit)
            timer.arm(loop)
            try:
                code, received, arrived = await future
            finally:
                timer.stop()
                del proto.waiting[ident]
                proto.free.insert(0, ident)  # reuse an identifier as late as possible
                if len(proto.free) == 1:
                    self._ready.append(proto)  # it was full: offered again
            outcome = None if code is None else CODE_NAMES.get(code, str(code))
            return LoginResult(user, outcome, sent, received, timer.resends, arrived)

    def _pick(self) -> "_Socket":
        """A socket with a free identifier, round robin (the semaphore guarantees one).

        A socket is in ``_ready`` while it has a free identifier: taken out when
        its last one goes, put back when one comes back."""
        proto = self._ready.popleft()
        if len(proto.free) > 1:
            self._ready.append(proto)
        return proto


class _Resender:
    """The one timer of an outstanding login: resend on schedule, or end it at its deadline."""

    __slots__ = ("client", "proto", "data", "future", "deadline", "schedule", "resends",
                 "handle")

    def __init__(self, client, proto, data, future, deadline, schedule):
        self.client, self.proto, self.data, self.future = client, proto, data, future
        self.deadline, self.schedule = deadline, schedule
        self.resends = 0
        self.handle = None

    def arm(self, loop) -> None:
        left = self.deadline - time.monotonic()
        wait = left
        if self.schedule:
            # +-25% jitter, as NASes (and their many users) do not resend in step
            wait = min(left, self.schedule[min(self.resends, len(self.schedule) - 1)]
                       * random.uniform(0.75, 1.25))
        self.handle = loop.call_later(max(wait, 0.0), self.fire, loop)

    def fire(self, loop) -> None:
        self.handle = None
        if self.future.done():
            return
        if time.monotonic() >= self.deadline - 1e-3:
            self.future.set_result((None, None, None))
            return
        self.resends += 1
        self.client.retransmits += 1
        self.proto.transport.sendto(self.data, self.client.address)
        self.arm(loop)

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None


async def closed_loop(client: RadiusClient, logins: list[tuple[str, str]], concurrency: int,
                      timeout: float = 10.0) -> list[LoginResult]:
    """Send ``logins`` with at most ``concurrency`` outstanding (the next starts when one ends)."""
    queue = list(reversed(logins))
    results: list[LoginResult] = []

    async def worker():
        while queue:
            user, password = queue.pop()
            results.append(await client.login(user, password, timeout=timeout))

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    return results


def children_cpu() -> float:
    """CPU seconds used by this process's finished children (for bookkeeping)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime
