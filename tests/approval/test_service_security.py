"""The approval service with a real SQLite store and a Clock: enrollment, answers, forgery.

Every refusal test also checks the property that matters: the login's
Deferred never fires APPROVED because of the refused answer.
"""

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.task import Clock

from pushproxy.approval import crypto
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.service import (EXPIRE_EVERY, ApprovalError, ApprovalService,
                                        new_enrollment)
from pushproxy.approval.store import SQLiteStore
from pushproxy.decision import PushStatus
from pushproxy.metrics import Counters
from pushproxy.push import ApprovalRequest

T0 = 1_800_000_000.0


class Phone:
    """A device as the authenticators are: its own key, signs protocol texts."""

    def __init__(self, name="phone"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.public = crypto.public_key_text(self.key.public_key())
        self.name = name
        self.device = None

    def enroll(self, service, link):
        token = link.split("#", 1)[1]
        sig = crypto.sign(self.key, crypto.enroll_text(token, self.public, self.name))
        self.device = value(service.enroll(token, self.public, self.name, None, sig))
        return self.device

    def answer_sig(self, tx, decision, device_id=None, username=None):
        return crypto.sign(self.key, crypto.answer_text(
            tx["txid"], tx["nonce"], decision, username or tx["username"],
            device_id or self.device.id))


class Alerts:
    def __init__(self):
        self.sent = []

    def alert(self, kind, tx, device, now):
        self.sent.append((kind, tx.id, device.id))


def value(d):
    out = []
    d.addBoth(out.append)
    assert out, "Deferred did not fire"
    if isinstance(out[0], Exception) or hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


def refused(d):
    out = []
    d.addBoth(out.append)
    assert out and hasattr(out[0], "check") and out[0].check(ApprovalError), out
    return out[0].value


@pytest.fixture
def env():
    clock = Clock()
    clock.advance(T0)
    store = SQLiteStore(":memory:")
    alerts = Alerts()
    service = ApprovalService(store=AsyncStore.inline(store), reactor=clock, counters=Counters(),
                              vapid_public_key="k", alerter=alerts)
    return clock, store, service, alerts


def login(service, clock, user="alice", txid="tx-1", timeout=60):
    req = ApprovalRequest(txid=txid, username=user, application="vpn", client_ip="198.51.100.7",
                          nas="gw1", created=clock.seconds(), expires=clock.seconds() + timeout)
    got = []
    d = service.request_approval(req)
    d.addBoth(got.append)
    return d, got


def enrolled(service, store, clock, user="alice", name="phone"):
    phone = Phone(name)
    phone.enroll(service, new_enrollment(store, user, "https://mfa.example", 900, clock.seconds()))
    return phone


def pending(service, phone, wait=0):
    return value(service.pending(phone.device, wait))


def test_user_without_device_gets_no_device(env):
    clock, store, service, _ = env
    d, got = login(service, clock)
    assert got[0].status is PushStatus.NO_DEVICE


def test_approve_by_the_users_device_approves(env):
    clock, store, service, _ = env
    phone = enrolled(service, store, clock)
    d, got = login(service, clock)
    (tx,) = pending(service, phone)
    assert (tx["application"], tx["client_ip"], tx["nas"]) == ("vpn", "198.51.100.7", "gw1")
    value(service.answer(phone.device, tx["txid"], "approve", phone.answer_sig(tx, "approve")))
    assert got[0].status is PushStatus.APPROVED and got[0].device == phone.device.id
    assert store.transaction("tx-1").state == "approved"


def test_deny_rejects_at_once_and_alerts(env):
    clock, store, service, alerts = env
    phone = enrolled(service, store, clock)
    d, got = login(service, clock)
    (tx,) = pending(service, phone)
    value(service.answer(phone.device, tx["txid"], "deny", phone.answer_sig(tx, "deny")))
    assert got[0].status is PushStatus.DENIED
    assert alerts.sent == [("denied", "tx-1", phone.device.id)]


def test_fraud_report_is_its_own_outcome(env):
    clock, store, service, alerts = env
    phone = enrolled(service, store, clock)
    d, got = login(service, clock)
    (tx,) = pending(service, phone)
    value(service.answer(phone.device, tx["txid"], "fraud", phone.answer_sig(tx, "fraud")))
    assert got[0].status is PushStatus.FRAUD and alerts.sent[0][0] == "fraud"


def test_two_devices_both_see_it_and_the_first_answer_wins(env):
    clock, store, service, _ = env
    one = enrolled(service, store, clock, name="one")
    two = enrolled(service, store, clock, name="two")
    d, got = login(service, clock)
    (tx1,) = pending(service, one)
    (tx2,) = pending(service, two)
    assert tx1 == tx2
    value(service.answer(two.device, tx2["txid"], "deny", two.answer_sig(tx2, "deny")))
    err = refused(service.answer(one.device, tx1["txid"], "approve", one.answer_sig(tx1, "approve")))
    assert err.status == 409
    assert got[0].status is PushStatus.DENIED
    assert pending(service, one) == []


def test_answer_signed_by_another_devices_key_is_refused(env):
    clock, store, service, _ = env
    phone = enrolled(service, store, clock)
    thief = Phone()
    d, got = login(service, clock)
    (tx,) = pending(service, phone)
    sig = thief.answer_sig(tx, "approve", device_id=phone.device.id)
    assert refused(service.answer(phone.device, tx["txid"], "approve", sig)).status == 403
    assert got == []


def test_answer_for_another_users_transaction_is_refused(env):
    clock, store, service, _ = env
    alice = enrolled(service, store, clock, user="alice")
    mallory = enrolled(service, store, clock, user="mallory")
    d, got = login(service, clock, user="alice")
    (tx,) = pending(service, alice)
    assert pending(service, mallory) == []
    sig = mallory.answer_sig(tx, "approve")
    assert refused(service.answer(mallory.device, tx["txid"], "approve", sig)).status == 404
    assert got == []


@pytest.mark.parametrize("field", ["decision", "nonce", "txid", "username"])
def test_tampered_answers_are_refused(env, field):
    clock, store, service, _ = env
    phone = enrolled(service, store, clock)
    d, got = login(service, clock)
    (tx,) = pending(service, phone)
    signed = dict(tx)
    if field == "decision":
        sig = phone.answer_sig(tx, "deny")  # signed deny, sent as approve
    else:
        signed[field] = {"nonce": "other-nonce", "txid": "other-tx",
                         "username": "bob"}[field]
        sig = phone.answer_sig(signed, "approve", username=signed["username"])
    assert refused(service.answer(phone.device, tx["txid"], "approve", sig)).status == 403
    assert got == []


def test_replayed_answer_is_refused(env):
    clock, store, service, _ = env
    phone = enrolled(service, store, clock)
    d, got = login(service, clock, txid="tx-1")
    (tx,) = pending(service, phone)
    sig = phone.answer_sig(tx, "approve")
    value(service.answer(phone.device, "tx-1", "approve", sig))
    assert refused(service.answer(phone.device, "tx-1", "approve", sig)).status == 409


def test_answer_after_expiry_is_refused_and_the_login_times_out(env):
    clock, store, service, _ = env
    phone = enrolled(service, store, clock)
    d, got = login(service, clock, timeout=60)
    (tx,) = pending(service, phone)
    clock.advance(61)
    err = refused(service.answer(phone.device, tx["txid"], "approve", phone.answer_sig(tx, "approve")))
    assert err.status == 410
    assert got == []


def test_withdrawn_request_cannot_be_approved_later(env):
    clock, store, service, _ = env
    phone = enrolled(service, store, clock)
    d, got = login(service, clock)
    (tx,) = pending(service, phone)
    d.cancel()  # the engine's timeout or shutdown
    # refused at once, though the store closes withdrawn requests in batches
    err = refused(service.answer(phone.device, tx["txid"], "approve", phone.answer_sig(tx, "approve")))
    assert err.status == 410
    assert pending(service, phone) == []
    assert store.transaction("tx-1").state == "pending"
    clock.advance(EXPIRE_EVERY)
    assert store.transaction("tx-1").state == "expired"
    err = refused(service.answer(phone.device, tx["txid"], "approve", phone.answer_sig(tx, "approve")))
    assert err.status == 410


def test_revoked_device_cannot_authenticate(env):
    clock, store, service, _ = env
    phone = enrolled(service, store, clock)
    store.revoke_device(phone.device.id, clock.seconds())
    assert refused(signed_request(service, phone, clock)).status == 401


def signed_request(service, phone, clock, *, nonce="n" * 22, stamp=None, path="/v1/device/pending",
                   body=b"", key=None):
    stamp = str(int(clock.seconds() if stamp is None else stamp))
    sig = crypto.sign(key or phone.key, crypto.request_text("GET", path, stamp, nonce, body))
    return service.authenticate(phone.device.id, stamp, nonce, sig, "GET", path, body)


def test_device_request_signatures_time_window_and_replay(env):
    clock, store, service, _ = env
    phone = enrolled(service, store, clock)
    assert value(signed_request(service, phone, clock)).id == phone.device.id
    assert refused(signed_request(service, phone, clock)).status == 401  # same nonce again
    assert refused(signed_request(service, phone, clock, nonce="m" * 22,
                                  stamp=clock.seconds() - 61)).status == 401
    assert refused(signed_request(service, phone, clock, nonce="o" * 22,
                                  key=Phone().key)).status == 401
    assert refused(signed_request(service, phone, clock, nonce="short")).status == 401


def test_enrollment_link_works_once_and_expires(env):
    clock, store, service, _ = env
    link = new_enrollment(store, "alice", "https://mfa.example", 900, clock.seconds())
    assert link.startswith("https://mfa.example/app/enroll#")
    Phone().enroll(service, link)
    with pytest.raises(ApprovalError) as used:
        Phone().enroll(service, link)
    assert used.value.status == 403
    late = new_enrollment(store, "alice", "https://mfa.example", 900, clock.seconds())
    clock.advance(901)
    with pytest.raises(ApprovalError) as expired:
        Phone().enroll(service, late)
    assert expired.value.status == 403
    with pytest.raises(ApprovalError):
        Phone().enroll(service, "https://mfa.example/app/enroll#guessed-token")


def test_enrollment_must_be_signed_by_the_registered_key(env):
    clock, store, service, _ = env
    link = new_enrollment(store, "alice", "https://mfa.example", 900, clock.seconds())
    token = link.split("#", 1)[1]
    phone, other = Phone(), Phone()
    sig = crypto.sign(other.key, crypto.enroll_text(token, phone.public, "x"))
    err = refused(service.enroll(token, phone.public, "x", None, sig))
    assert err.code == "bad_signature"
    assert store.enrollment(crypto.token_hash(token)).used is None  # the link still works


def test_long_poll_wakes_when_a_request_arrives_and_times_out_empty(env):
    clock, store, service, _ = env
    phone = enrolled(service, store, clock)
    polled = []
    service.pending(phone.device, 25).addCallback(polled.append)
    clock.advance(3)
    assert polled == []
    login(service, clock)
    assert len(polled) == 1 and polled[0][0]["txid"] == "tx-1"
    empty = []
    bob = enrolled(service, store, clock, user="bob")
    service.pending(bob.device, 25).addCallback(empty.append)
    clock.advance(25)
    assert empty == [[]]


def test_a_pending_transaction_no_login_waits_for_is_not_shown_to_devices(env):
    """A create_transaction that landed after its caller gave up (the store thread was
    stuck behind another process's lock; that login already ended on failmode) must not
    be offered to the phone, where approving it would do nothing and hide a real request."""
    from pushproxy.approval.store import Transaction

    clock, store, service, _ = env
    phone = enrolled(service, store, clock)
    store.create_transaction(Transaction(
        id="orphan", username="alice", nonce="n" * 22, context={}, created=clock.seconds(),
        expires=clock.seconds() + 60, state="pending", decided_by=None, decided_at=None))
    assert pending(service, phone) == []
    d, got = login(service, clock, txid="tx-live")
    assert [tx["txid"] for tx in pending(service, phone)] == ["tx-live"]
