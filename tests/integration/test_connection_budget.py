"""Issue 14, finding 3: connection exhaustion must not stop pushes, RADIUS, LDAP or /healthz.

The real daemon (`pushproxy serve`, a child process held to 1,024
descriptors, soft and hard, as the review found it) against the test slapd,
with the built-in approval service, the LDAP front end and the admin
listener. From 100 loopback source addresses (127.0.1.1 ... 127.0.1.100)
the test keeps up

- 2,000 slow HTTP connections to the approval API, each sending a header
  line every 2 s and never finishing its request, and
- 2,000 idle LDAP front-end connections that never send a byte,

reopening whatever the daemon closes; 4 (HTTP) and 2 (LDAP) connections per
source are allowed, so the flood alone could fill both listeners' totals.
Meanwhile a well-behaved device (the
real CLI authenticator, long-polling from 127.0.0.1) approves a RADIUS
login sent by radclient, which must be answered Access-Accept within normal
time; /healthz answers 200, and a fresh LDAP client gets an answer.

On the old code (no caps, an idle timer every trickled byte restarts, LDAP
max_connections 1000 under 1,024 descriptors) the daemon ran out of
descriptors: the device could not connect and the login ended in
push_timeout.
"""

from __future__ import annotations

import concurrent.futures
import errno
import resource
import shutil
import socket
import threading
import time

import pytest
import requests

from pushproxy.approval import authenticator as auth
from pushproxy.ldapfront import ber
from tests.integration.harness import SECRET, ServeProcess
from tests.integration.radclient import radclient_sync
from tests.integration.slapd import free_port
from tests.integration.test_operations import enroll_device, metric, served_config

pytestmark = pytest.mark.skipif(shutil.which("radclient") is None,
                                reason="radclient not installed")

SOURCES = [f"127.0.1.{i}" for i in range(1, 101)]
PER_SOURCE = 20  # x 100 sources = 2,000 connections per listener
DAEMON_NOFILE = 1024

# Caps under the daemon's 1,024 descriptors: 300 + 2 x 60 + 64 + 256 + 8 = 748.
# Per source x sources is above each total (400 > 300, 200 > 60): the flood
# fills both listeners, and the device gets in because a full listener evicts
# the connection that has waited longest on its peer (never a long-poll).
APPROVAL_CAPS = "  max_connections: 300\n  max_connections_per_source: 4\n"
FRONT_CAPS = "  max_connections: 60\n  max_connections_per_source: 2\n"


def low_nofile():
    resource.setrlimit(resource.RLIMIT_NOFILE, (DAEMON_NOFILE, DAEMON_NOFILE))


class Flood(threading.Thread):
    """Keeps ``len(SOURCES) x PER_SOURCE`` connections open to one port, reopening closed ones.

    ``first`` is sent once connected, ``trickle`` (if any) every ``every`` seconds.
    """

    def __init__(self, port: int, first: bytes = b"", trickle: bytes = b"", every: float = 2.0):
        super().__init__(daemon=True)
        self.port, self.first, self.trickle, self.every = port, first, trickle, every
        # Sources interleaved (1, 2, ..., 100, 1, 2, ...): the kernel queues only
        # a listen backlog's worth of a burst of connects (the rest retry their SYN
        # later), and grouped by source one burst would come from a handful of
        # sources, each over its per-source cap, so the listener's total could stay
        # unreached on a loaded machine (seen once in CI).
        self.slots: list[list] = [[src, None, False] for _ in range(PER_SOURCE)
                                  for src in SOURCES]
        self.stop_event = threading.Event()
        self.paused = threading.Event()  # set: hold what is open, open nothing new
        self.opened = self.closed_by_peer = 0
        self.max_open = 0

    def _open(self, slot) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.bind((slot[0], 0))
            sock.connect_ex(("127.0.0.1", self.port))
        except OSError:
            sock.close()
            return
        slot[1], slot[2] = sock, False
        self.opened += 1

    def _alive(self, slot) -> bool:
        sock = slot[1]
        try:
            if sock.recv(4096) == b"":
                return False
        except BlockingIOError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                return False
        payload = self.trickle if slot[2] else self.first
        if payload:
            try:
                sock.send(payload)
                slot[2] = True
            except (BlockingIOError, InterruptedError):
                pass
            except OSError as exc:
                if exc.errno not in (errno.ENOTCONN, errno.EAGAIN):
                    return False
        return True

    def run(self) -> None:
        while not self.stop_event.is_set():
            if self.paused.is_set():
                self.stop_event.wait(0.05)
                continue
            open_now = 0
            for slot in self.slots:
                if slot[1] is not None and not self._alive(slot):
                    slot[1].close()
                    slot[1] = None
                    self.closed_by_peer += 1
                if slot[1] is None:
                    self._open(slot)
                open_now += slot[1] is not None
            self.max_open = max(self.max_open, open_now)
            self.stop_event.wait(self.every)

    def close(self) -> None:
        self.stop_event.set()
        self.join(10)
        for slot in self.slots:
            if slot[1] is not None:
                slot[1].close()
                slot[1] = None


def scrape(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def at_total(text: str, listener: str) -> float:
    """Connections refused at, or evicted to make room under, ``listener``'s total cap."""
    return (metric(text, f'pushproxy_connections_refused_total{{listener="{listener}",'
                         'reason="total"}')
            + metric(text, f'pushproxy_connections_evicted_total{{listener="{listener}"}}'))


def wait_for_metrics(port: int, holds, what: str, deadline: float = 90.0) -> str:
    """Scrape until ``holds(text)`` (bounded by ``deadline`` seconds); the last scrape."""
    started = time.monotonic()
    while True:
        text = scrape(port)
        if holds(text):
            return text
        if time.monotonic() - started > deadline:
            raise AssertionError(f"{what} not seen within {deadline:g} s:\n" + "\n".join(
                line for line in text.splitlines() if "connections_" in line
                or "ldap_front" in line or "deadline" in line))
        time.sleep(0.5)


def ldap_answers(port: int, attempts: int = 10) -> bool:
    """A fresh client's anonymous bind is answered (refused: anonymous binds are off).

    The flood keeps the listener at its total cap, and each of its new connections
    evicts the one waiting longest on its peer; on a loaded machine that can be
    ours before the daemon has read our request. A client then connects again,
    as this one does, a few times."""
    for attempt in range(attempts):
        try:
            if _one_bind(port):
                return True
        except (ConnectionResetError, BrokenPipeError):
            if attempt == attempts - 1:
                raise
        time.sleep(0.5)
    return False


def as_a_device(call, *args, deadline: float = 15.0, **kwargs):
    """``call`` (the CLI authenticator's), again while the daemon closes the connection
    unanswered: at the approval API's total cap a connection whose request the daemon
    has not read within a second can be evicted for a newer one, and a device then
    connects again (``authenticator watch`` does). Bounded by ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        try:
            return call(*args, **kwargs)
        except auth.NetworkError:
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def _one_bind(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(ber.bind_request(1, "", ""))
        data = b""
        while True:
            size = ber.frame_length(data, 1 << 20) if data else None
            if size is not None and len(data) >= size:
                break
            chunk = sock.recv(4096)
            if not chunk:
                return False
            data += chunk
    msg = ber.parse_message(data[:size])
    return msg.op_tag == ber.BIND_RESPONSE


def test_2000_slow_http_and_2000_idle_ldap_connections_do_not_stop_a_push(slapd, tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if want < 6000:
        pytest.skip(f"the test needs ~6,000 descriptors of its own; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    path, radius_port, http_port = served_config(tmp_path, slapd, metrics=True,
                                                 push="timeout: 20")
    front_port = free_port()
    text = path.read_text().replace("database: pushproxy.db\n",
                                    "database: pushproxy.db\n" + APPROVAL_CAPS)
    text += (f"ldap_front:\n  listen: [\"127.0.0.1:{front_port}\"]\n  require_tls: false\n"
             + FRONT_CAPS)
    path.write_text(text)
    metrics_port = int(text.split("metrics_listen: \"127.0.0.1:")[1].split('"')[0])
    serve = ServeProcess(path, preexec_fn=low_nofile)
    floods: list[Flood] = []
    try:
        serve.wait_for("daemon.ready")
        serve.wait_for(f"daemon.descriptors limit={DAEMON_NOFILE} ")  # it could not raise it
        state = enroll_device(path, tmp_path)
        floods = [Flood(http_port, first=b"GET /v1/info HTTP/1.1\r\nHost: x\r\n",
                        trickle=b"X-Slow: 1\r\n"),
                  Flood(front_port)]
        for flood in floods:
            flood.start()
        # The flood is in place: both listeners are at their total cap (the daemon's
        # own counters say so), whatever the machine's load made of the first seconds.
        wait_for_metrics(metrics_port, lambda text: all(
            at_total(text, name) > 0 for name in ("approval", "ldap_front")),
            "both listeners at their total cap")

        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            login = pool.submit(radclient_sync, f"127.0.0.1:{radius_port}", SECRET,
                                [("User-Name", "alice"), ("User-Password", "alice-pw"),
                                 ("Calling-Station-Id", "203.0.113.9"),
                                 ("Message-Authenticator", "0x00")], timeout=25)
            seen = []
            while not seen and time.monotonic() - started < 18:  # the push lasts 20 s
                seen = as_a_device(auth.pending, state, wait=2)
            assert seen, "the device never saw the push: " + serve.output()[-3000:]
            as_a_device(auth.answer, state, seen[0]["txid"], "approve")
            result = login.result(timeout=30)
        elapsed = time.monotonic() - started
        # An Accept is normal time: the push's 20 s timeout (a Reject) did not pass,
        # and radclient's one attempt was answered.
        assert result.code == "Access-Accept", result.stdout + result.stderr
        print(f"login approved in {elapsed:.2f} s under the flood; flood sockets opened: "
              f"http {floods[0].opened}, ldap {floods[1].opened}")
        print("\n".join(line for line in scrape(metrics_port).splitlines()
                        if "ldap_front" in line or "connections_" in line or "deadline" in line))

        health = requests.get(f"http://127.0.0.1:{metrics_port}/healthz", timeout=5)
        assert health.status_code == 200, health.text
        # A fresh LDAP client gets in by evicting a flood connection that has waited
        # on its peer a second or more. While the flood reconnects from 100 sources
        # without pause, every slot freed that way is raced by its queued connects
        # too, so the newcomer's chance depends on the machine's speed (CI saw 10
        # attempts in a row refused under load). Here the flood holds its connections
        # (the listener stays full) and opens no new ones while the client connects.
        floods[1].paused.set()
        time.sleep(1.5)  # the held connections pass the budget's min_wait (1 s)
        evicted = metric(scrape(metrics_port), "pushproxy_ldap_front_evicted_total")
        assert ldap_answers(front_port)
        # it got in at the full listener: a held flood connection made room for it
        wait_for_metrics(metrics_port, lambda text: metric(
            text, "pushproxy_ldap_front_evicted_total") > evicted,
            "a flood connection evicted for the fresh client", deadline=15)
        floods[1].paused.clear()

        # The slow ones were cut: by their 10 s head / first-message deadline
        # (trickling did not keep them open), or evicted first by newer ones.
        text = wait_for_metrics(metrics_port, lambda text: metric(
            text, 'pushproxy_http_deadline_closed_total{listener="approval",phase="head"}')
            + metric(text, 'pushproxy_connections_evicted_total{listener="approval"}') > 0
            and metric(text, "pushproxy_ldap_front_first_message_timeouts_total")
            + metric(text, "pushproxy_ldap_front_evicted_total") > 0,
            "slow connections cut")
        assert metric(text, 'pushproxy_connections_refused_total{listener="approval"') > 0
        assert metric(text, 'pushproxy_connections_refused_total{listener="ldap_front"') > 0
        assert all(f.max_open >= 1000 for f in floods), [f.max_open for f in floods]
        # RADIUS keeps answering while all of this goes on.
        again = radclient_sync(f"127.0.0.1:{radius_port}", SECRET,
                               [("User-Name", "alice"), ("User-Password", "wrong"),
                                ("Message-Authenticator", "0x00")], timeout=15)
        assert again.code == "Access-Reject", again.stdout + again.stderr
        assert "Too many open files" not in serve.output()
    finally:
        for flood in floods:
            flood.close()
        serve.close()


def closed_within(port: int, seconds: float, send: bytes = b"") -> float:
    """Seconds until the daemon closes a connection that sends ``send`` and then stalls."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=seconds) as sock:
        if send:
            sock.sendall(send)
        try:
            while sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
    return time.monotonic() - started


def test_stalled_tls_handshakes_are_bounded_on_the_approval_api_and_ldaps(slapd, tmp_path):
    """TLS sits under the read deadlines: a peer that never finishes its handshake is cut."""
    d = slapd.directory
    path, _, http_port = served_config(tmp_path, slapd)
    ldaps_port = free_port()
    text = path.read_text().replace(
        "database: pushproxy.db\n",
        f"database: pushproxy.db\n  tls_cert: {d / 'server.pem'}\n  tls_key: {d / 'server.key'}\n"
        "  header_timeout: 2\n")
    text += (f"ldap_front:\n  listen_ldaps: [\"127.0.0.1:{ldaps_port}\"]\n"
             f"  tls_cert: {d / 'server.pem'}\n  tls_key: {d / 'server.key'}\n"
             "  first_message_timeout: 2\n")
    path.write_text(text)
    serve = ServeProcess(path)
    try:
        serve.wait_for("daemon.ready")
        info = requests.get(f"https://127.0.0.1:{http_port}/v1/info", verify=slapd.ca_file,
                            timeout=5)
        assert info.status_code == 200
        # No ClientHello at all, and half of one: both end at the deadline, not later.
        assert closed_within(http_port, 10) < 6
        assert closed_within(http_port, 10, send=b"\x16\x03\x01\x02\x00\x01") < 6
        assert closed_within(ldaps_port, 10) < 6
    finally:
        serve.close()
