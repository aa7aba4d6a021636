"""Issue 15's acceptance: three ``pushproxy serve`` daemons on loopback sharing one
PostgreSQL and one slapd behave as one service. A device enrolled through one node answers
a login held by another at a third; a gateway failing over mid-push (even from a node
killed with SIGKILL) joins the push already on the phone; fatigue limits and fraud locks
hold across nodes; a signed device request cannot be replayed to another node; a
number-matching State issued by one node is honoured by another; PostgreSQL stopped under
load gives failmode answers in bounded time and, once back, logins succeed again without
restarting pushproxy. Real processes: pushproxy serve (x3), slapd, radclient, PostgreSQL,
and the command-line authenticator's code."""

from __future__ import annotations

import collections
import concurrent.futures
import textwrap
import time

import pytest
import requests

from pushproxy.approval import authenticator as auth
from pushproxy.approval import crypto
from tests.integration.cluster import (Cluster, attrs, eventually_status, number_of, status,
                                       wait_pending)

NUMBER_CLIENT = textwrap.dedent("""\
    - name: number-gw
      address: 127.0.0.1
      secret_file: radius.secret
      verification: number_match
""")


@pytest.fixture
def cluster(slapd, postgres, tmp_path):
    made: list[Cluster] = []

    def make(**kw) -> Cluster:
        c = Cluster(tmp_path, slapd, postgres, **kw)
        made.append(c)  # before start: nodes already up are stopped if another fails
        return c.start()

    yield make
    for c in made:
        c.close()


def distinct_txids(state: str, seconds: float) -> set[str]:
    """Every txid the device sees open while polling for ``seconds``."""
    seen: set[str] = set()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.update(e["txid"] for e in auth.pending(state, wait=0))
        time.sleep(0.2)
    return seen


def test_device_enrolled_at_node_1_approves_a_login_at_node_2_answered_at_node_3(cluster):
    c = cluster()
    state = c.enroll("alice", c[1])
    at3 = c.device_at(state, c[3])
    login = c.login(c[2], attrs("alice", station="198.51.100.1"))
    # A device long-polling node 3 sees the push node 2 created.
    entries = wait_pending(at3, 1, deadline=15)
    assert len(entries) == 1, c.output()
    assert auth.answer(at3, entries[0]["txid"], "approve")["status"] == "recorded"
    started = time.monotonic()
    result = login.result(timeout=30)
    assert result.code == "Access-Accept", c.output()
    # Released by a wake-up, not by a timeout or a slow poll (a loose bound: radclient
    # itself and a loaded 2-core machine take their share).
    assert time.monotonic() - started < 5
    events = c[2].audit()
    assert [e["reason"] for e in events] == ["push_approved"]
    assert "Traceback" not in c.output()


def test_failover_after_sigkill_joins_the_push_on_the_phone(cluster):
    c = cluster()
    state = c.enroll("alice", c[1])
    at3 = c.device_at(state, c[3])
    session = attrs("alice", station="198.51.100.2", nas="gw-1", port=7)
    # The gateway's first server: it never answers (killed below); radclient gives up.
    first = c.login(c[1], session, timeout=6, retries=1)
    pushed = wait_pending(at3, 1)
    assert len(pushed) == 1
    c[1].kill()
    # The gateway fails over: same station, NAS and port, a new request (new id).
    second = c.login(c[2], session, timeout=25)
    # Node 2 has taken the login in and joined (else the poll below proves nothing).
    c[2].serve.wait_for("approval.joined", 30)
    seen = distinct_txids(at3, 3.0)
    assert seen == {pushed[0]["txid"]}, "the failover login must join the pending push"
    assert auth.answer(at3, pushed[0]["txid"], "approve")["status"] == "recorded"
    assert second.result(timeout=30).code == "Access-Accept", c.output()
    assert first.result(timeout=30).code != "Access-Accept"  # node 1 died before answering
    assert [e["reason"] for e in c[2].audit()] == ["push_approved"]
    assert "Traceback" not in c[2].output() + c[3].output()


def test_failover_with_both_nodes_alive_one_approval_accepts_both(cluster):
    c = cluster()
    state = c.enroll("alice", c[1])
    at3 = c.device_at(state, c[3])
    session = attrs("alice", station="198.51.100.3", nas="gw-1", port=8)
    first = c.login(c[1], session, timeout=25)
    pushed = wait_pending(at3, 1)
    second = c.login(c[2], session, timeout=25)
    c[2].serve.wait_for("approval.joined", 30)  # taken in and joined at node 2
    assert distinct_txids(at3, 3.0) == {pushed[0]["txid"]}
    assert auth.answer(at3, pushed[0]["txid"], "approve")["status"] == "recorded"
    assert first.result(timeout=30).code == "Access-Accept", c.output()
    assert second.result(timeout=30).code == "Access-Accept", c.output()
    reasons = [e["reason"] for e in c.audit("alice")]
    assert reasons == ["push_approved", "push_approved"]


FATIGUE = ("timeout: 30\nlimits: {max_pending: 1, max_pushes: 5, window: 600, "
           "max_denials: 3, denial_window: 900, pause: 900}")


def deny_all(c: Cluster, user: str, state_of: dict, nodes: list, logins: int) -> list[str]:
    """``logins`` logins of ``user`` at ``nodes`` in turn, each push denied by the device
    through the next node; returns the txids of the pushes that reached the device."""
    pushes: list[str] = []
    for i in range(logins):
        node = nodes[i % len(nodes)]
        answer_at = state_of[nodes[(i + 1) % len(nodes)].name]
        login = c.login(node, attrs(user, station=f"198.51.100.{10 + i}"), timeout=25)
        end = time.monotonic() + 15
        while not login.done() and time.monotonic() < end:
            for entry in auth.pending(answer_at, wait=0.5):
                if entry["txid"] not in pushes:
                    pushes.append(entry["txid"])
                    auth.answer(answer_at, entry["txid"], "deny")
        # Denied or refused at once; a login still waiting means its push never reached
        # the device through the other node (it would end only at push.timeout).
        assert login.done(), f"login {i} at {node.name}: push not seen at the next node"
        assert login.result(timeout=30).code == "Access-Reject", c.output()
    return pushes


def test_fatigue_limits_hold_across_nodes_as_on_one_node(cluster):
    c = cluster(push=FATIGUE)
    bob = c.enroll("bob", c[1])
    alice = c.enroll("alice", c[1])
    bob_at = {n.name: c.device_at(bob, c[1]) for n in c.nodes}
    alice_at = {n.name: c.device_at(alice, n) for n in c.nodes}
    # bob: every login at node 1, the reference; alice: spread over the three nodes.
    on_one = deny_all(c, "bob", bob_at, [c[1]], 20)
    spread = deny_all(c, "alice", alice_at, c.nodes, 20)
    assert len(on_one) == 3  # max_denials: then paused
    assert len(spread) == len(on_one)
    reasons = {user: collections.Counter(e["reason"] for e in c.audit(user))
               for user in ("alice", "bob")}
    assert reasons["alice"] == reasons["bob"]
    assert reasons["alice"]["pushes_paused_after_denials"] == 17
    # The pause holds on every node.
    for node in c.nodes:
        assert node.login(attrs("alice", station="198.51.100.99")).code == "Access-Reject"
    assert c.audit("alice")[-1]["reason"] == "pushes_paused_after_denials"


def test_fraud_lock_made_on_one_node_refuses_logins_on_all(cluster):
    c = cluster()
    state = c.enroll("carol", c[1])
    at2 = c.device_at(state, c[2])
    login = c.login(c[1], attrs("carol", station="198.51.100.20"), timeout=25)
    pushed = wait_pending(at2, 1)
    assert auth.answer(at2, pushed[0]["txid"], "fraud")["status"] == "recorded"
    assert login.result(timeout=30).code == "Access-Reject"
    for node in c.nodes:
        started = time.monotonic()
        assert node.login(attrs("carol", station="198.51.100.21")).code == "Access-Reject"
        assert time.monotonic() - started < 10  # refused at once, no push waited for
        assert node.audit()[-1]["reason"] == "user_locked_after_fraud_report", c.output()
    assert auth.pending(at2, wait=0) == []


def test_replayed_signed_device_request_is_refused_by_another_node(cluster):
    c = cluster()
    state = c.enroll("dave", c[1])
    device, key = auth.load_state(state)
    path = "/v1/device/pending?wait=0"
    headers = crypto.device_headers(key, device.device_id, "GET", path, b"")
    first = requests.get(c[1].url + path, headers=headers, timeout=10)
    assert first.status_code == 200
    for node in c.nodes:  # the same signed request, to every node: a replay everywhere
        again = requests.get(node.url + path, headers=headers, timeout=10)
        assert again.status_code == 401, (node.name, again.status_code, again.text)
    # A fresh request is fine on every node.
    for node in c.nodes:
        fresh = crypto.device_headers(key, device.device_id, "GET", path, b"")
        assert requests.get(node.url + path, headers=fresh, timeout=10).status_code == 200


def test_number_matching_state_from_a_killed_node_is_honoured_by_another(cluster):
    c = cluster(clients=NUMBER_CLIENT)
    state = c.enroll("alice", c[1])
    at3 = c.device_at(state, c[3])
    session = dict(station="198.51.100.30", nas="gw-1", port=9)
    first = c[1].login(attrs("alice", **session))
    assert first.code == "Access-Challenge", c.output()
    challenge_state = first.get("State")
    number = number_of(first.get("Reply-Message"))
    assert number and challenge_state
    pushed = wait_pending(at3, 1)
    c[1].kill()  # the gateway's next packet goes to node 2
    answered = auth.answer(at3, pushed[0]["txid"], "approve", None, number)
    assert answered["status"] == "recorded"
    follow_up = c[2].login(attrs("alice", "ok", state=challenge_state, **session))
    assert follow_up.code == "Access-Accept", c.output()
    # The State is single use, on every node.
    replay = c[3].login(attrs("alice", "ok", state=challenge_state, **session))
    assert replay.code == "Access-Reject"


def test_number_matching_follow_up_at_another_node_waits_for_the_answer(cluster):
    c = cluster(clients=NUMBER_CLIENT)
    state = c.enroll("alice", c[1])
    at3 = c.device_at(state, c[3])
    session = dict(station="198.51.100.31", nas="gw-1", port=10)
    first = c[1].login(attrs("alice", **session))
    assert first.code == "Access-Challenge", c.output()
    pushed = wait_pending(at3, 1)
    # The user types the number at the gateway before tapping the phone: node 2 holds
    # the follow-up until the answer arrives (at node 3).
    follow_up = c.login(c[2], attrs("alice", "ok", state=first.get("State"), **session))
    time.sleep(1.0)
    assert not follow_up.done()
    auth.answer(at3, pushed[0]["txid"], "approve", None, number_of(first.get("Reply-Message")))
    assert follow_up.result(timeout=30).code == "Access-Accept", c.output()


PUSH_TIMEOUT = 10


def test_postgresql_stopped_under_load_failmode_in_bounded_time_then_back(cluster, postgres):
    c = cluster(push=f"timeout: {PUSH_TIMEOUT}\nlimits: {{max_pending: 10}}")
    users = ["alice", "bob", "carol", "dave"]
    state = c.enroll("alice", c[1])
    for user in users[1:]:
        c.enroll(user, c[2])
    at = {n.name: c.device_at(state, n) for n in c.nodes}
    # Before: a login held by node 1, answered at node 2.
    ok = c.login(c[1], attrs("alice", station="198.51.100.40"))
    auth.answer(at["node2"], wait_pending(at["node2"])[0]["txid"], "approve")
    assert ok.result(timeout=30).code == "Access-Accept", c.output()
    assert all(status(n.health) == 200 for n in c.nodes)

    # Load: logins of several users on every node, pushes nobody answers.
    started = time.monotonic()
    in_flight = [c.login(n, attrs(u, station=f"198.51.100.{50 + i}"), timeout=40, retries=1)
                 for i, (n, u) in enumerate((n, u) for n in c.nodes for u in users)]
    time.sleep(1.5)
    postgres.stop("fast")
    try:
        during = [c.login(n, attrs(u, station=f"198.51.100.{80 + i}"), timeout=40, retries=1)
                  for i, (n, u) in enumerate((n, u) for n in c.nodes for u in users)]
        stopped = time.monotonic()
        done, late = concurrent.futures.wait(in_flight + during, timeout=PUSH_TIMEOUT + 15)
        assert not late, "a login hung with PostgreSQL down"
        codes = collections.Counter(f.result().code for f in in_flight + during)
        assert codes == {"Access-Reject": len(in_flight) + len(during)}  # failmode: secure
        # Nothing waited longer than the push timeout (plus the store's bounds).
        assert time.monotonic() - started < PUSH_TIMEOUT + 10
        assert time.monotonic() - stopped < PUSH_TIMEOUT + 8
        for node in c.nodes:
            assert eventually_status(node.health, 503), node.name
            node.serve.wait_for("push.unavailable")
    finally:
        postgres.start()
    # Back: no restart of pushproxy; a login at node 3 answered at node 1 (the bus
    # reconnected too), and /healthz is healthy again on every node.
    for node in c.nodes:
        assert eventually_status(node.health, 200, within=20), node.name
    login = c.login(c[3], attrs("alice", station="198.51.100.41"))
    auth.answer(at["node1"], wait_pending(at["node1"], deadline=20)[0]["txid"], "approve")
    assert login.result(timeout=30).code == "Access-Accept", c.output()
    assert "Traceback" not in c.output()


def test_two_nodes_of_two_workers_one_push_for_one_session_and_one_approval_for_all(cluster):
    """``daemon.workers: 2`` on each of two nodes: resends of one session from several
    source ports (the kernel hashes them over the workers) and both nodes join one push."""
    c = cluster(count=2, workers=2)
    state = c.enroll("alice", c[1])
    at2 = c.device_at(state, c[2])
    session = attrs("alice", station="198.51.100.60", nas="gw-1", port=11)
    first = c.login(c[1], session)
    pushed = wait_pending(at2, 1)
    # Each radclient run sends from a new source port, which the kernel hashes to one of
    # the workers: most likely both workers of each node see some (not asserted: random).
    resends = [c.login(node, session) for node in (c[1], c[2]) for _ in range(3)]
    assert distinct_txids(at2, 3.0) == {pushed[0]["txid"]}
    assert auth.answer(at2, pushed[0]["txid"], "approve")["status"] == "recorded"
    codes = [f.result(timeout=30).code for f in [first, *resends]]
    assert codes == ["Access-Accept"] * 7, c.output()
    assert "Traceback" not in c.output()


def test_a_restarting_node_retires_only_its_own_stale_pushes(cluster):
    """Node 3 restarts while node 1 holds a push: the push stays answerable. Node 2 dies
    with a push nobody else waits on and restarts: that stale push is retired."""
    c = cluster()
    state = c.enroll("alice", c[1])
    at1 = c.device_at(state, c[1])
    held = c.login(c[1], attrs("alice", station="198.51.100.70"), timeout=40)
    pushed = wait_pending(at1, 1)
    c[3].stop()
    c[3].start()
    c[3].ready()
    assert {e["txid"] for e in auth.pending(at1, wait=0)} == {pushed[0]["txid"]}
    assert auth.answer(at1, pushed[0]["txid"], "approve")["status"] == "recorded"
    assert held.result(timeout=30).code == "Access-Accept", c.output()

    orphan = c.login(c[2], attrs("alice", station="198.51.100.71"), timeout=5, retries=1)
    stale = wait_pending(at1, 1)[0]["txid"]
    c[2].kill()
    c[2].start()
    c[2].ready()
    end = time.monotonic() + 20  # heartbeats: a dead node is known as dead within seconds
    while stale in {e["txid"] for e in auth.pending(at1, wait=0)} and time.monotonic() < end:
        time.sleep(0.5)
    assert stale not in {e["txid"] for e in auth.pending(at1, wait=0)}, c.output()
    assert orphan.result(timeout=30).code != "Access-Accept"
