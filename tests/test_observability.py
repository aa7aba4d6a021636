"""Counters, histograms, the Prometheus rendering and the log formats."""

import io
import json
import logging

from prometheus_client.parser import text_string_to_metric_families

from pushproxy import logs, sdnotify
from pushproxy.metrics import Counters
from pushproxy.metrics_http import CountersCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry


def test_histogram_buckets_are_cumulative_and_end_with_inf():
    c = Counters()
    for value in (0.0005, 0.003, 0.003, 7.0, 500.0):
        c.observe("decision_seconds", value, outcome="accept")
    h = c.histogram("decision_seconds", outcome="accept")
    pairs = dict(h.cumulative())
    assert pairs["0.001"] == 1 and pairs["0.005"] == 3 and pairs["10.0"] == 4
    assert pairs["+Inf"] == 5 == h.count
    assert abs(h.sum - 507.0065) < 1e-9


def test_prometheus_exposition_parses_with_labels_histograms_and_gauges():
    c = Counters()
    c.inc("decisions", client="vpn", outcome="reject", reason="bad_credentials")
    c.inc("decisions", client="vpn", outcome="reject", reason="bad_credentials")
    c.inc("radius_drops", reason="unknown_client")
    c.observe("ldap_seconds", 0.004, server="ldap://a")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CountersCollector(c, {"pending_logins": ("doc", lambda: 7)}))
    families = {f.name: f for f in text_string_to_metric_families(
        generate_latest(registry).decode())}
    (sample,) = [s for s in families["pushproxy_decisions"].samples if s.name.endswith("_total")]
    assert sample.labels == {"client": "vpn", "outcome": "reject", "reason": "bad_credentials"}
    assert sample.value == 2
    ldap = {s.name: s.value for s in families["pushproxy_ldap_seconds"].samples
            if s.labels.get("le") in (None, "+Inf")}
    assert ldap["pushproxy_ldap_seconds_count"] == 1
    assert families["pushproxy_pending_logins"].samples[0].value == 7


def _capture(fmt):
    stream = io.StringIO()
    logs.setup("info", stream, fmt=fmt)
    logs.event(logging.getLogger("pushproxy.test"), logging.INFO, "login.decision",
               user='eve" injected=1\nsecond line', outcome="reject", latency_ms=1.5, txid=None)
    # Other loggers (Twisted's, with a reactor running) may write meanwhile: keep ours.
    return "".join(line + "\n" for line in stream.getvalue().splitlines()
                   if "login.decision" in line)


def test_text_log_lines_cannot_be_forged_by_hostile_values():
    out = _capture("text")
    assert out.count("\n") == 1
    assert 'user="eve\\" injected=1\\nsecond line"' in out
    assert "txid" not in out


def test_json_log_lines_carry_the_event_and_fields():
    record = json.loads(_capture("json"))
    assert record["event"] == "login.decision" and record["outcome"] == "reject"
    assert record["user"] == 'eve" injected=1\nsecond line' and record["latency_ms"] == 1.5


def test_sdnotify_is_silent_without_a_socket_and_sends_to_abstract_ones():
    assert sdnotify.notify("READY=1", env={}) is False
    import socket
    name = "pushproxy-test-notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        assert sdnotify.notify("READY=1", env={"NOTIFY_SOCKET": "@" + name})
        assert s.recv(100) == b"READY=1"
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None


def test_log_values_are_bare_exactly_when_made_of_the_safe_ascii_characters():
    """`logs._value` (a compiled pattern since issue 16) writes a value bare exactly
    when every character is one of the safe ASCII set, as the per-character test
    did: non-ASCII letters and digits ("²", "é", the Kelvin sign), spaces, quotes,
    newlines and the empty string are quoted."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@[]+=,")
    samples = [chr(c) for c in range(0x3000)] + [
        "", "alice", "10.0.0.1", "[::1]:1812", "a b", 'x"y', "a\nb", "\u00b2", "caf\u00e9",
        "\u212a", "x" * 300, "ok-" + "\u0661", "-", "a=b,c"]
    for text in samples:
        bare = bool(text) and all(ch in safe for ch in text)
        expected = text if bare else json.dumps(text, ensure_ascii=True)
        assert logs._value(text) == expected, repr(text)
    assert logs._value(12.5) == "12.5" and logs._value(None) == "None"


def test_a_line_is_the_per_value_rule_applied_to_each_value():
    """`logs.event` tests a line's values together (one search, issue 16); the line
    must be what the per-value rule (`logs._value`) makes of each: values with
    spaces, empty ones and unsafe characters in any position among safe ones."""
    import random

    class Lines(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    seen: list[str] = []
    logger = logging.getLogger("pushproxy.test.lines")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = Lines()
    logger.addHandler(handler)
    rnd = random.Random(16)
    alphabet = ["a", "1", "=", ",", " ", "", '"', "\n", "\u00e9", ":"]
    cases = [{}, {"a": ""}, {"a": "x y"}, {"a": "", "b": "x y"}, {"a": "x y", "b": ""},
             {"a": 1.5, "b": True, "c": None, "d": 7}, {"a": " ", "b": "x"}]
    cases += [{f"k{i}": "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 3)))
               for i in range(rnd.randint(1, 4))} for _ in range(3000)]
    try:
        for fields in cases:
            seen.clear()
            logs.event(logger, logging.INFO, "ev", **fields)
            expected = " ".join(["ev"] + [f"{k}={logs._value(v)}" for k, v in fields.items()
                                          if v is not None])
            assert seen == [expected], fields
    finally:
        logger.removeHandler(handler)
