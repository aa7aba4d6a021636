"""Store round trips per push login, as the daemon counts them (``store_calls`` and
``store_commits`` by method: the figures /metrics shows), with a real daemon, slapd,
radclient and the command-line authenticator long-polling and approving.

The approved login's path on a single node: the lock check and the transaction
(`user_lock`, `open_transaction`), then the device's three requests (the long-poll,
the list before answering, the answer), each authenticated, and the answer's
compare-and-set. What is served from memory (the node's own pending transactions,
and over SQLite the answer's device, read before while no other process wrote to
the file) costs no round trip; the compare-and-set always goes to the store.

Run with ``-s`` to see the figures (docs/benchmarks.md, "Store round trips per login").
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient
from tests.integration.test_approval_e2e import first_request, login_attrs

LOGINS = 4


def by_method(counters, name: str) -> dict[str, int]:
    return {labels["method"]: value for counter, labels, value in counters.counters()
            if counter == name}


def per_login(after: dict, before: dict) -> dict[str, float]:
    return {method: (count - before.get(method, 0)) / LOGINS
            for method, count in sorted(after.items()) if count != before.get(method, 0)}


@pytest_twisted.inlineCallbacks
def test_an_approved_push_login_costs_few_store_round_trips(stacks):
    stack = yield stacks()
    state = yield stack.device()
    counters = stack.daemon.counters
    calls, commits = by_method(counters, "store_calls"), by_method(counters, "store_commits")
    for i in range(LOGINS):
        login = radclient(stack.radius, SECRET, login_attrs(station=f"198.51.100.{10 + i}"),
                          timeout=30)
        request = yield threads.deferToThread(first_request, state)
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        assert (yield login).code == "Access-Accept"
    calls = per_login(by_method(counters, "store_calls"), calls)
    commits = per_login(by_method(counters, "store_commits"), commits)
    print(f"store calls per login: {sum(calls.values()):.2f} {calls}")
    print(f"store commits per login: {sum(commits.values()):.2f} {commits}")
    # the answer's compare-and-set is durable: one commit per login at least
    assert calls.get("decide_transaction") == 1 and commits.get("decide_transaction") == 1
    # The device: read by every request before (3 per login); the answer's now comes
    # from memory while nothing else writes the file (measured 2.0; 3 only if the
    # store thread sat idle over a second between list and answer, VERSION_FRESH).
    assert calls.get("device", 0) < 3
    assert sum(calls.values()) < 6.25  # measured 5.25 (was 6.25)


# Background calls of a cluster node, not made by a login.
BACKGROUND = ("heartbeat", "purge_login_state", "retire_stale", "setting_or_create")


def scrape(url: str) -> dict[str, dict[str, float]]:
    """``store_calls`` and ``store_commits`` by method, from a node's /metrics."""
    import re

    import requests

    found: dict[str, dict[str, float]] = {"calls": {}, "commits": {}}
    for line in requests.get(url, timeout=5).text.splitlines():
        match = re.match(r'pushproxy_store_(calls|commits)_total\{method="(\w+)"\} (\S+)', line)
        if match and match.group(2) not in BACKGROUND:
            found[match.group(1)][match.group(2)] = float(match.group(3))
    return found


def test_an_approved_push_login_on_a_postgresql_cluster_node(slapd, postgres, tmp_path):
    """The same login on a cluster node (PostgreSQL, the bus): the shared fatigue
    state (with the lock check), the join, the nonces and the answer all go to the
    store, each nonce with the call its request makes anyway; the device's
    identity comes from the node's cache once it is known."""
    from tests.integration.cluster import Cluster, attrs, wait_pending

    cluster = Cluster(tmp_path, slapd, postgres, count=1).start()
    try:
        node = cluster[1]
        state = cluster.device_at(cluster.enroll("alice", node), node)
        metrics = f"http://127.0.0.1:{node.metrics_port}/metrics"
        before = scrape(metrics)
        for i in range(LOGINS):
            login = cluster.login(node, attrs(station=f"st-{i}"))
            (request,) = wait_pending(state)
            auth.answer(state, request["txid"], "approve")
            assert login.result().code == "Access-Accept"
        after = scrape(metrics)
    finally:
        cluster.close()
    calls = per_login(after["calls"], before["calls"])
    commits = per_login(after["commits"], before["commits"])
    print(f"cluster store calls per login: {sum(calls.values()):.2f} {calls}")
    print(f"cluster store commits per login: {sum(commits.values()):.2f} {commits}")
    # the answer's compare-and-set, durable, with its request's nonce claimed in it
    assert calls.get("claim_and_answer") == 1 and commits.get("claim_and_answer") == 1
    assert calls.get("device", 0) <= 0.5  # one read of the device, then the cache
    assert "transaction" not in calls  # answered at the node that opened it: in memory
    # The nonces travel with the long-poll's and the list's reads and with the
    # answer; the lock check with fatigue_admit; the answer's transaction ends the
    # push for the fatigue limits (measured 6.50; was 11.50-12.00 with these calls).
    for alone in ("claim_device_nonce", "user_lock", "fatigue_push_ended",
                  "answer_transaction"):
        assert alone not in calls, alone
    assert sum(calls.values()) <= 8
