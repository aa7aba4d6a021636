"""Two approval services ("nodes") over one PostgreSQL store and the PostgreSQL bus, in
one process with the real reactor: an answer on one node releases the waiter on the
other, a login on the other node joins the pending push, a long-poll on one node wakes
for a push made on the other, a nonce replayed to the other node is refused, a
restarting node retires only its own stale work, and a push whose owner died stays
answerable for a login waiting on another node."""

import time
from types import SimpleNamespace

import pytest
import pytest_twisted
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import defer, reactor, task

from pushproxy.approval import crypto, notify
from pushproxy.approval.pgstore import PostgresStore
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.service import ApprovalError, ApprovalService, new_enrollment
from pushproxy.cluster import ClusterContext
from pushproxy.decision import PushStatus
from pushproxy.metrics import Counters
from pushproxy.push import ApprovalRequest
from tests.pg import PASSWORD


class Node:
    """One node: its own store connection, bus and service."""

    def __init__(self, url, name):
        self.url = url
        self.name = name
        self.store = PostgresStore(url, password=PASSWORD, timeout=2.0)
        self.bus = notify.PostgresBus(url, reactor, password=PASSWORD)
        self.counters = Counters()
        self.service = ApprovalService(
            store=AsyncStore.inline(self.store), reactor=reactor, counters=self.counters,
            vapid_public_key="k", wallclock=time.time,
            cluster=ClusterContext(f"{name}/0", self.bus, enabled=True))

    @defer.inlineCallbacks
    def start(self):
        retired = yield self.service.start_cluster()
        yield until(lambda: self.bus.resyncs >= 1)
        return retired

    def stop(self):
        self.service.stop_cluster()
        self.store.close()


class Phone:
    """A device: its own key, signs enrollment, requests and answers."""

    def __init__(self):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public = crypto.public_key_text(self.key.public_key())
        self.device = None

    @defer.inlineCallbacks
    def enroll(self, node, user="alice"):
        link = new_enrollment(node.store, user, "https://mfa.example", 900, time.time())
        token = link.split("#", 1)[1]
        sig = crypto.sign(self.key, crypto.enroll_text(token, self.public, "phone"))
        self.device = yield node.service.enroll(token, self.public, "phone", None, sig)
        return self

    def answer(self, node, tx, decision="approve"):
        sig = crypto.sign(self.key, crypto.answer_text(tx["txid"], tx["nonce"], decision,
                                                       tx["username"], self.device.id))
        return node.service.answer(self.device, tx["txid"], decision, sig)

    def signed(self, nonce, path="/api/v1/pending"):
        stamp = str(int(time.time()))
        sig = crypto.sign(self.key, crypto.request_text("GET", path, stamp, nonce, b""))
        return (self.device.id, stamp, nonce, sig, "GET", path, b"")


def until(predicate, timeout=10.0):
    """Wait (on the real reactor) until ``predicate()`` holds; fail after ``timeout``."""
    @defer.inlineCallbacks
    def wait():
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            yield task.deferLater(reactor, 0.01, lambda: None)
    return wait()


def request(txid, join_key=None, verification="none", timeout=60):
    now = time.time()
    return ApprovalRequest(txid=txid, username="alice", application="vpn",
                           client_ip="198.51.100.7", nas="gw1", created=now,
                           expires=now + timeout, verification=verification,
                           join_key=join_key)


def fired(d):
    got = []
    d.addBoth(got.append)
    return got


@pytest.fixture
def nodes(postgres):
    url = postgres.new_database()
    made = []

    def make(name):
        node = Node(url, name)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()


@pytest_twisted.inlineCallbacks
def test_an_answer_on_node_b_releases_the_login_waiting_on_node_a(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    got = fired(a.service.request_approval(request("t1")))
    (tx,) = yield b.service.pending(phone.device, 0)  # B shows A's push: A waits on it
    body = yield phone.answer(b, tx)
    assert body == {"status": "recorded"}
    yield until(lambda: got)
    assert (got[0].status, got[0].txid, got[0].device) == \
        (PushStatus.APPROVED, "t1", phone.device.id)
    assert a.service.waiting == 0


@pytest_twisted.inlineCallbacks
def test_a_login_on_node_b_joins_the_push_of_node_a_and_gets_the_same_answer(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    at_a = fired(a.service.request_approval(request("t1", "K", "code_to_login")))
    at_b = fired(b.service.request_approval(request("t2", "K", "code_to_login")))
    txs = yield b.service.pending(phone.device, 0)
    assert [t["txid"] for t in txs] == ["t1"]  # one push, not two
    assert b.store.transaction("t2") is None
    body = yield phone.answer(a, txs[0])
    yield until(lambda: at_a and at_b)
    assert at_a[0].status is at_b[0].status is PushStatus.APPROVED
    assert at_b[0].txid == "t1" and at_b[0].code == at_a[0].code == body["code"]


@pytest_twisted.inlineCallbacks
def test_a_denial_with_a_wrong_number_reaches_the_other_node_as_a_mismatch(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    req = request("t1")
    req = ApprovalRequest(**{**req.__dict__, "verification": "number_match", "number": "42"})
    fired(a.service.request_approval(req))
    watched = fired(b.service.await_decision("t1"))
    (tx,) = yield a.service.pending(phone.device, 0)
    sig = crypto.sign(phone.key, crypto.answer_text("t1", tx["nonce"], "approve", "alice",
                                                    phone.device.id, "17"))
    yield a.service.answer(phone.device, "t1", "approve", sig, "17")
    yield until(lambda: watched)
    assert watched[0].status is PushStatus.NUMBER_MISMATCH


@pytest_twisted.inlineCallbacks
def test_a_long_poll_on_node_b_wakes_for_a_push_made_on_node_a(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    poll = fired(b.service.pending(phone.device, 30))
    yield task.deferLater(reactor, 0.2, lambda: None)
    assert poll == []  # nothing pending yet: it waits
    fired(a.service.request_approval(request("t1")))
    yield until(lambda: poll, timeout=10)  # well before its 30 s
    assert [t["txid"] for t in poll[0]] == ["t1"]


@pytest_twisted.inlineCallbacks
def test_a_signed_request_replayed_to_the_other_node_is_refused(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    signed = phone.signed("N" * 30)
    device = yield a.service.authenticate(*signed)
    assert device.id == phone.device.id
    with pytest.raises(ApprovalError) as refused:
        yield b.service.authenticate(*signed)
    assert (refused.value.status, refused.value.message) == (401, "replayed request")
    # a fresh nonce is fine on either node
    yield b.service.authenticate(*phone.signed("M" * 30))


@pytest_twisted.inlineCallbacks
def test_a_restarting_node_retires_only_its_own_stale_pushes(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    yield Phone().enroll(a)
    fired(a.service.request_approval(request("mine")))
    fired(a.service.request_approval(request("joined", "K")))
    fired(b.service.request_approval(request("join", "K")))  # B waits on "joined"
    fired(b.service.request_approval(request("theirs")))
    a.service.stop_cluster()  # node a dies; a new process of it starts
    again = nodes("a")
    retired = yield again.start()
    assert retired == 1
    states = {t: again.store.transaction(t).state for t in ("mine", "joined", "theirs")}
    assert states == {"mine": "cancelled", "joined": "pending", "theirs": "pending"}


@pytest_twisted.inlineCallbacks
def test_a_push_whose_owner_died_stays_answerable_for_the_login_on_the_other_node(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    fired(a.service.request_approval(request("t1", "K")))
    at_b = fired(b.service.request_approval(request("t2", "K")))
    yield until(lambda: b.service.waiting == 1)
    # node a dies (SIGKILL: nothing closed): its heartbeat stops and ages out
    a.service.stop_cluster()
    a.store.heartbeat("a/0", time.time() - 3600)
    (tx,) = yield b.service.pending(phone.device, 0)  # still shown: b waits on it
    assert tx["txid"] == "t1"
    yield phone.answer(b, tx)
    yield until(lambda: at_b)
    assert (at_b[0].status, at_b[0].txid) == (PushStatus.APPROVED, "t1")


@pytest_twisted.inlineCallbacks
def test_a_withdrawn_login_leaves_the_push_open_while_the_other_node_waits(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    yield Phone().enroll(a)
    d = a.service.request_approval(request("t1", "K"))
    d.addErrback(lambda f: None)
    at_b = fired(b.service.request_approval(request("t2", "K")))
    yield until(lambda: b.service.waiting == 1)
    d.cancel()  # a's login timed out (engine side)
    yield a.service.flush_expired()
    assert a.store.transaction("t1").state == "pending"
    assert at_b == [] and "t1" in b.service.waiters


@pytest_twisted.inlineCallbacks
def test_joins_are_counted_and_a_login_without_a_join_key_never_joins(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    fired(a.service.request_approval(request("t1", "K")))
    fired(b.service.request_approval(request("t2", "K")))
    fired(b.service.request_approval(request("t3")))
    txs = yield a.service.pending(phone.device, 0)
    assert [t["txid"] for t in txs] == ["t1", "t3"]
    assert b.counters.get("approval_joins") == 1
    assert b.counters.get("approval_transactions") == 1


# -- worker processes over one SQLite file: the UNIX-socket bus


@pytest_twisted.inlineCallbacks
def test_sqlite_workers_release_each_others_waiters_through_the_unix_bus(tmp_path):
    from pushproxy.approval.store import SQLiteStore

    path = str(tmp_path / "approval.db")
    workers = []
    for index in range(2):
        store = SQLiteStore(path)
        bus = notify.UnixBus(str(tmp_path), index, 2, reactor)
        service = ApprovalService(store=AsyncStore.inline(store), reactor=reactor,
                                  counters=Counters(), vapid_public_key="k", wallclock=time.time,
                                  cluster=ClusterContext(f"n/{index}", bus, enabled=True))
        yield service.start_cluster()
        workers.append((store, bus, service))
    try:
        (s0, _, w0), (s1, _, w1) = workers
        phone = Phone()
        link = new_enrollment(s0, "alice", "https://mfa.example", 900, time.time())
        token = link.split("#", 1)[1]
        sig = crypto.sign(phone.key, crypto.enroll_text(token, phone.public, "phone"))
        phone.device = yield w0.enroll(token, phone.public, "phone", None, sig)
        poll = fired(w1.pending(phone.device, 30))
        got = fired(w0.request_approval(request("t1")))
        yield until(lambda: poll)  # worker 1's long-poll woke for worker 0's push
        (tx,) = poll[0]
        yield phone.answer(SimpleNamespace(service=w1), tx)
        yield until(lambda: got)
        assert got[0].status is PushStatus.APPROVED
        with pytest.raises(ApprovalError):  # a nonce used at one worker is a replay at the other
            signed = phone.signed("R" * 30)
            yield w0.authenticate(*signed)
            yield w1.authenticate(*signed)
    finally:
        for store, _, service in workers:
            service.stop_cluster()
            store.close()


@pytest_twisted.inlineCallbacks
def test_number_matching_logins_join_only_when_they_show_the_same_number(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)

    def numbered(txid, number):
        return ApprovalRequest(**{**request(txid, "K").__dict__,
                                  "verification": "number_match", "number": number})

    fired(a.service.request_approval(numbered("t1", "42")))
    fired(b.service.request_approval(numbered("t2", "17")))  # another number: its own push
    fired(b.service.request_approval(numbered("t3", "42")))  # the same number: joins t1
    txs = yield a.service.pending(phone.device, 0)
    assert [t["txid"] for t in txs] == ["t1", "t2"]


@pytest_twisted.inlineCallbacks
def test_a_follow_up_naming_a_joined_logins_txid_awaits_the_push_it_joined(nodes):
    """A code-to-login challenge issued at node b names b's own txid, though b's login
    joined a's push: a follow-up at a third node awaiting that txid gets the answer."""
    a, b, c = nodes("a"), nodes("b"), nodes("c")
    yield a.start()
    yield b.start()
    yield c.start()
    phone = yield Phone().enroll(a)
    fired(a.service.request_approval(request("t1", "K", "code_to_login")))
    fired(b.service.request_approval(request("t2", "K", "code_to_login")))
    follow = fired(c.service.await_decision("t2"))
    yield until(lambda: c.service.waiting == 1)
    (tx,) = yield c.service.pending(phone.device, 0)
    body = yield phone.answer(c, tx)
    yield until(lambda: follow)
    assert (follow[0].status, follow[0].txid, follow[0].code) == \
        (PushStatus.APPROVED, "t1", body["code"])
    unknown = fired(c.service.await_decision("nope"))
    yield until(lambda: unknown)
    assert unknown[0].status is PushStatus.UNAVAILABLE


@pytest_twisted.inlineCallbacks
def test_a_presence_refusal_on_node_b_reaches_the_login_on_node_a(nodes):
    """Presence in cluster mode: the challenge handed out by node A is taken on node B
    (the store holds it), and a refused check reaches A's login as a refusal."""
    from pushproxy.approval.presence import RelyingParty
    from tests.approval.softauthn import UP, SoftAuthenticator

    rp = RelyingParty("localhost", "https://localhost")
    a, b = nodes("a"), nodes("b")
    for node in (a, b):
        node.service.presence.rp = rp
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    soft = SoftAuthenticator(rp.rp_id, rp.origin)
    options = yield a.service.presence.creation_options(phone.device)
    yield b.service.presence.register(phone.device, soft.create(options))
    for txid, flags, expected in (("t1", UP, PushStatus.PRESENCE_NOT_VERIFIED),
                                  ("t2", None, PushStatus.APPROVED)):
        req = ApprovalRequest(**{**request(txid).__dict__, "user_verification": "refuse"})
        got = fired(a.service.request_approval(req))
        (tx,) = yield b.service.pending(phone.device, 0)
        tx_row = yield a.service.open_transaction_of(phone.device, txid)
        assertion_options = yield a.service.presence.request_options(phone.device, tx_row)
        assertion = soft.get(assertion_options, **({"flags": flags} if flags else {}))
        sig = crypto.sign(phone.key, crypto.answer_text(txid, tx["nonce"], "approve", "alice",
                                                        phone.device.id))
        answered = fired(b.service.answer(phone.device, txid, "approve", sig, None, assertion))
        yield until(lambda: got and answered)
        assert got[0].status is expected, got[0]
