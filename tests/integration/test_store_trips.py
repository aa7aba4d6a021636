"""Store round trips per push login, as the daemon counts them (``store_calls`` and
``store_commits`` by method: the figures /metrics shows), with a real daemon, slapd,
radclient and the command-line authenticator long-polling and approving.

The approved login's path on a single node: the lock check and the transaction
(`user_lock`, `open_transaction`), then the device's three requests (the long-poll,
the list before answering, the answer), each authenticated, and the answer's
compare-and-set. What is served from memory (the node's own pending transactions)
costs no round trip; the compare-and-set always goes to the store.
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
    assert sum(calls.values()) <= 6.5
