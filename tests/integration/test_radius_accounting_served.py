"""The accounting listener of a served daemon (`pushproxy serve`) under hostile datagrams.

`radius.accounting_listen` on the real daemon, a child process, from raw
UDP sockets on loopback: malformed and oversized datagrams, a wrong secret
(a bad Request Authenticator), a bad Message-Authenticator, another code,
an unknown source address and a flood of all of them. Each is a silent
drop: no answer, a ``radius_accounting_drops{reason}`` counter on /metrics
and a ``radius.accounting_drop`` log line (rate-limited: a flood writes a
few lines, not one per datagram), while Access-Requests on the
authentication port go on being answered. A retransmitted Accounting-Request
(same source, id and Request Authenticator, RFC 2866 / RFC 5080 2.2.2) is
handled once and answered from the cache with identical bytes.

Absence of an answer is shown without waiting for a timeout: after the bad
datagrams, the same socket sends a valid request (the *probe*). The daemon
reads its socket in order on one thread, so an answer to a bad datagram
would arrive before the probe's answer; nothing but the probe's answer may.
Packets are built here with hashlib from RFC 2866 section 3, not with the
daemon's codec.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
import struct
import time

import pytest
import requests

from tests.integration.harness import SECRET, ServeProcess
from tests.integration.radclient import radclient_sync
from tests.integration.test_operations import free_port, metric, served_config

ACCOUNTING_REQUEST, ACCOUNTING_RESPONSE = 4, 5
KEY = SECRET.encode()


def attr(kind: int, value: bytes) -> bytes:
    return bytes([kind, 2 + len(value)]) + value


def record(status: int = 1, user: bytes = b"alice", session: bytes = b"sess-1") -> bytes:
    """Acct-Status-Type, User-Name and Acct-Session-Id."""
    return attr(40, status.to_bytes(4, "big")) + attr(1, user) + attr(44, session)


def accounting_request(ident: int, attrs: bytes, secret: bytes = KEY, *,
                       code: int = ACCOUNTING_REQUEST, message_authenticator: bytes | None = None,
                       length: int | None = None) -> bytes:
    """An Accounting-Request signed per RFC 2866 3 (``length``: a lying Length field).

    ``message_authenticator``: b"" for a correct one (HMAC-MD5 over the packet with
    both authenticator fields zeroed), or these 16 octets as they are."""
    if message_authenticator is not None:
        attrs = attr(80, bytes(16)) + attrs
    size = 20 + len(attrs)
    head = struct.pack("!BBH", code, ident, size)
    if message_authenticator == b"":
        mac = hmac.new(secret, head + bytes(16) + attrs, hashlib.md5).digest()
        attrs = attrs[:2] + mac + attrs[18:]
    elif message_authenticator is not None:
        attrs = attrs[:2] + message_authenticator + attrs[18:]
    authenticator = hashlib.md5(head + bytes(16) + attrs + secret).digest()
    if length is not None:
        head = struct.pack("!BBH", code, ident, length)
    return head + authenticator + attrs


def check_response(reply: bytes, request: bytes, secret: bytes = KEY) -> None:
    """An Accounting-Response to ``request`` with a valid Response Authenticator."""
    assert reply[0] == ACCOUNTING_RESPONSE and reply[1] == request[1], reply[:2]
    expected = hashlib.md5(reply[:4] + request[4:20] + reply[20:] + secret).digest()
    assert hmac.compare_digest(reply[4:20], expected), "bad Response Authenticator"


class Peer:
    """A UDP socket on ``host`` talking to one port of the daemon (accounting by
    default; tests/integration/test_radius_size_rule.py uses it on both)."""

    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)  # 65,507 octets
        self.sock.bind((host, 0))

    def send(self, data: bytes) -> None:
        assert self.sock.sendto(data, ("127.0.0.1", self.port)) == len(data)

    def exchange(self, request: bytes, code: int = ACCOUNTING_RESPONSE,
                 deadline: float = 20.0) -> tuple[bytes, list[bytes]]:
        """Send ``request`` (again every 2 s, as a NAS retransmits) until the reply with
        its id and ``code`` comes; the reply and every datagram received before it."""
        others: list[bytes] = []
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            self.send(request)
            self.sock.settimeout(2.0)
            try:
                while True:
                    data = self.sock.recv(65536)
                    if data[:2] == bytes([code, request[1]]):
                        return data, others
                    others.append(data)
            except socket.timeout:
                continue
        raise AssertionError(f"no answer to the probe in {deadline:g} s")

    def pending(self) -> list[bytes]:
        """Datagrams already waiting on the socket (none: nothing was answered)."""
        self.sock.setblocking(False)
        got = []
        try:
            while True:
                got.append(self.sock.recv(65536))
        except BlockingIOError:
            return got
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def served(slapd, tmp_path_factory):
    """One served daemon with an accounting port and /metrics: (serve, acct_port,
    radius_port, metrics_port)."""
    tmp_path = tmp_path_factory.mktemp("acct-served")
    path, radius_port, _ = served_config(tmp_path, slapd, metrics=True)
    acct_port = free_port(socket.SOCK_DGRAM)
    text = path.read_text().replace(
        f'listen: ["127.0.0.1:{radius_port}"]\n',
        f'listen: ["127.0.0.1:{radius_port}"]\n'
        f'  accounting_listen: ["127.0.0.1:{acct_port}"]\n', 1)
    assert "accounting_listen" in text
    path.write_text(text)
    metrics_port = int(text.split("metrics_listen: \"127.0.0.1:")[1].split('"')[0])
    serve = ServeProcess(path)
    try:
        serve.wait_for("daemon.ready", deadline=30)
        serve.wait_for("radius.accounting_listening")
        yield serve, acct_port, radius_port, metrics_port
    finally:
        serve.close()


def scrape(port: int) -> str:
    return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def drops(text: str, reason: str) -> float:
    return metric(text, f'pushproxy_radius_accounting_drops_total{{reason="{reason}"}}')


def counters_reach(port: int, wanted: dict[str, float], before: str,
                   deadline: float = 20.0) -> str:
    """Scrape until each drop reason has grown by (at least) its count; the last scrape.

    The daemon counts before it reads the next datagram, but /metrics is a
    rendering made by another thread: wait for it (bounded), then compare."""
    end = time.monotonic() + deadline
    while True:
        text = scrape(port)
        grown = {reason: drops(text, reason) - drops(before, reason) for reason in wanted}
        if all(grown[reason] >= count for reason, count in wanted.items()) \
                or time.monotonic() > end:
            return text
        time.sleep(0.2)


def drop_logged(serve: ServeProcess, reason: str, source: str = "127.0.0.1") -> str:
    """The ``radius.accounting_drop`` line for ``reason`` from ``source`` (waited for)."""
    pattern = rf"radius\.accounting_drop reason={reason} source={re.escape(source)}( |$)"
    return serve.wait_count(pattern, 1)[0]


def reject_for_wrong_password(radius_port: int) -> str | None:
    """An Access-Request on the authentication port: its answer's code name."""
    result = radclient_sync(f"127.0.0.1:{radius_port}", SECRET,
                            [("User-Name", "alice"), ("User-Password", "wrong"),
                             ("Message-Authenticator", "0x00")], timeout=10)
    return result.code


def filled(size: int) -> bytes:
    """Attributes (a record, then Class attributes) making a packet of exactly ``size`` octets."""
    attrs, left = record(), size - 20 - len(record())
    while left:
        chunk = min(255, left) if left - min(255, left) not in (1,) else 200
        attrs += attr(25, b"c" * (chunk - 2))
        left -= chunk
    return attrs


HOSTILE = {
    "short": b"\x04\x01\x00\x14" + bytes(10),
    "length_below_header": accounting_request(11, record(), length=12),
    "length_beyond_datagram": accounting_request(12, record(), length=200),
    "attribute_overruns": accounting_request(13, record() + b"\x01\x40abc"),
    "attribute_length_zero": accounting_request(14, record() + b"\x01\x00"),
    "oversized_packet": accounting_request(15, filled(5000)),  # Length 5000, 5000 octets
    "padded_past_4096": accounting_request(16, record()) + bytes(4097 - 20 - len(record())),
    "oversized_datagram": accounting_request(18, record()) + bytes(60000),
    "two_message_authenticators": accounting_request(
        17, attr(80, bytes(16)) + record(), message_authenticator=b""),
}


def test_malformed_and_oversized_datagrams_are_dropped_counted_and_logged(served):
    serve, acct_port, radius_port, metrics_port = served
    before = scrape(metrics_port)
    peer = Peer(acct_port)
    try:
        for data in HOSTILE.values():
            peer.send(data)
        probe = accounting_request(21, record(session=b"probe-malformed"))
        answer, others = peer.exchange(probe)
    finally:
        peer.close()
    check_response(answer, probe)
    assert others == [], others  # not one bad datagram got an answer
    text = counters_reach(metrics_port, {"malformed": len(HOSTILE)}, before)
    # an oversized datagram (past the 4,096 octets RADIUS allows) is malformed too
    assert drops(text, "malformed") - drops(before, "malformed") == len(HOSTILE)
    assert "detail=" in drop_logged(serve, "malformed")
    assert "Traceback" not in serve.output() and "accounting_failed" not in serve.output()
    assert reject_for_wrong_password(radius_port) == "Access-Reject"


def test_wrong_secret_bad_message_authenticator_and_other_codes_are_dropped(served):
    serve, acct_port, radius_port, metrics_port = served
    before = scrape(metrics_port)
    forged = accounting_request(31, record(), secret=b"not-the-shared-secret")
    tampered = bytearray(accounting_request(32, record(user=b"alice")))
    tampered[-1] ^= 0x01  # an attribute changed after signing
    bad_mac = accounting_request(33, record(), message_authenticator=b"\x5a" * 16)
    access = accounting_request(34, attr(1, b"alice"), code=1)  # Access-Request here
    reply_code = accounting_request(35, record(), code=ACCOUNTING_RESPONSE)
    peer = Peer(acct_port)
    try:
        for data in (forged, bytes(tampered), bad_mac, access, reply_code):
            peer.send(data)
        probe = accounting_request(36, record(session=b"probe-auth"), message_authenticator=b"")
        answer, others = peer.exchange(probe)
    finally:
        peer.close()
    check_response(answer, probe)
    assert answer[20:22] == bytes([80, 18]), "Message-Authenticator first in the response"
    assert others == [], others
    wanted = {"bad_request_authenticator": 2, "bad_message_authenticator": 1,
              "unsupported_code": 2}
    text = counters_reach(metrics_port, wanted, before)
    for reason, count in wanted.items():
        assert drops(text, reason) - drops(before, reason) == count, reason
        drop_logged(serve, reason)
    assert SECRET not in serve.output()  # the log names the reason, never the secret
    assert reject_for_wrong_password(radius_port) == "Access-Reject"


def test_an_unknown_source_address_is_dropped_counted_and_logged(served):
    """127.0.0.2 is no client: a request signed with the right secret gets no answer."""
    serve, acct_port, radius_port, metrics_port = served
    before = scrape(metrics_port)
    stranger, known = Peer(acct_port, host="127.0.0.2"), Peer(acct_port)
    try:
        stranger.send(accounting_request(41, record(session=b"stranger")))
        # the known client's probe is read after the stranger's datagram: any answer
        # to the stranger would be on its socket before the probe is answered
        probe = accounting_request(42, record(session=b"probe-unknown"))
        answer, others = known.exchange(probe)
        stray = stranger.pending()
    finally:
        stranger.close()
        known.close()
    check_response(answer, probe)
    assert others == [] and stray == [], (others, stray)
    text = counters_reach(metrics_port, {"unknown_client": 1}, before)
    assert drops(text, "unknown_client") - drops(before, "unknown_client") == 1
    drop_logged(serve, "unknown_client", source="127.0.0.2")


def test_a_retransmit_is_handled_once_and_answered_with_the_identical_bytes(served):
    serve, acct_port, _, metrics_port = served
    before = scrape(metrics_port)
    session = b"retransmitted-session"
    request = accounting_request(51, record(status=2, session=session))
    peer = Peer(acct_port)
    try:
        answers = [peer.exchange(request)[0] for _ in range(3)]
        # a new id is a new request (RFC 2866: the id and authenticator make the key)
        fresh = accounting_request(52, record(status=2, session=session))
        other, _ = peer.exchange(fresh)
    finally:
        peer.close()
    check_response(answers[0], request)
    check_response(other, fresh)
    assert answers[0] == answers[1] == answers[2]
    end = time.monotonic() + 20
    while True:
        text = scrape(metrics_port)
        handled = metric(text, 'pushproxy_radius_accounting_total{client="test-nas",'
                               'status="stop"}') \
            - metric(before, 'pushproxy_radius_accounting_total{client="test-nas",status="stop"}')
        resent = metric(text, "pushproxy_radius_accounting_retransmits_total") \
            - metric(before, "pushproxy_radius_accounting_retransmits_total")
        if (handled, resent) == (2, 2) or time.monotonic() > end:
            break
        time.sleep(0.2)
    # the peer may have resent on its own 2 s timer on a slow machine: only more resends
    assert handled == 2 and resent >= 2, (handled, resent)
    logged = serve.wait_count(rf"radius\.accounting .*session={session.decode()}", 2)
    assert len(logged) == 2, logged  # one line per request, none per retransmit


def test_a_flood_of_hostile_datagrams_is_dropped_while_logins_are_answered(served):
    """6,000 bad datagrams from two addresses: each dropped and counted, a few log
    lines in all, and Access-Requests answered throughout."""
    serve, acct_port, radius_port, metrics_port = served
    before = scrape(metrics_port)
    lines_before = len(serve.lines)
    kinds = [accounting_request(i % 256, record(), secret=b"flooder") for i in range(50)] \
        + list(HOSTILE.values())
    known, stranger = Peer(acct_port), Peer(acct_port, host="127.0.0.3")
    sent = 0
    codes = []
    try:
        for burst in range(6):
            for i in range(1000):
                (stranger if i % 4 == 0 else known).send(kinds[i % len(kinds)])
                sent += 1
            codes.append(reject_for_wrong_password(radius_port))
        probe = accounting_request(61, record(session=b"probe-flood"))
        answer, others = known.exchange(probe)
        stray = stranger.pending()
    finally:
        known.close()
        stranger.close()
    check_response(answer, probe)
    assert others == [] and stray == [], (len(others), len(stray))
    assert codes == ["Access-Reject"] * 6, codes
    text = counters_reach(metrics_port, {"malformed": 1, "bad_request_authenticator": 1,
                                         "unknown_client": 1}, before)
    counted = sum(drops(text, reason) - drops(before, reason)
                  for reason in ("bad_request_authenticator", "malformed", "unknown_client"))
    # The kernel may drop datagrams when the socket's buffer is full; those the
    # daemon read were all counted as drops (none answered, none lost to an error).
    assert 0 < counted <= sent, (counted, sent)
    assert drops(text, "internal_error") == 0
    serve.wait_count(r"radius\.accounting_drop reason=unknown_client source=127\.0\.0\.3$", 1,
                     start=lines_before)
    new_lines = serve.lines[lines_before:]
    logged = [line for line in new_lines if "radius.accounting_drop " in line]
    assert 0 < len(logged) <= 20, logged  # rate-limited, not one line per datagram
    assert not any(re.search(r"\berror\b|Traceback", line) for line in new_lines), new_lines[:20]
