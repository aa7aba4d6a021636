"""An answer's device served from memory over SQLite while no other process wrote
(issue 16).

A device makes three requests per login (long-poll, list, answer); each was
authenticated with a store read of the device. Over SQLite the service now
keeps the device it read, tagged with the file's ``PRAGMA data_version`` read
before it, and serves it again to an answer only while the version is
unchanged: any commit by another process (``pushproxy devices revoke`` is one)
ends that. An answer is refused in the store itself when its device was
revoked after the request was authenticated; every other request (long-poll,
list, a new device link) still reads the device from the store, so it is
refused at once after a revoke, however old the store thread's reading is.
"""

import secrets

import pytest
from twisted.internet.task import Clock

from pushproxy.approval import crypto
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.service import ApprovalError, ApprovalService
from pushproxy.approval.store import SQLiteStore
from pushproxy.decision import PushStatus
from pushproxy.metrics import Counters
from tests.approval.test_service_security import T0, enrolled, login, pending, refused, value


@pytest.fixture
def filed(tmp_path):
    """A service over a SQLite file, and a second connection to it (another process)."""
    clock = Clock()
    clock.advance(T0)
    path = str(tmp_path / "approval.db")
    store, counters = SQLiteStore(path), Counters()
    service = ApprovalService(store=AsyncStore.inline(store, counters), reactor=clock,
                              counters=counters, vapid_public_key="k")
    other = SQLiteStore(path)
    yield clock, store, service, other, counters
    other.close()
    store.close()


def authenticate(service, clock, phone, body=b"", for_answer=False):
    stamp, nonce = str(int(clock.seconds())), secrets.token_urlsafe(16)
    signature = crypto.sign(phone.key, crypto.request_text("GET", "/v1/device/pending",
                                                           stamp, nonce, body))
    return service.authenticate(phone.device.id, stamp, nonce, signature, "GET",
                                "/v1/device/pending", body, for_answer=for_answer)


def device_reads(counters) -> int:
    return int(sum(value for name, labels, value in counters.counters()
                   if name == "store_calls" and labels.get("method") == "device"))


def test_an_answer_s_device_comes_from_memory_while_no_other_process_writes(filed):
    clock, store, service, other, counters = filed
    phone = enrolled(service, store, clock)
    for _ in range(2):  # long-poll, list: read from the store
        assert value(authenticate(service, clock, phone)).id == phone.device.id
    assert value(authenticate(service, clock, phone, for_answer=True)).id == phone.device.id
    assert device_reads(counters) == 2


def test_a_revoke_by_another_process_is_seen_at_the_next_request(filed):
    clock, store, service, other, counters = filed
    phone = enrolled(service, store, clock)
    value(authenticate(service, clock, phone))
    assert other.revoke_device(phone.device.id, clock.seconds())
    assert refused(authenticate(service, clock, phone, for_answer=True)).status == 401
    assert refused(authenticate(service, clock, phone)).status == 401


def test_after_a_revoke_the_store_thread_has_not_seen_only_an_answer_uses_memory(filed):
    """The store thread's reading of the file predates the revoke (it ran no call
    since): a long-poll or list is still refused (read from the store), and the
    answer, served from memory, is refused by its compare-and-set."""
    clock, store, service, other, counters = filed
    phone = enrolled(service, store, clock)
    d, got = login(service, clock)
    (tx,) = pending(service, phone)
    value(authenticate(service, clock, phone))  # kept, with the version before the revoke
    stale = store.data_version()
    service.store.runner.data_version = lambda max_age: stale
    assert other.revoke_device(phone.device.id, clock.seconds())
    assert refused(authenticate(service, clock, phone)).status == 401
    device = value(authenticate(service, clock, phone, for_answer=True))  # from memory
    error = refused(service.answer(device, tx["txid"], "approve",
                                   phone.answer_sig(tx, "approve")))
    assert error.status == 401 and got == []
    assert store.transaction(tx["txid"]).state == "pending"


def test_an_answer_from_a_device_revoked_after_its_request_was_authenticated_is_refused(filed):
    clock, store, service, other, counters = filed
    phone = enrolled(service, store, clock)
    d, got = login(service, clock)
    (tx,) = pending(service, phone)
    device = value(authenticate(service, clock, phone))
    assert other.revoke_device(device.id, clock.seconds())  # between auth and answer
    error = refused(service.answer(device, tx["txid"], "approve",
                                   phone.answer_sig(tx, "approve")))
    assert isinstance(error, ApprovalError) and error.status == 401
    assert got == []  # the login still waits: never approved by the revoked device
    assert store.transaction(tx["txid"]).state == "pending"
    # another active device of the user can still answer it
    second = enrolled(service, store, clock, name="tablet")
    value(service.answer(second.device, tx["txid"], "deny", second.answer_sig(tx, "deny")))
    assert got[0].status is PushStatus.DENIED


def test_the_store_thread_s_reading_of_the_version_is_served_only_while_fresh(tmp_path):
    """`ThreadRunner.data_version`: the version read after the last call, stamped with
    the time before the read; None once older than asked (an idle store thread has
    not looked at the file since)."""
    from pushproxy.approval.runner import ThreadRunner

    now = [100.0]
    path = str(tmp_path / "a.db")
    runner = ThreadRunner(Clock(), lambda: SQLiteStore(path), monotonic=lambda: now[0])
    runner._store = SQLiteStore(path)
    assert runner.data_version(1.0) is None  # never read
    runner._sample_version(now[0])
    version = runner.data_version(1.0)
    assert version is not None
    now[0] += 0.9
    assert runner.data_version(1.0) == version
    now[0] += 0.2
    assert runner.data_version(1.0) is None
    other = SQLiteStore(path)
    other.create_enrollment("bob", "h", 0.0, 1.0)  # another process commits
    runner._sample_version(now[0])
    assert runner.data_version(1.0) not in (None, version)
    other.close()
    runner._store.close()


def test_a_device_s_public_key_is_parsed_once_for_all_its_requests(filed):
    """The answer path verifies with the parsed key from `crypto.load_public_key`'s cache:
    a device's long-poll, list and answer parse its key once."""
    clock, store, service, other, counters = filed
    phone = enrolled(service, store, clock)
    d, got = login(service, clock)
    (tx,) = pending(service, phone)
    crypto.load_public_key.cache_clear()
    value(authenticate(service, clock, phone))
    value(authenticate(service, clock, phone, for_answer=True))
    value(service.answer(phone.device, tx["txid"], "approve", phone.answer_sig(tx, "approve")))
    assert got[0].status is PushStatus.APPROVED
    info = crypto.load_public_key.cache_info()
    assert (info.misses, info.hits) == (1, 2)
