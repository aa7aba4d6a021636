"""Replayed device requests count against the source's failure limit, on the running daemon.

A device request is signed over its method, path, timestamp, nonce and body; a
copy sent again (a replay) is refused 401 "replayed request" and changes nothing.
Such a refusal is a refused authentication like a forged signature, so it must
count against the sending address in the approval API's per-source limit
(``approval.max_failures``, `FailureLimiter` kind ``device_auth``): after that
many refusals the address is answered 429 with Retry-After, even for a fresh,
valid request, until the window moves on.

One SQLite daemon (``pushproxy serve``) catches a replay in memory before the
signature check; a cluster node (PostgreSQL) claims the nonce of a long-poll or
an answer in the store with that request's own call, after the authentication:
a request replayed to another node was refused there without being counted
(what this file was written for). A device re-sending after a network error
signs again with a new nonce: that is no replay and never counts, whatever the
answer (409 for an answer already recorded).

Real processes: pushproxy serve (one, then two over one PostgreSQL), slapd,
radclient, PostgreSQL.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import time

import pytest
import requests

from pushproxy.approval import authenticator as auth
from pushproxy.approval import crypto
from tests.integration.cluster import Cluster, attrs, wait_pending
from tests.integration.harness import SECRET, ServeProcess
from tests.integration.radclient import radclient_sync
from tests.integration.test_operations import (MA, enroll_device, metric, scrape,
                                               served_config)

LIMIT = 4  # approval.max_failures in these tests
PENDING = "/v1/device/pending?wait=0"
ANSWER = "/v1/device/answer"


class Phone:
    """An enrolled device that signs its requests by hand, so they can be sent twice."""

    def __init__(self, state: str):
        self.device, self.key = auth.load_state(state)

    def pending(self) -> tuple[str, dict, bytes]:
        return ("GET", crypto.device_headers(self.key, self.device.device_id, "GET", PENDING,
                                             b""), b"")

    def answer(self, entry: dict, decision: str = "approve") -> tuple[str, dict, bytes]:
        sig = crypto.sign(self.key, crypto.answer_text(entry["txid"], entry["nonce"], decision,
                                                       entry["username"],
                                                       self.device.device_id))
        body = json.dumps({"txid": entry["txid"], "decision": decision,
                           "signature": sig}).encode()
        return ("POST", crypto.device_headers(self.key, self.device.device_id, "POST", ANSWER,
                                              body), body)


def send(base: str, signed: tuple[str, dict, bytes]) -> requests.Response:
    method, headers, body = signed
    path = PENDING if method == "GET" else ANSWER
    return requests.request(method, base + path, headers=headers, data=body or None,
                            timeout=15)


def codes(base: str, signed: tuple[str, dict, bytes], times: int) -> list[int]:
    return [send(base, signed).status_code for _ in range(times)]


def counted(metrics_port: int) -> tuple[float, float]:
    """(device_auth_failures, approval_rate_limited{kind="device_auth"}) from /metrics."""
    text = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    return (metric(text, "pushproxy_device_auth_failures_total"),
            metric(text, 'pushproxy_approval_rate_limited_total{kind="device_auth"}'))


def refused_lines(serve: ServeProcess) -> list[str]:
    return [line for line in serve.lines if "approval.device_refused" in line]


def assert_limited(base: str, phone: Phone) -> None:
    """A fresh, valid request from the limited address: 429 with Retry-After."""
    fresh = send(base, phone.pending())
    assert fresh.status_code == 429, (fresh.status_code, fresh.text)
    assert fresh.json()["error"] == "too_many_failures"
    assert 1 <= int(fresh.headers["Retry-After"]) <= 300


def test_replays_to_one_sqlite_daemon_count_against_the_source(slapd, tmp_path):
    path, radius_port, http_port = served_config(tmp_path, slapd, metrics=True)
    text = path.read_text().replace("database: pushproxy.db\n",
                                    f"database: pushproxy.db\n  max_failures: {LIMIT}\n")
    path.write_text(text)
    metrics_port = int(re.search(r'metrics_listen: "127\.0\.0\.1:(\d+)"', text).group(1))
    base = f"http://127.0.0.1:{http_port}"
    serve = ServeProcess(path)
    try:
        serve.wait_for("daemon.ready", 30)
        state = enroll_device(path, tmp_path)
        phone = Phone(state)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            login = pool.submit(radclient_sync, f"127.0.0.1:{radius_port}", SECRET,
                                [("User-Name", "alice"), ("User-Password", "alice-pw"),
                                 ("Calling-Station-Id", "203.0.113.50"), MA], timeout=30)
            entry = wait_pending(state)[0]
            poll, answer = phone.pending(), phone.answer(entry)
            assert send(base, poll).status_code == 200
            assert send(base, answer).json() == {"status": "recorded"}
            assert login.result(timeout=30).code == "Access-Accept", serve.output()
        # Re-sent after a network error: signed again (a new nonce), no replay. Refused as
        # already answered, more often than the limit, and never counted.
        assert [send(base, phone.answer(entry)).status_code
                for _ in range(LIMIT + 1)] == [409] * (LIMIT + 1)
        assert send(base, phone.pending()).status_code == 200
        assert counted(metrics_port) == (0, 0)

        assert codes(base, poll, 2) + codes(base, answer, 2) == [401] * LIMIT
        assert_limited(base, phone)
        assert counted(metrics_port) == (LIMIT, 1)
        # Each replay: one log line; nothing changed (one decision, audited once).
        assert len(refused_lines(serve)) == LIMIT
        assert all("replayed request" in line for line in refused_lines(serve))
        events = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
        assert [e["reason"] for e in events] == ["push_approved"]
        assert "Traceback" not in serve.output()
    finally:
        serve.close()


@pytest.fixture
def cluster(slapd, postgres, tmp_path):
    made: list[Cluster] = []
    yield lambda **kw: made.append(Cluster(tmp_path, slapd, postgres, **kw)) or made[-1].start()
    for c in made:
        c.close()


def test_replays_to_another_cluster_node_count_against_the_source(cluster):
    """Each request is used once at node 1, then replayed once to node 2: there its
    nonce is new in memory and found used in the store (by the long-poll's list, by
    the answer's compare-and-set). Every such refusal counts at node 2."""
    c = cluster(count=2, approval=f"  max_failures: {LIMIT}\n")
    state = c.enroll("dave", c[1])
    phone = Phone(state)
    at1, at2 = c[1].url, c[2].url
    login = c.login(c[1], attrs("dave", station="198.51.100.60"))
    entry = wait_pending(state)[0]
    answer = phone.answer(entry)
    assert send(at1, answer).json() == {"status": "recorded"}
    assert login.result(timeout=30).code == "Access-Accept", c.output()
    polls = [phone.pending() for _ in range(LIMIT - 1)]
    assert [send(at1, poll).status_code for poll in polls] == [200] * (LIMIT - 1)
    # Not a replay: the answer signed again, at the other node (already answered).
    assert codes(at2, phone.answer(entry), 1) == [409]
    assert send(at2, phone.pending()).status_code == 200

    replayed = [send(at2, answer)] + [send(at2, poll) for poll in polls]
    assert [(r.status_code, r.json()["message"]) for r in replayed] == \
        [(401, "replayed request")] * LIMIT
    assert_limited(at2, phone)
    assert counted(c[2].metrics_port) == (LIMIT, 1)
    assert len(refused_lines(c[2].serve)) == LIMIT
    # Node 1 saw no refusal: its limit for this address is untouched.
    assert send(at1, phone.pending()).status_code == 200
    assert counted(c[1].metrics_port) == (0, 0)
    assert [e["reason"] for e in c.audit("dave")] == ["push_approved"]
    assert "Traceback" not in c.output()
