"""Replay protection across nodes when the nonce travels with the request's own store
call (`pushproxy.approval.nonceclaim`): two approval services over one PostgreSQL
database and its bus, the device's long-poll and answer authenticated as the API
does (the signed path, ``for_answer``), each replayed to the other node."""

from __future__ import annotations

import json
import time

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from pushproxy.approval import crypto, notify
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.pgstore import PostgresStore
from pushproxy.approval.runner import InlineRunner
from pushproxy.approval.service import ApprovalError, ApprovalService
from pushproxy.cluster import ClusterContext
from pushproxy.decision import PushStatus
from pushproxy.metrics import Counters
from tests.approval.test_cluster_service import (Node, Phone, fired, nodes,  # noqa: F401
                                                 request, until)
from tests.pg import PASSWORD

PENDING = "/v1/device/pending?wait=0"
ANSWER = "/v1/device/answer"


def signed(phone, method, path, nonce, body=b""):
    stamp = str(int(time.time()))
    sig = crypto.sign(phone.key, crypto.request_text(method, path, stamp, nonce, body))
    return (phone.device.id, stamp, nonce, sig, method, path, body)


def answer_request(phone, tx, decision, nonce):
    """An answer as the API takes it: the signed request and the answer's signature."""
    sig = crypto.sign(phone.key, crypto.answer_text(tx["txid"], tx["nonce"], decision,
                                                    tx["username"], phone.device.id))
    body = json.dumps({"txid": tx["txid"], "decision": decision, "signature": sig}).encode()
    return signed(phone, "POST", ANSWER, nonce, body), sig


@defer.inlineCallbacks
def list_at(node, request_):
    device = yield node.service.authenticate(*request_)
    return (yield node.service.pending(device, 0))


@defer.inlineCallbacks
def answer_at(node, request_, txid, decision, sig):
    device = yield node.service.authenticate(*request_, for_answer=True)
    return (yield node.service.answer(device, txid, decision, sig))


@pytest_twisted.inlineCallbacks
def test_a_long_poll_replayed_to_the_other_node_is_refused_and_lists_nothing(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    fired(a.service.request_approval(request("t1")))
    poll = signed(phone, "GET", PENDING, "P" * 30)
    assert [t["txid"] for t in (yield list_at(a, poll))] == ["t1"]
    with pytest.raises(ApprovalError) as refused:
        yield list_at(b, poll)
    assert (refused.value.status, refused.value.message) == (401, "replayed request")
    assert b.counters.get("device_auth_failures") == 1
    # the claim went with the list: no separate claim call on either node
    assert a.store.claim_device_nonce(phone.device.id, "Q" * 30, time.time() + 120)


@pytest_twisted.inlineCallbacks
def test_two_nodes_given_the_same_long_poll_at_once_serve_it_once(nodes):
    """Both authenticate it (neither has claimed yet); the store lets one list."""
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    fired(a.service.request_approval(request("t1")))
    poll = signed(phone, "GET", PENDING, "P" * 30)
    at_a = yield a.service.authenticate(*poll)
    at_b = yield b.service.authenticate(*poll)
    got = [fired(b.service.pending(at_b, 0)), fired(a.service.pending(at_a, 0))]
    yield until(lambda: all(got))
    served = [g[0] for g in got if isinstance(g[0], list)]
    refused = [g[0].value for g in got if not isinstance(g[0], list)]
    assert len(served) == 1 and [t["txid"] for t in served[0]] == ["t1"]
    assert [(e.status, e.message) for e in refused] == [(401, "replayed request")]


@pytest_twisted.inlineCallbacks
def test_an_answer_replayed_to_the_other_node_is_refused_not_already_decided(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    got = fired(a.service.request_approval(request("t1")))
    (tx,) = yield b.service.pending(phone.device, 0)
    req, sig = answer_request(phone, tx, "approve", "A" * 30)
    assert (yield answer_at(a, req, "t1", "approve", sig)) == {"status": "recorded"}
    yield until(lambda: got)
    with pytest.raises(ApprovalError) as refused:
        yield answer_at(b, req, "t1", "approve", sig)
    # refused as a replay (the nonce was claimed with the compare-and-set), not 409
    assert (refused.value.status, refused.value.message) == (401, "replayed request")


@pytest_twisted.inlineCallbacks
def test_an_answer_refused_before_its_compare_and_set_still_uses_up_its_nonce(nodes):
    """An answer that ends without the combined call (here: an unknown txid, 404)
    claims its nonce before the refusal is served: its replay at the other node is a
    replay, whatever it would have got."""
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    fired(a.service.request_approval(request("t1")))
    (tx,) = yield a.service.pending(phone.device, 0)
    unknown = dict(tx, txid="nope")
    req, sig = answer_request(phone, unknown, "approve", "B" * 30)
    with pytest.raises(ApprovalError) as first:
        yield answer_at(a, req, "nope", "approve", sig)
    assert first.value.status == 404
    with pytest.raises(ApprovalError) as again:
        yield answer_at(b, req, "nope", "approve", sig)
    assert (again.value.status, again.value.message) == (401, "replayed request")


@pytest_twisted.inlineCallbacks
def test_a_replayed_answer_that_reaches_a_node_first_decides_nothing_there(nodes):
    """The same answer authenticated at both nodes before either claimed it: one
    compare-and-set runs, the other request is refused as a replay."""
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    got = fired(a.service.request_approval(request("t1")))
    (tx,) = yield a.service.pending(phone.device, 0)
    req, sig = answer_request(phone, tx, "deny", "C" * 30)
    at_a = yield a.service.authenticate(*req, for_answer=True)
    at_b = yield b.service.authenticate(*req, for_answer=True)
    results = [fired(b.service.answer(at_b, "t1", "deny", sig)),
               fired(a.service.answer(at_a, "t1", "deny", sig))]
    yield until(lambda: all(results) and got)
    bodies = [r[0] for r in results if isinstance(r[0], dict)]
    refused = [r[0].value for r in results if not isinstance(r[0], dict)]
    assert bodies == [{"status": "recorded"}]
    assert [(e.status, e.message) for e in refused] == [(401, "replayed request")]
    assert a.counters.get("answers", outcome="late") + \
        b.counters.get("answers", outcome="late") == 0


class HoldingRunner(InlineRunner):
    """Inline, except the answer's compare-and-set: held until ``release`` (``run_now``:
    run at once, its result delivered on ``release``), as a store thread that is
    slow to report back."""

    def __init__(self, store, counters, run_now: bool):
        super().__init__(store, counters)
        self.run_now = run_now
        self.held = []

    def submit(self, method, *args, **kwargs):
        if method.__name__ not in ("claim_and_answer", "answer_transaction"):
            return super().submit(method, *args, **kwargs)
        d = defer.Deferred()
        done = super().submit(method, *args, **kwargs) if self.run_now else None
        self.held.append((d, method, args, done))
        return d

    def release(self):
        held, self.held = self.held, []
        for d, method, args, done in held:
            (done or InlineRunner.submit(self, method, *args)).chainDeferred(d)


def holding_node(url, name, run_now):
    node = Node.__new__(Node)
    node.url, node.name = url, name
    node.store = PostgresStore(url, password=PASSWORD, timeout=2.0)
    node.bus = notify.PostgresBus(url, reactor, password=PASSWORD)
    node.counters = Counters()
    node.runner = HoldingRunner(node.store, node.counters, run_now)
    node.service = ApprovalService(
        store=AsyncStore(node.runner), reactor=reactor, counters=node.counters,
        vapid_public_key="k", wallclock=time.time,
        cluster=ClusterContext(f"{name}/0", node.bus, enabled=True))
    return node


@pytest.fixture
def holding(postgres):
    url = postgres.new_database()
    made = []

    def make(name, run_now=False):
        node = holding_node(url, name, run_now) if name == "a" else Node(url, name)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()


@pytest_twisted.inlineCallbacks
def test_the_own_answers_announcement_is_not_read_back(holding):
    """The store announces the answer as it commits; heard before the store call
    reports back, it costs no read: the answer settles the login itself."""
    a = holding("a", run_now=True)
    yield a.start()
    phone = yield Phone().enroll(a)
    got = fired(a.service.request_approval(request("t1")))
    (tx,) = yield a.service.pending(phone.device, 0)
    body = fired(phone.answer(a, tx))
    yield until(lambda: a.service._answering.get("t1"))  # the announcement was heard
    a.runner.release()
    yield until(lambda: got and body)
    assert got[0].status is PushStatus.APPROVED and body == [{"status": "recorded"}]
    assert a.counters.get("store_calls", method="watch_transaction") == 0


@pytest_twisted.inlineCallbacks
def test_an_answer_that_lost_while_the_winners_announcement_came_reads_it_back(holding):
    """Node a's own answer is in flight when node b's answer decides: the announcement
    heard meanwhile is read back once a's answer lost, so the login at a gets b's
    answer at once, not at its timeout."""
    a, b = holding("a"), holding("b")
    yield a.start()
    yield b.start()
    first = yield Phone().enroll(a)
    second = yield Phone().enroll(a)
    got = fired(a.service.request_approval(request("t1")))
    (tx,) = yield a.service.pending(first.device, 0)
    late = fired(first.answer(a, tx, "approve"))  # held before its compare-and-set
    assert "t1" in a.service._answering
    assert (yield second.answer(b, tx, "deny")) == {"status": "recorded"}
    yield until(lambda: a.service._answering.get("t1"))  # b's announcement, heard at a
    a.runner.release()
    yield until(lambda: got and late)
    assert (got[0].status, got[0].device) == (PushStatus.DENIED, second.device.id)
    assert late[0].value.status == 409
