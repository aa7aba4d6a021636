"""The approval service in cluster mode (a mixin of `ApprovalService`).

Several nodes or worker processes share one store (`pushproxy.cluster`). Here:
opening a push or joining the pending one with the same join key on any node,
`await_decision` (released by an answer recorded on any node), the bus events
that wake waiters and long-polls, and the node's start (retire its own stale
work, heartbeat) and stop. The attributes used (store, reactor, wallclock,
counters, cluster, node, waiters, life, _pollers, _devices, _answering) are set by
ApprovalService.
"""

from __future__ import annotations

import logging

from twisted.internet import defer, task
from twisted.internet.defer import Deferred

from pushproxy import logs
from pushproxy.approval.clusterstore import Answer
from pushproxy.approval.store import StoreError
from pushproxy.approval.waiters import ClusterLife, result_of
from pushproxy.decision import PushResult, PushStatus
from pushproxy.push import ApprovalRequest, ProviderUnavailable

log = logging.getLogger("pushproxy.approval")

# Seconds the store thread's last reading of SQLite's data_version may be old for
# a device read before to be served again (`_device`): how long a revoke by
# another process can go unseen by a device's long-poll or list. An answer is
# refused in the store anyway (`decide_transaction`).
VERSION_FRESH = 1.0

# While the bus is down, what it would have woken (this node's waiters, long-polls)
# re-reads the store this often instead: answers recorded at other nodes still
# release logins here, late by up to this much.
BUS_POLL_EVERY = 1.0


def effective_join_key(request: ApprovalRequest) -> str | None:
    """The key a login joins on: the engine's ``join_key`` and, for number matching,
    the number its login screen shows (a login showing another number must not join
    a push that checks for the first: the user would type the wrong one)."""
    key = getattr(request, "join_key", None)
    if key is None:
        return None
    if request.verification == "number_match":
        return f"{key}#{request.number or ''}"
    return f"{key}#{request.verification}"


class ClusterSide:
    """Cluster-mode methods of the approval service."""

    # -- cluster mode

    @defer.inlineCallbacks
    def start_cluster(self):
        """Cluster mode, at start: retire this node's own stale work, heartbeat, listen."""
        self.life = ClusterLife(self.store, self.reactor, self.wallclock, self.node)
        retired = yield self.life.start()
        if hasattr(self.cluster.bus, "on_state"):
            self.cluster.bus.on_state(self._bus_state)
        self.cluster.bus.start()
        return retired

    def stop_cluster(self) -> None:
        """Stop the heartbeat and the bus."""
        if self.life is not None:
            self.life.stop()
        self._bus_state(True)  # stops the polling fallback
        self.cluster.bus.stop()
        self.waiters.close()

    def _bus_state(self, connected: bool) -> None:
        # Down: no event will come, so poll the store for what this node waits on
        # (bounded: only this node's waiters and long-polls). Up: stop; the bus's
        # resync re-reads everything once more.
        poll = getattr(self, "_bus_poll", None)
        if connected:
            if poll is not None and poll.running:
                poll.stop()
            self._bus_poll = None
        elif poll is None:
            self._bus_poll = task.LoopingCall(self._poll_store)
            self._bus_poll.clock = self.reactor
            self._bus_poll.start(BUS_POLL_EVERY, now=False)

    def _poll_store(self) -> None:
        if len(self.waiters) or self._pollers:
            self.counters.inc("bus_polls")
            self._resync()

    def bus_health(self) -> dict | None:
        """The bus's part of /healthz (None when not in cluster mode): ``ok`` while it
        listens; when down, logins are still decided and answers from other nodes
        are found by polling (``fallback``), so the node is degraded, not down."""
        if self.cluster is None:
            return None
        bus = self.cluster.bus
        up = bool(getattr(bus, "connected", True))
        health = {"ok": up, "reconnects": int(getattr(bus, "reconnects", 0))}
        if not up:
            health["fallback"] = f"polling the store every {BUS_POLL_EVERY:g} s"
        return health

    def _on_event(self, kind: str, key: str) -> None:
        # a hint from the bus: read the store again (never trust the event itself)
        if kind == "decided":
            if key in self._answering:
                # most likely this node's own answer, announced as it commits; read
                # again by `_record_answer` if that answer did not decide
                self._answering[key] = True
            elif key in self.waiters:
                self.waiters.recheck(key)
        elif kind == "device":  # revoked (on any node, or by pushproxy revoke)
            self._devices.forget(key)
        else:  # created, closed: the user's pending list changed
            self._wake(key)

    def _resync(self) -> None:
        # events were lost while the bus was down: re-read what we wait on
        self._devices.clear()
        self.waiters.recheck_all()
        for username in list(self._pollers):
            self._wake(username)

    def _publish(self, kind: str, key: str) -> None:
        # PostgreSQL: the store announced it within its transaction already
        if self.cluster is not None and not self.cluster.bus.store_notifies:
            self.cluster.bus.publish(kind, key)

    def _caching_devices(self) -> bool:
        """Whether devices may come from `DeviceCache`: only where the store announces
        every revocation and the bus is connected to hear it (see devicecache)."""
        bus = self.cluster.bus if self.cluster is not None else None
        return bus is not None and bus.store_notifies and getattr(bus, "connected", False)

    def _device(self, device_id, now: float, for_answer: bool = False) -> Deferred:
        """The device with this id (revoked or not) or None, as a Deferred: from the cache
        where it is on (cluster mode on PostgreSQL; over SQLite for an answer, while no
        other process wrote to the file, see devicecache), else from the store.

        Over SQLite only an answer may take it from memory: its compare-and-set
        refuses a revoked device in the store, while a long-poll, a list or a new
        device link right after ``pushproxy devices revoke`` must be refused at once,
        and the store thread's reading of the file can be up to a second old.

        A plain Deferred, already fired when the device came from memory: every
        device request passes here (issue 16)."""
        caching = isinstance(device_id, str) and self._caching_devices()
        version = None
        if isinstance(device_id, str) and not caching:
            # read before the device: a commit by another process after it (a
            # revoke) changes the version, and the entry is not served again
            probe = getattr(self.store.runner, "data_version", None)
            version = probe(VERSION_FRESH) if probe is not None else None
        if caching or (version is not None and for_answer):
            device = self._devices.get(device_id, now, version)
            if device is not None:
                return defer.succeed(device)
        generation = self._devices.generation  # before the read (see DeviceCache.put)
        d = self.store.device(device_id)
        if caching or version is not None:
            d.addCallback(self._devices.keep, now, generation, version)
        return d

    async def _record_answer(self, txid: str, device_id: str, nonce, state: str, now: float,
                             outcome: str, code: str | None) -> bool:
        """An answer's compare-and-set at a cluster node; whether it decided ``txid``.

        With the request's nonce when it is still to be claimed (`nonceclaim`), in the
        same transaction: a replay (seen at any node) is refused, and decides nothing.
        A ``decided`` event for ``txid`` heard meanwhile is this answer's own (the
        store announces it as it commits; the caller settles the waiters), so it is
        not read back; unless this answer did not decide, then the row is read."""
        self._answering.setdefault(txid, False)
        won = False
        try:
            if nonce is not None and not nonce.claimed:
                nonce.claimed = True
                answered = await self.store.claim_and_answer(
                    device_id, nonce.value, nonce.expires, txid, state, now, outcome, code)
                if answered is Answer.REPLAYED:
                    raise self._unauthenticated(device_id, "replayed request")
                won = answered is Answer.WON
            else:
                won = await self.store.answer_transaction(txid, state, device_id, now,
                                                          outcome, code)
            return won
        finally:
            heard = self._answering.pop(txid, False)
            if heard and not won and txid in self.waiters:
                self.waiters.recheck(txid)

    def await_decision(self, txid: str) -> Deferred[PushResult]:
        """Wait for the decision of ``txid``, wherever it is answered.

        ``txid`` may be the txid of a login that joined another node's push (the
        one its challenge names): then the joined transaction is awaited.
        Fires with the answer (approved with its device and, for code-to-login,
        its code; denied; fraud; number mismatch), TIMEOUT once it expired (or its
        deadline passed), UNAVAILABLE if it was cancelled or is unknown. Cancel the
        Deferred to stop waiting (in cluster mode this node's waiter is then
        released; the transaction itself closes when nobody live waits on it)."""
        waiter = self.waiters.add(txid, None)  # before the read: no event is missed
        d = self.store.watch_transaction(txid, self.node)

        def read(tx):
            if waiter.called:
                return
            key = txid
            if tx is not None and tx.id != txid:
                # a joined login's txid: wait on the transaction it joined
                key = self.waiters.move(txid, tx.id)
            result = (PushResult(PushStatus.UNAVAILABLE, txid, detail="unknown transaction")
                      if tx is None else result_of(tx, self.wallclock()))
            if result is not None:
                self.waiters.settle(key, result)
            else:
                self.waiters.recheck_at(key, tx.expires)

        def failed(failure):
            if not waiter.called:
                self.waiters.settle(txid, PushResult(
                    PushStatus.UNAVAILABLE, txid, detail=f"store: {failure.getErrorMessage()}"))

        d.addCallbacks(read, failed)
        return waiter


    async def _request_cluster(self, request: ApprovalRequest) -> PushResult:
        """Open the transaction, or join the pending one with the same join key (on any
        node): a joined login sends no push and gets the same result (its txid)."""
        tx = self._new_transaction(request)
        try:
            opened = await self.store.open_or_join_transaction(
                tx, self.node, effective_join_key(request), self.wallclock())
        except StoreError as exc:
            raise ProviderUnavailable(f"store: {exc}") from None
        if not opened.devices:
            return PushResult(PushStatus.NO_DEVICE, request.txid)
        waiter = self.waiters.add(opened.tx.id, opened.tx.expires)
        if opened.joined:
            self.counters.inc("approval_joins")
            logs.event(log, logging.INFO, "approval.joined", user=request.username,
                       txid=opened.tx.id, owner=opened.tx.owner)
            # it may have been decided between the store's answer and now
            self.waiters.recheck(opened.tx.id)
        else:
            self._publish("created", tx.username)
            self._opened(tx, opened.devices)
        # its nonce and context, for an answer posted to this node (no store read); the
        # state is the store's: the answer's compare-and-set decides there
        self._open.add(opened.tx)
        try:
            return await waiter
        finally:
            self._open.discard(opened.tx.id)

