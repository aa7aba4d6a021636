"""Devices authenticated from memory on a PostgreSQL cluster node, and never a stale one:
a revocation made anywhere (another node, ``pushproxy revoke``) reaches every node's
cache through the bus, a login never pushes to a revoked device, and a device revoked
after a node authenticated it cannot answer. Plus the cache's own rules."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import defer

from pushproxy.approval.devicecache import DeviceCache
from pushproxy.approval.pgstore import PostgresStore
from pushproxy.approval.service import ApprovalError
from pushproxy.approval.store import Device
from pushproxy.decision import PushStatus
from tests.approval.test_cluster_service import Phone, fired, nodes, request, until  # noqa: F401
from tests.pg import PASSWORD


@pytest_twisted.inlineCallbacks
def test_a_device_revoked_by_the_command_line_is_refused_at_once_where_it_was_cached(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    yield b.service.authenticate(*phone.signed("A" * 30))
    assert phone.device.id in b.service._devices  # B serves it from memory now
    cli = PostgresStore(b.url, password=PASSWORD, timeout=2.0)  # pushproxy revoke
    try:
        assert cli.revoke_device(phone.device.id, time.time())
    finally:
        cli.close()
    yield until(lambda: phone.device.id not in b.service._devices)
    with pytest.raises(ApprovalError) as error:
        yield b.service.authenticate(*phone.signed("B" * 30))
    assert (error.value.status, error.value.message) == (401, "unknown or revoked device")


class Sender:
    """Records the Web Push endpoints a push was sent to."""

    def __init__(self):
        self.sent = []

    def send(self, subscription, payload):
        self.sent.append(subscription["endpoint"])
        return defer.succeed(SimpleNamespace(ok=True, gone=False, refused=False, status=201,
                                             error=None))


@pytest_twisted.inlineCallbacks
def test_a_login_at_node_b_after_a_revoke_at_node_a_pushes_to_no_revoked_device(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    b.service.sender = Sender()
    phones = []
    for name in ("revoked", "kept"):
        phone = yield Phone().enroll(a)
        assert a.store.set_subscription(phone.device.id, {
            "endpoint": f"https://push.example/{name}", "keys": {"p256dh": "p", "auth": "a"}})
        yield b.service.authenticate(*phone.signed(name.ljust(30, "x")))  # cached at B
        phones.append(phone)
    revoked, kept = phones
    assert a.store.revoke_device(revoked.device.id, time.time())  # at node A
    # at once, whether or not B has heard of the revocation yet
    got = fired(b.service.request_approval(request("t1")))
    assert b.service.sender.sent == ["https://push.example/kept"]
    yield until(lambda: revoked.device.id not in b.service._devices)
    with pytest.raises(ApprovalError):
        yield b.service.authenticate(*revoked.signed("C" * 30))
    (tx,) = yield b.service.pending(kept.device, 0)
    with pytest.raises(ApprovalError):
        yield revoked.answer(b, tx)
    yield kept.answer(b, tx)
    yield until(lambda: got)
    assert got[0].status is PushStatus.APPROVED and got[0].device == kept.device.id


@pytest_twisted.inlineCallbacks
def test_with_its_only_device_revoked_at_node_a_a_login_at_node_b_gets_no_push(nodes):
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    yield b.service.authenticate(*phone.signed("A" * 30))  # cached at B
    assert a.store.revoke_device(phone.device.id, time.time())
    result = yield b.service.request_approval(request("t1"))
    assert result.status is PushStatus.NO_DEVICE
    assert b.store.transaction("t1") is None


@pytest_twisted.inlineCallbacks
def test_a_device_revoked_after_a_node_authenticated_it_cannot_answer(nodes):
    """Even before the revocation reaches the node (or if its event were lost), the
    answer's compare-and-set in the store refuses the revoked device."""
    a, b = nodes("a"), nodes("b")
    yield a.start()
    yield b.start()
    phone = yield Phone().enroll(a)
    got = fired(a.service.request_approval(request("t1")))
    device = yield b.service.authenticate(*phone.signed("A" * 30))
    (tx,) = yield b.service.pending(device, 0)
    b.service._devices.forget = lambda device_id: None  # the event never arrives
    assert a.store.revoke_device(phone.device.id, time.time())
    with pytest.raises(ApprovalError) as error:
        yield phone.answer(b, tx)
    assert error.value.status == 401
    assert got == [] and a.store.transaction("t1").state == "pending"


def test_the_cache_is_off_without_store_notifications_or_a_connected_bus(nodes, tmp_path):
    from twisted.internet import reactor

    from pushproxy.approval import notify
    from pushproxy.approval.asyncstore import AsyncStore
    from pushproxy.approval.service import ApprovalService
    from pushproxy.approval.store import SQLiteStore
    from pushproxy.cluster import ClusterContext
    from pushproxy.metrics import Counters

    store = SQLiteStore(":memory:")
    single = ApprovalService(store=AsyncStore.inline(store), reactor=reactor,
                             counters=Counters(), vapid_public_key="k")
    workers = ApprovalService(store=AsyncStore.inline(store), reactor=reactor,
                              counters=Counters(), vapid_public_key="k",
                              cluster=ClusterContext("n/0", notify.UnixBus(
                                  str(tmp_path), 0, 2, reactor), enabled=True))
    assert not single._caching_devices() and not workers._caching_devices()
    pg = nodes("a")  # not started: its bus is not connected
    assert not pg.service._caching_devices()
    pg.bus.connected = True
    assert pg.service._caching_devices()
    store.close()


def device(device_id="d1", revoked=None):
    return Device(device_id, "alice", "phone", "key", None, 1.0, None, revoked)


def test_an_entry_read_before_an_invalidation_is_not_kept():
    cache = DeviceCache()
    generation = cache.generation  # a store read starts...
    cache.forget("d1")  # ...the device is revoked meanwhile
    cache.put(device(), 10.0, generation)
    assert cache.get("d1", 10.0) is None
    cache.put(device(), 10.0, cache.generation)
    assert cache.get("d1", 10.0) == device()


def test_entries_expire_revoked_devices_are_never_kept_and_memory_is_bounded():
    cache = DeviceCache(ttl=5.0, max_entries=2)
    cache.put(device(revoked=3.0), 10.0, cache.generation)
    assert cache.get("d1", 10.0) is None
    cache.put(device(), 10.0, cache.generation)
    assert cache.get("d1", 14.9) is not None and cache.get("d1", 15.0) is None
    for name in ("a", "b", "c"):
        cache.put(device(name), 20.0, cache.generation)
    assert len(cache) == 2 and "a" not in cache
    cache.refresh(Device("b", "alice", "phone", "key", None, 1.0, 21.0, None))
    assert cache.get("b", 21.0).last_seen == 21.0
    cache.clear()
    assert len(cache) == 0
