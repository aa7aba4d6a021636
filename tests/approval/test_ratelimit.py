"""The per-source limit on failed enrollments and device logins, with a Clock.

Unit tests of `FailureLimiter`, then the whole API (real Site, service and
SQLite store, `fuzz.approval_target.Harness`): a source that guessed wrong
enrollment tokens ten times gets 429 even with the right one, other sources
are unaffected, and the window moving on lets it in again.
"""

import ipaddress
import logging

from twisted.internet.task import Clock

from fuzz.approval_target import NEW_PUBLIC, Harness, http_request, json_body
from pushproxy.approval.ratelimit import FailureLimiter
from pushproxy.metrics import Counters


def limiter(**kw):
    clock = Clock()
    clock.advance(1000)
    kw.setdefault("max_failures", 3)
    kw.setdefault("window", 60)
    return FailureLimiter(clock=clock, counters=Counters(), kind="enroll", **kw), clock


def test_a_source_is_refused_after_max_failures_until_the_oldest_leaves_the_window():
    lim, clock = limiter()
    for _ in range(2):
        lim.failed("192.0.2.1")
        clock.advance(10)
    assert lim.retry_after("192.0.2.1") is None
    lim.failed("192.0.2.1")
    assert lim.retry_after("192.0.2.1") == 40  # the first failure was 20 s ago
    assert lim.retry_after("192.0.2.2") is None
    clock.advance(40)
    assert lim.retry_after("192.0.2.1") is None  # one failure left the window
    lim.failed("192.0.2.1")
    assert lim.retry_after("192.0.2.1") == 10
    assert lim.counters.get("approval_rate_limited", kind="enroll") == 2


def test_memory_is_bounded_by_max_sources_and_expired_sources_are_forgotten():
    lim, clock = limiter(max_sources=100)
    for i in range(5000):
        lim.failed(f"10.0.{i // 250}.{i % 250}")
    assert len(lim) == 100
    clock.advance(61)
    assert lim.retry_after("10.0.19.249") is None and len(lim) == 99


def test_the_limit_is_logged_once_when_reached(caplog):
    lim, clock = limiter()
    with caplog.at_level(logging.WARNING, logger="pushproxy.approval"):
        for _ in range(3):
            lim.failed("192.0.2.1")
        for _ in range(5):
            lim.retry_after("192.0.2.1")
    lines = [r.getMessage() for r in caplog.records if "approval.rate_limited" in r.getMessage()]
    assert len(lines) == 1 and "source=192.0.2.1" in lines[0] and "kind=enroll" in lines[0]


def test_zero_turns_the_limit_off_and_unknown_sources_are_never_limited():
    lim, clock = limiter(max_failures=0)
    for _ in range(100):
        lim.failed("192.0.2.1")
        lim.failed(None)
    assert lim.retry_after("192.0.2.1") is None and len(lim) == 0


# -- through the API


def enroll(h, token, source=None):
    body = {"token": token, "public_key": NEW_PUBLIC, "name": "new phone",
            "signature": h.sign_enroll(token, NEW_PUBLIC, "new phone")}
    return h.exchange(http_request("POST", "/v1/enroll", {}, json_body(body)), settle=1,
                      source=source)


def test_guessing_enrollment_tokens_gets_a_source_429_even_with_the_right_token():
    h = Harness()
    for i in range(10):
        assert enroll(h, f"guess-{i}") == [403]
    assert enroll(h, h.token) == [429]
    assert b"Retry-After: 290\r\n" in h.last_response  # 300 s window, 10 x 1 s have passed
    assert h.store.devices("alice") and len(h.store.devices("alice")) == 1  # not redeemed
    assert h.counters.get("approval_rate_limited", kind="enroll") == 1
    assert enroll(h, "guess-x", source="198.51.100.99") == [403]  # other sources: unaffected
    h.clock.advance(300)
    assert enroll(h, h.token) == [201]
    assert len(h.store.devices("alice")) == 2


def test_refused_device_logins_get_a_source_429_before_any_signature_check():
    h = Harness()
    body = b""
    for i in range(10):
        headers = h.sign_request("GET", "/v1/device/pending", body, f"{i:022d}")
        headers["X-Signature"] = "A" * 86  # forged
        assert h.exchange(http_request("GET", "/v1/device/pending", headers, body),
                          settle=1) == [401]
    failures = h.counters.get("device_auth_failures")
    headers = h.sign_request("GET", "/v1/device/pending", body, "v" * 22)  # valid now
    assert h.exchange(http_request("GET", "/v1/device/pending", headers, body),
                      settle=1) == [429]
    assert h.counters.get("device_auth_failures") == failures  # not even checked
    ok = h.sign_request("GET", "/v1/device/pending", body, "w" * 22)
    assert h.exchange(http_request("GET", "/v1/device/pending", ok, body), settle=1,
                      source="198.51.100.7") == [200]


# -- behind a reverse proxy (approval.trusted_proxies)


def behind_proxy(h, proxies=("127.0.0.1/32",)):
    h.site.trusted_proxies = tuple(ipaddress.ip_network(p) for p in proxies)
    return h


def forwarded_enroll(h, token, forwarded_for, peer="127.0.0.1"):
    body = {"token": token, "public_key": NEW_PUBLIC, "name": "new phone",
            "signature": h.sign_enroll(token, NEW_PUBLIC, "new phone")}
    raw = http_request("POST", "/v1/enroll", {"X-Forwarded-For": forwarded_for}, json_body(body))
    return h.exchange(raw, settle=1, source=peer)


def test_behind_a_trusted_proxy_one_clients_guesses_do_not_block_the_others():
    """Without trusted_proxies every request would have the proxy's address, so
    ten wrong guesses from anyone would lock everyone out of enrollment."""
    h = behind_proxy(Harness())
    for i in range(10):
        assert forwarded_enroll(h, f"guess-{i}", "203.0.113.66") == [403]
    assert forwarded_enroll(h, "guess-x", "203.0.113.66") == [429]
    assert forwarded_enroll(h, h.token, "198.51.100.20") == [201]  # another client: unaffected


def test_x_forwarded_for_is_ignored_from_a_peer_that_is_not_a_trusted_proxy():
    """A client cannot escape its limit by writing a new X-Forwarded-For each time."""
    h = behind_proxy(Harness(), proxies=("10.9.9.9/32",))
    for i in range(10):
        assert forwarded_enroll(h, f"guess-{i}", f"198.51.100.{i}", peer="203.0.113.66") == [403]
    assert forwarded_enroll(h, h.token, "198.51.100.200", peer="203.0.113.66") == [429]


def test_the_chain_is_read_from_the_right_and_spoofed_hops_on_the_left_do_not_count():
    """nginx appends the address it saw: "spoofed, real-client, inner-proxy" from the
    outer proxy means the client is real-client, whatever the client wrote first."""
    h = behind_proxy(Harness(), proxies=("127.0.0.1/32", "10.0.0.0/8"))
    for i in range(10):
        chain = f"192.0.2.{i}, 203.0.113.66, 10.1.2.3"  # a new spoofed hop each time
        assert forwarded_enroll(h, f"guess-{i}", chain) == [403]
    assert forwarded_enroll(h, h.token, "192.0.2.250, 203.0.113.66, 10.1.2.3") == [429]
    assert forwarded_enroll(h, "guess-y", "garbage, 198.51.100.5") == [403]  # parses to .5


def test_a_chain_that_does_not_parse_ends_at_the_proxy_itself():
    h = behind_proxy(Harness())
    for i in range(10):
        assert forwarded_enroll(h, f"guess-{i}", "not-an-address") == [403]
    # Every unparsable request counted against the proxy's own address.
    assert forwarded_enroll(h, h.token, "also garbage") == [429]
    assert forwarded_enroll(h, h.token, "198.51.100.20") == [201]
