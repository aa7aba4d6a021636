"""The built-in approval service: the push provider and what devices talk to.

One object plays both sides. Towards the engine it is a `PushProvider`: each
login becomes a transaction (random id and nonce, expiry = push timeout) that
every enrolled device of the user can see, by long-poll and by Web Push. Towards
devices it checks enrollment, request signatures (time window + nonce replay
protection) and answer signatures, and lets the first valid answer win through
the store's compare-and-set. A denial ends the wait at once and raises an alert.

The store is synchronous (SQLite, PostgreSQL); the service holds it as an
`AsyncStore` (pushproxy.approval.asyncstore), whose runner keeps it on one
dedicated thread in the daemon while tests run it inline.

In cluster mode (`pushproxy.cluster`: several nodes or workers over one store) a
login joins a pending push with the same join key on any node, waiters are
released by answers recorded on any node (`pushproxy.approval.waiters`, events
from `pushproxy.approval.notify`), long-polls see pushes of every node, and
device-request nonces are claimed in the store. A single process on SQLite keeps
its in-memory paths and makes no extra store call.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import secrets
from collections import OrderedDict, defaultdict
from typing import Callable
from urllib.parse import urlsplit

from twisted.internet import defer, threads
from twisted.internet.defer import Deferred

from pushproxy import logs, passcodes
from pushproxy.approval import crypto, nonceclaim, pushtarget
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.clusterside import ClusterSide
from pushproxy.approval.devicecache import DeviceCache
from pushproxy.approval.opentx import OpenTransactions
from pushproxy.approval.presence import Presence, Refusal, RelyingParty
from pushproxy.approval.secondfactors import PasscodeSide
from pushproxy.approval.store import Device, StoreError, Transaction
from pushproxy.approval.waiters import LIVE_FOR, Waiters
from pushproxy.decision import PushResult, PushStatus
from pushproxy.metrics import Counters
from pushproxy.push import ApprovalRequest, ProviderUnavailable

log = logging.getLogger("pushproxy.approval")

CLOCK_SKEW = 60.0  # seconds a device request's timestamp may differ from ours
NONCE_MEMORY = 2 * CLOCK_SKEW  # a nonce older than this is refused by its timestamp anyway
MAX_WAIT = 30.0
LAST_SEEN_EVERY = 300.0  # seconds between last_seen updates of one device
EXPIRE_EVERY = 0.2  # seconds withdrawn transactions wait to be closed together
_STATES = {"approve": "approved", "deny": "denied", "fraud": "fraud"}
_RESULTS = {"approved": PushStatus.APPROVED, "denied": PushStatus.DENIED,
            "fraud": PushStatus.FRAUD}


class ApprovalError(Exception):
    """A refused device request: HTTP ``status``, machine ``code``, human ``message``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class _Withdraw:
    """A waiting login's canceller: its transaction is withdrawn. A slotted record
    rather than a closure, one per pending login (issue 16)."""

    __slots__ = ("service", "txid")

    def __init__(self, service: ApprovalService, txid: str):
        self.service = service
        self.txid = txid

    def __call__(self, _deferred: Deferred) -> None:
        self.service._withdraw(self.txid)


class _Signed:
    """What `ApprovalService.authenticate` checks once the device is read."""

    __slots__ = ("device_id", "timestamp", "nonce", "signature", "method", "path", "body",
                 "for_answer", "now")

    def __init__(self, device_id, timestamp, nonce, signature, method, path, body,
                 for_answer, now):
        self.device_id = device_id
        self.timestamp = timestamp
        self.nonce = nonce
        self.signature = signature
        self.method = method
        self.path = path
        self.body = body
        self.for_answer = for_answer
        self.now = now


def _login_code(status: PushStatus, tx: Transaction) -> str | None:
    """The code an approved code-to-login request shows on the phone, else None."""
    if status is PushStatus.APPROVED and tx.context.get("verification") == "code_to_login":
        return f"{secrets.randbelow(10 ** 6):06d}"
    return None


def _lock_failed(failure, username: str) -> None:
    failure.trap(StoreError)
    logs.event(log, logging.ERROR, "approval.lock_failed", user=username,
               error=str(failure.value))


def _stop_timer(result, timer):
    if timer.active():
        timer.cancel()
    return result


def _store_unavailable(failure):
    failure.trap(StoreError)
    raise ProviderUnavailable(f"store: {failure.value}")


def transaction_view(tx: Transaction) -> dict:
    """What a device sees of a transaction (the `pending` list, the Web Push payload).

    Never the number of a number-matching request: the user must read it on
    the login screen, or the check proves nothing.
    """
    return {"txid": tx.id, "nonce": tx.nonce, "username": tx.username,
            "application": tx.context.get("application"),
            "client_ip": tx.context.get("client_ip"), "nas": tx.context.get("nas"),
            "created": tx.created, "expires": tx.expires,
            "verification": tx.context.get("verification", "none"),
            "location": tx.context.get("location"), "warnings": tx.context.get("warnings") or [],
            # presence: Approve needs a passkey assertion (docs/presence.md)
            "user_verification": "required" if tx.context.get("user_verification")
            else "none"}


def enrollment_link(public_url: str, token: str) -> str:
    """The one-time link a user opens (or scans) to enroll a device."""
    return f"{public_url.rstrip('/')}/app/enroll#{token}"


def new_enrollment(store, username: str, public_url: str, ttl: float, now: float) -> str:
    """Create a one-time enrollment for ``username``; returns the link (synchronous)."""
    token = secrets.token_urlsafe(32)
    # Usernames are kept casefolded: logins look devices up that way.
    store.create_enrollment(username.casefold(), crypto.token_hash(token), now, now + ttl)
    return enrollment_link(public_url, token)


class ApprovalService(ClusterSide, PasscodeSide):
    """The push provider and the device-facing logic of the approval API."""

    def __init__(self, *, store: AsyncStore, reactor, counters: Counters,
                 vapid_public_key: str, sender=None, alerter=None,
                 wallclock: Callable[[], float] | None = None, cpu=None,
                 push_rules: pushtarget.EndpointRules | None = None, resolver=None,
                 cluster=None, relying_party: RelyingParty | None = None):
        self.store = store  # every store method, returning a Deferred
        self.reactor = reactor
        self.counters = counters
        self.vapid_public_key = vapid_public_key
        self.sender = sender
        self.alerter = alerter
        self.wallclock = wallclock or reactor.seconds
        # CPU-heavy checks (scrypt) run here; tests pass an inline runner.
        self.cpu = cpu or (lambda f, *args: threads.deferToThread(f, *args))
        # Which push endpoints a device may register (https, public addresses); with a
        # resolver (the daemon: the reactor's), a name is resolved and checked too.
        self.push_rules = push_rules or pushtarget.EndpointRules()
        self.resolver = resolver
        self._waiting: dict[str, Deferred] = {}  # txid -> the engine's Deferred
        self._open = OpenTransactions()  # the transactions of _waiting (no store read)
        self._devices = DeviceCache()  # cluster mode on PostgreSQL only (see _device)
        self._pollers: dict[str, list[Deferred]] = defaultdict(list)  # username -> long-polls
        self._nonces: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._expiring: dict[str, None] = {}  # withdrawn transactions not yet closed
        self._answering: dict[str, bool] = {}  # cluster: answers in the store now (_record_answer)
        self._expire_call = None
        # cluster mode (a pushproxy.cluster.ClusterContext with enabled=True): store-backed
        self.cluster = cluster if cluster is not None and cluster.enabled else None
        self.node = self.cluster.node_id if self.cluster is not None else None
        self.waiters = Waiters(store, reactor, self.wallclock, self.node, self._unwatched)
        self.life = None
        # passkeys (docs/presence.md); the RP is approval.public_url's host
        self.presence = Presence(store, relying_party or RelyingParty("", ""), self.wallclock,
                                 counters)
        if self.cluster is not None:
            self.cluster.bus.subscribe(self._on_event)
            self.cluster.bus.on_resync(self._resync)

    @property
    def answers_end_pushes(self) -> bool:
        """Whether a device's answer ends its push for the shared fatigue limits in the
        answer's own store transaction (cluster mode: `answer_transaction`), so the
        engine writes no `fatigue_push_ended` for it."""
        return self.cluster is not None

    @property
    def waiting(self) -> int:
        """Approval requests waiting for a device's answer."""
        return len(self._waiting) + len(self.waiters)

    # -- provider side (the engine) --

    def request_approval(self, request: ApprovalRequest) -> Deferred[PushResult]:
        """Open a transaction for this login and wait for the first valid answer."""
        if self.cluster is not None:
            return defer.ensureDeferred(self._request_cluster(request))
        tx = self._new_transaction(request)
        # One store call: the devices, and the transaction if there is one. A plain
        # Deferred chain (no coroutine: one per push login, issue 16).
        return self.store.open_transaction(tx).addCallbacks(
            self._recorded, _store_unavailable, callbackArgs=(tx,))

    def _recorded(self, devices: list[Device], tx: Transaction) -> PushResult | Deferred:
        if not devices:
            return PushResult(PushStatus.NO_DEVICE, tx.id)
        waiter: Deferred = Deferred(_Withdraw(self, tx.id))
        self._waiting[tx.id] = waiter
        self._open.add(tx)
        self._opened(tx, devices)
        # The login waits on this one Deferred alone (issue 16).
        return waiter

    def _opened(self, tx: Transaction, devices: list[Device]) -> None:
        self.counters.inc("approval_transactions")
        self._wake(tx.username)
        for device in devices:
            if device.push_subscription and self.sender is not None:
                self._deliver(device, tx)

    def _new_transaction(self, request: ApprovalRequest) -> Transaction:
        return Transaction(
            id=request.txid, username=request.username, nonce=secrets.token_urlsafe(16),
            context={"application": request.application, "client_ip": request.client_ip,
                     "nas": request.nas, "verification": request.verification,
                     "number": request.number, "location": request.location,
                     "warnings": list(request.warnings),
                     "user_verification": request.user_verification},
            created=request.created, expires=request.expires, state="pending",
            decided_by=None, decided_at=None)

    def _unwatched(self, txid: str) -> None:
        # the last of this process's waiters (joined logins, await_decision) gave
        # up; a login of this process that opened it without cluster mode may still wait
        if txid not in self._waiting:
            self._withdraw(txid)

    def _withdraw(self, txid: str) -> None:
        """The engine stopped waiting (timeout, shutdown): close the transaction.

        Closed in batches (EXPIRE_EVERY): the write decides nothing -- the login
        has ended, devices no longer see the request (`_live`), and an answer
        counts only before ``expires`` -- so logins that time out together cost
        one store call and one commit, not one each (issue 22)."""
        self._waiting.pop(txid, None)
        self._open.discard(txid)
        self._expiring[txid] = None
        if self._expire_call is None:
            self._expire_call = self.reactor.callLater(EXPIRE_EVERY, self.flush_expired)

    def flush_expired(self) -> Deferred:
        """Close the withdrawn transactions now (also at shutdown)."""
        if self._expire_call is not None and self._expire_call.active():
            self._expire_call.cancel()
        self._expire_call = None
        txids, self._expiring = list(self._expiring), {}
        if not txids:
            return defer.succeed(0)
        now = self.wallclock()
        if self.cluster is not None:
            # closed only if no other live node waits on it (a joined login elsewhere)
            d = self.store.release_transactions(txids, self.node, now, now - LIVE_FOR)
        else:
            d = self.store.expire_transactions(txids, now)
        return d.addErrback(lambda f: logs.event(log, logging.WARNING, "approval.close_failed",
                                                 count=len(txids), error=f.getErrorMessage()))

    def _deliver(self, device: Device, tx: Transaction) -> None:
        payload = json.dumps(transaction_view(tx)).encode("utf-8")
        host = urlsplit(device.push_subscription.get("endpoint", "")).hostname

        def delivered(result):
            outcome = "ok" if result.ok else ("gone" if result.gone else "failed")
            if result.refused:
                # Not an outage: the endpoint is not allowed (private address, http).
                self.counters.inc("push_deliveries", outcome="refused")
                logs.event(log, logging.WARNING, "approval.delivery_refused", device=device.id,
                           endpoint_host=host, error=result.error)
                return None
            self.counters.inc("push_deliveries", outcome=outcome)
            if not result.ok:
                logs.event(log, logging.WARNING, "approval.delivery_failed", device=device.id,
                           endpoint_host=host, status=result.status, error=result.error)
            if result.gone:
                # The browser dropped the subscription: stop sending to it.
                return self.store.set_subscription(device.id, None)
            return None

        d = self.sender.send(device.push_subscription, payload)
        d.addCallback(delivered)
        d.addErrback(lambda f: log.error("approval.delivery_error %s", f.getTraceback()))

    # -- device side (the HTTP API) --

    def info(self) -> dict:
        """Public facts a device needs before enrolling."""
        return {"version": 1, "vapid_public_key": self.vapid_public_key,
                "server_time": self.wallclock()}

    def enroll(self, token: str, public_key: str, name: str, subscription: dict | None,
               signature: str) -> Deferred[Device]:
        """Redeem a one-time enrollment link for a device key."""
        return defer.ensureDeferred(self._enroll(token, public_key, name, subscription,
                                                 signature))

    async def _enroll(self, token, public_key, name, subscription, signature) -> Device:
        if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable():
            raise ApprovalError(400, "bad_request", "name must be 1-64 printable characters")
        try:
            key = crypto.load_public_key(public_key)
        except crypto.BadKey as exc:
            raise ApprovalError(400, "bad_request", str(exc)) from None
        check_subscription(subscription)
        self._syntax_check(subscription)
        if not crypto.verify(key, crypto.enroll_text(token, public_key, name), signature):
            raise ApprovalError(400, "bad_signature", "the enrollment is not signed by this key")
        now = self.wallclock()
        hashed = crypto.token_hash(token)
        enrollment = await self.store.enrollment(hashed)
        device = None
        if enrollment is not None:
            # DNS only for a valid link: no lookups on behalf of anyone who can POST.
            await self._check_endpoint(subscription, None)
            # the TOTP secret leaves the server once, in the enroll answer: the
            # device shows codes from it when it cannot get a push
            # Hex: an id never starts with "-", which command lines would take for an option.
            device = Device(id=secrets.token_hex(9), username=enrollment.username,
                            name=name, public_key=public_key, push_subscription=subscription,
                            created=now, last_seen=None, revoked=None,
                            totp_secret=passcodes.new_totp_secret())
            device = await self.store.redeem_enrollment(hashed, now, device)
        if device is None:
            self.counters.inc("enrollments", outcome="refused")
            logs.event(log, logging.WARNING, "approval.enroll_refused")
            raise ApprovalError(403, "invalid_enrollment",
                                "this enrollment link is unknown, used or expired")
        self.counters.inc("enrollments", outcome="ok")
        logs.event(log, logging.INFO, "approval.enrolled", user=device.username,
                   device=device.id, name=device.name)
        return device

    def authenticate(self, device_id: str, timestamp: str, nonce: str, signature: str,
                     method: str, path: str, body: bytes, *,
                     for_answer: bool = False) -> Deferred[Device]:
        """Check a device request's signature, time window and nonce.

        ``for_answer``: the request is an answer, whose compare-and-set refuses a
        revoked device in the store; over SQLite its device may then come from
        memory (`ClusterSide._device`). Every other request reads it there.

        A plain Deferred chain, no coroutine: every device request passes here
        (issue 16). Never raises; a refusal is a failed Deferred."""
        now = self.wallclock()
        try:
            # Plain digits only: int() would take "+1", " 1", "1_0", and a 400-digit
            # number that no float can hold (found by tests/fuzz).
            if not (isinstance(timestamp, str) and 1 <= len(timestamp) <= 12
                    and timestamp.isascii() and timestamp.isdigit()):
                raise self._unauthenticated(device_id, "bad timestamp")
            if abs(now - int(timestamp)) > CLOCK_SKEW:
                raise self._unauthenticated(device_id, "timestamp outside the allowed window")
            if not isinstance(nonce, str) or not 22 <= len(nonce) <= 128:
                raise self._unauthenticated(device_id, "bad nonce")
            d = self._device(device_id, now, for_answer)
        except Exception:  # noqa: BLE001 -- as a coroutine's: a failed Deferred
            return defer.fail()
        return d.addCallback(self._authenticated, _Signed(device_id, timestamp, nonce,
                                                          signature, method, path, body,
                                                          for_answer, now))

    def _authenticated(self, device: Device | None, signed: _Signed):
        """The device read: the rest of `authenticate` (the device, or a Deferred of it
        where a cluster node claims the nonce first)."""
        device_id, nonce, now = signed.device_id, signed.nonce, signed.now
        if device is None or device.revoked is not None:
            raise self._unauthenticated(device_id, "unknown or revoked device")
        self._forget_nonces(now)
        if (device_id, nonce) in self._nonces:
            raise self._unauthenticated(device_id, "replayed request")
        text = crypto.request_text(signed.method, signed.path, signed.timestamp, nonce,
                                   signed.body)
        if not crypto.verify(crypto.load_public_key(device.public_key), text, signed.signature):
            raise self._unauthenticated(device_id, "bad signature")
        # Cluster: the nonce is claimed in the store (a replay to another node is
        # refused); by the long-poll/list and the answer with their own store call.
        later = self.cluster is not None and (
            signed.for_answer or nonceclaim.pending_path(signed.method, signed.path))
        if self.cluster is not None and not later:
            d = self.store.claim_device_nonce(device_id, nonce, now + NONCE_MEMORY)
            return d.addCallback(self._claimed, device, nonce, now)
        return self._admitted(device, nonce, now, later)

    def _claimed(self, new: bool, device: Device, nonce: str, now: float) -> Device:
        if not new:  # seen by another node (or worker) of the cluster
            raise self._unauthenticated(device.id, "replayed request")
        return self._admitted(device, nonce, now, False)

    def _admitted(self, device: Device, nonce: str, now: float, later: bool) -> Device:
        self._nonces[(device.id, nonce)] = now + NONCE_MEMORY
        if device.last_seen is None or now - device.last_seen > LAST_SEEN_EVERY:
            # For `pushproxy devices list`; throttled so long-polls do not write constantly.
            self.store.touch_device(device.id, now).addErrback(lambda _: None)
            self._devices.refresh(dataclasses.replace(device, last_seen=now))
        return nonceclaim.claim_due(device, nonce, now + NONCE_MEMORY) if later else device

    async def _claim_now(self, device_id: str, nonce: nonceclaim.Nonce) -> None:
        """A deferred nonce claim on its own (a request that ends without its combined call)."""
        nonce.claimed = True
        if not await self.store.claim_device_nonce(device_id, nonce.value, nonce.expires):
            raise self._unauthenticated(device_id, "replayed request")

    def _unauthenticated(self, device_id, why: str) -> ApprovalError:
        self.counters.inc("device_auth_failures")
        logs.event(log, logging.WARNING, "approval.device_refused", device=device_id, why=why)
        return ApprovalError(401, "unauthenticated", why)

    def _forget_nonces(self, now: float) -> None:
        while self._nonces:
            key, expires = next(iter(self._nonces.items()))
            if expires > now:
                break
            del self._nonces[key]

    def pending(self, device: Device, wait: float) -> Deferred[list[dict]]:
        """Open requests for the device's user; with ``wait``, a long-poll."""
        wait = min(max(wait, 0.0), MAX_WAIT)
        if self.cluster is not None:
            return defer.ensureDeferred(self._pending(device, wait))
        # One process: its own logins, in memory (`_live`), and a plain Deferred
        # rather than a coroutine: every phone's long-poll passes here (issue 16).
        username = device.username
        txs = self._open.of_user(username, self.wallclock())
        if txs or wait <= 0:
            return defer.succeed([transaction_view(tx) for tx in txs])
        return self._park(username, wait).addCallback(self._open_views, username)

    def _open_views(self, _woken, username: str) -> list[dict]:
        return [transaction_view(tx) for tx in self._open.of_user(username, self.wallclock())]

    def _park(self, username: str, wait: float) -> Deferred:
        """A long-poll of ``username``'s device: fires when something changes for the
        user (`_wake`) or after ``wait`` seconds; cancelling it withdraws it."""
        poll: Deferred = Deferred(lambda d: self._unpoll(username, d))
        self._pollers[username].append(poll)
        timer = self.reactor.callLater(wait, self._end_poll, username, poll)
        return poll.addBoth(_stop_timer, timer)

    async def _live(self, username: str, device: Device | None = None) -> list[Transaction]:
        # Only requests a login is still waiting for: a store write can land after
        # its caller gave up (the store thread was stuck behind another process's
        # lock, and that login already ended on failmode); a device must not be
        # shown, and approve, a request that nothing waits for.
        if self.cluster is not None:  # waited for by a live node, any node
            now = self.wallclock()
            nonce = nonceclaim.due(device)
            if nonce is None:
                return await self.store.waiting_transactions(username, now, now - LIVE_FOR)
            nonce.claimed = True  # the request's nonce, with the read (nonceclaim)
            txs = await self.store.claim_and_list_waiting(
                device.id, nonce.value, nonce.expires, username, now, now - LIVE_FOR)
            if txs is None:  # seen by another node (or worker) of the cluster
                raise self._unauthenticated(device.id, "replayed request")
            return txs
        # One process: its own logins are the whole truth, kept in memory.
        return self._open.of_user(username, self.wallclock())

    async def _pending(self, device: Device, wait: float) -> list[dict]:
        txs = await self._live(device.username, device)
        if txs or wait <= 0:
            return [transaction_view(tx) for tx in txs]
        await self._park(device.username, wait)
        return [transaction_view(tx) for tx in await self._live(device.username)]

    def _end_poll(self, username: str, poll: Deferred) -> None:
        self._unpoll(username, poll)
        if not poll.called:
            poll.callback(None)

    def _unpoll(self, username: str, poll: Deferred) -> None:
        polls = self._pollers.get(username)
        if polls and poll in polls:
            polls.remove(poll)
            if not polls:
                del self._pollers[username]

    def _wake(self, username: str) -> None:
        """Something changed for ``username``: answer every long-poll now."""
        for poll in self._pollers.pop(username, []):
            if not poll.called:
                poll.callback(None)

    def answer(self, device: Device, txid: str, decision: str, signature: str,
               number: str | None = None, webauthn: dict | None = None) -> Deferred[dict]:
        """A device's signed answer; the first valid one decides the login.

        Fires with the body for the device: ``{"status": "recorded"}``, plus
        ``"code"`` (what the user types at the gateway) for an approved
        code-to-login request. ``webauthn``: the passkey assertion of an Approve
        that needs presence (`pushproxy.approval.presence`); an Approve whose
        presence check fails is recorded as refused, then answered 403.
        """
        tx = self._open.get(txid) if self.cluster is None else None
        if tx is not None and not tx.context.get("user_verification"):
            # The usual answer: to a login this process waits on, without a passkey.
            # The same checks as `_answer_claimed`, as a plain Deferred chain around
            # the compare-and-set rather than a coroutine (issue 16).
            try:
                return self._answer_open(device, tx, decision, signature, number)
            except Exception:  # noqa: BLE001 -- as a coroutine's: a failed Deferred
                return defer.fail()
        return defer.ensureDeferred(self._answer(device, txid, decision, signature, number,
                                                 webauthn))

    def _answer_open(self, device: Device, tx: Transaction, decision: str, signature: str,
                     number: str | None) -> Deferred[dict]:
        """`answer` to a pending transaction of this process that needs no passkey (one
        process, no cluster: its nonce is not claimed in the store)."""
        if decision not in _STATES:
            raise ApprovalError(400, "bad_request", "decision must be approve, deny or fraud")
        decision, status = self._checked_answer(device, tx, tx.id, decision, signature, number)
        now = self.wallclock()
        code = _login_code(status, tx)
        # Withdrawn but not yet closed in the store (flush_expired): too late.
        if not (now < tx.expires and tx.id not in self._expiring):
            return defer.ensureDeferred(self._not_won(tx.id, device, now))
        d = self.store.decide_transaction(tx.id, _STATES[decision], device.id, now)
        return d.addCallback(self._decided_open, device, tx, status, now, code)

    def _decided_open(self, won: bool, device: Device, tx: Transaction, status: PushStatus,
                      now: float, code: str | None):
        if not won:
            return defer.ensureDeferred(self._not_won(tx.id, device, now))
        return self._won(device, tx, tx.id, status, now, code, None, None)

    async def _answer(self, device: Device, txid: str, decision: str, signature: str,
                      number: str | None, webauthn: dict | None = None) -> dict:
        nonce = nonceclaim.due(device)  # cluster: claimed with the compare-and-set
        if nonce is None:
            return await self._answer_claimed(device, txid, decision, signature, number,
                                              webauthn, None)
        try:
            return await self._answer_claimed(device, txid, decision, signature, number,
                                              webauthn, nonce)
        except Exception:
            if not nonce.claimed:  # refused before its compare-and-set: claimed first
                await self._claim_now(device.id, nonce)
            raise

    async def _answer_claimed(self, device: Device, txid: str, decision: str, signature: str,
                              number: str | None, webauthn: dict | None,
                              nonce: nonceclaim.Nonce | None) -> dict:
        if decision not in _STATES:
            raise ApprovalError(400, "bad_request", "decision must be approve, deny or fraud")
        # A transaction this process waits on is in memory (its nonce and context
        # never change); the compare-and-set below is what decides, in the store.
        tx = self._open.get(txid)
        if tx is None and isinstance(txid, str):
            tx = await self.store.transaction(txid)
        decision, status = self._checked_answer(device, tx, txid, decision, signature, number)
        now = self.wallclock()
        presence, refusal = None, None
        if status is PushStatus.APPROVED and tx.context.get("user_verification") \
                and tx.state == "pending" and now < tx.expires:
            # in the answer's own path, before its compare-and-set: a refused
            # presence check is recorded as this request's answer (audited). The
            # nonce first: a replay must not use up the passkey challenge.
            if nonce is not None and not nonce.claimed:
                await self._claim_now(device.id, nonce)
            try:
                presence = await self.presence.check_approval(
                    device, tx, webauthn, tx.context["user_verification"])
            except Refusal as exc:
                refusal, presence = exc, f"refused:{exc.code}"
                decision, status = "deny", PushStatus.PRESENCE_NOT_VERIFIED
                logs.event(log, logging.WARNING, "approval.presence_refused", device=device.id,
                           user=tx.username, txid=txid, code=exc.code, why=exc.why)
            now = self.wallclock()
        code = _login_code(status, tx)
        if self.cluster is not None:
            # stored with its outcome and code: a waiter on any node reads them back
            won = tx.state == "pending" and now < tx.expires and \
                await self._record_answer(txid, device.id, nonce, _STATES[decision], now,
                                          status.value, code)
        else:
            # Withdrawn but not yet closed in the store (flush_expired): too late.
            won = tx.state == "pending" and now < tx.expires and txid not in self._expiring \
                and await self.store.decide_transaction(txid, _STATES[decision], device.id,
                                                        now)
        if not won:
            await self._not_won(txid, device, now)
        body = self._won(device, tx, txid, status, now, code, presence, refusal)
        if isinstance(body, Deferred):
            body = await body
        return body

    def _checked_answer(self, device: Device, tx: Transaction | None, txid, decision: str,
                        signature: str, number: str | None) -> tuple[str, PushStatus]:
        """An answer's checks before its compare-and-set (the transaction is the device's
        user's, the number's form, the answer's signature); the decision and status it
        stands for (a wrong number is a "deny"). Raises `ApprovalError` 404, 400, 403."""
        if tx is None or tx.username != device.username:
            if tx is not None:
                logs.event(log, logging.WARNING, "approval.cross_user_answer", device=device.id,
                           user=device.username, txid=txid)
            self.counters.inc("answers", outcome="unknown")
            raise ApprovalError(404, "unknown_transaction", "no such request for this user")
        matching = tx.context.get("verification") == "number_match" and decision == "approve"
        # isascii: "\u00b2" is a digit to isdigit(), and compare_digest refuses non-ASCII.
        if matching and not (isinstance(number, str) and number.isascii() and number.isdigit()
                             and len(number) <= 4):
            raise ApprovalError(400, "number_required",
                                "type the number shown on the login screen")
        text = crypto.answer_text(tx.id, tx.nonce, decision, tx.username, device.id,
                                  number if matching else None)
        if not crypto.verify(crypto.load_public_key(device.public_key), text, signature):
            self.counters.inc("answers", outcome="bad_signature")
            logs.event(log, logging.WARNING, "approval.bad_answer_signature", device=device.id,
                       txid=txid)
            raise ApprovalError(403, "bad_signature", "the answer is not signed by this device")
        status = _RESULTS[_STATES[decision]]
        if matching and not hmac.compare_digest(number, tx.context.get("number") or ""):
            # A wrong number is a "no": most likely a login the user did not start.
            decision, status = "deny", PushStatus.NUMBER_MISMATCH
        return decision, status

    async def _not_won(self, txid: str, device: Device, now: float):
        """The answer did not decide ``txid``: why, as the `ApprovalError` raised."""
        current = await self.store.transaction(txid)
        if current.state == "pending" and now < current.expires \
                and txid not in self._expiring:
            # still open: the compare-and-set refused the device (revoked meanwhile)
            raise self._unauthenticated(device.id, "unknown or revoked device")
        self.counters.inc("answers", outcome="late")
        if current.state in ("expired", "cancelled") or now >= current.expires \
                or txid in self._expiring:
            raise ApprovalError(410, "expired", "this request has expired")
        raise ApprovalError(409, "already_decided", "this request was already answered")

    def _won(self, device: Device, tx: Transaction, txid: str, status: PushStatus, now: float,
             code: str | None, presence: str | None, refusal: Refusal | None):
        """The answer decided ``txid``: the waiting login first (its RADIUS reply goes out
        in this call), then what can wait: the log line, events, other devices, alerts
        (issue 16). The device's body, or a Deferred of it (a fraud report locks the
        user first)."""
        result = PushResult(status, txid, device.id, code=code, presence=presence)
        waiter = self._waiting.pop(txid, None)
        self._open.discard(txid)
        if waiter is not None and not waiter.called:
            waiter.callback(result)
        self.waiters.settle(txid, result)  # joined logins, await_decision
        self.counters.inc("answers", outcome=status.value)
        logs.event(log, logging.INFO, "approval.answered", user=tx.username, device=device.id,
                   txid=txid, decision=status.value)
        body = {"status": "recorded"}
        if code is not None:
            body["code"] = code
        self._publish("decided", txid)  # other workers (PostgreSQL: the store did)
        self._publish("closed", tx.username)
        self._wake(tx.username)  # other devices see it closed
        if status is PushStatus.FRAUD:
            # "This wasn't me": someone has the password. No more pushes until an admin looks.
            d = self.store.lock_user(tx.username, now, "fraud report", tx.id)
            d.addErrback(_lock_failed, tx.username)
            return d.addCallback(self._alerted, body, status, tx, device, now, refusal)
        return self._alerted(None, body, status, tx, device, now, refusal)

    def _alerted(self, _locked, body: dict, status: PushStatus, tx: Transaction,
                 device: Device, now: float, refusal: Refusal | None) -> dict:
        if status is not PushStatus.APPROVED and self.alerter is not None:
            self.alerter.alert(status.value, tx, device, now)
        if refusal is not None:
            raise ApprovalError(403, "presence_not_verified",
                                f"the Approve was refused: {refusal.why}")
        return body

    async def open_transaction_of(self, device: Device, txid: str) -> Transaction:
        """The open request ``txid`` of the device's user (ApprovalError 404/410 if not)."""
        tx = self._open.get(txid) or await self.store.transaction(txid)
        if tx is None or tx.username != device.username:
            raise ApprovalError(404, "unknown_transaction", "no such request for this user")
        if tx.state != "pending" or self.wallclock() >= tx.expires or txid in self._expiring:
            raise ApprovalError(410, "expired", "this request is no longer open")
        return tx

    def set_subscription(self, device: Device, subscription: dict | None) -> Deferred[None]:
        """Replace the device's Web Push subscription (None: long-poll only).

        The endpoint must pass `pushtarget.check_registration` (https, public
        addresses), else ApprovalError 400 ``bad_push_endpoint``.
        """
        return defer.ensureDeferred(self._set_subscription(device, subscription))

    async def _set_subscription(self, device: Device, subscription: dict | None) -> None:
        check_subscription(subscription)
        self._syntax_check(subscription, device.id)
        await self._check_endpoint(subscription, device.id)
        await self.store.set_subscription(device.id, subscription)

    def _syntax_check(self, subscription: dict | None, device_id: str | None = None) -> None:
        if subscription is not None:
            try:
                pushtarget.parse_endpoint(subscription["endpoint"], self.push_rules)
            except pushtarget.EndpointRefused as exc:
                raise self._endpoint_refused(exc, device_id) from None

    async def _check_endpoint(self, subscription: dict | None, device_id: str | None) -> None:
        if subscription is None:
            return
        try:
            await pushtarget.check_registration(subscription["endpoint"], self.push_rules,
                                                self.resolver, self.reactor)
        except pushtarget.EndpointRefused as exc:
            raise self._endpoint_refused(exc, device_id) from None

    def _endpoint_refused(self, exc: Exception, device_id: str | None) -> ApprovalError:
        self.counters.inc("push_endpoints_refused")
        logs.event(log, logging.WARNING, "approval.push_endpoint_refused", device=device_id,
                   why=str(exc))
        return ApprovalError(400, "bad_push_endpoint", str(exc))


def check_subscription(subscription) -> None:
    """A Web Push subscription as browsers give it, or None; else ApprovalError 400."""
    if subscription is None:
        return
    # The endpoint URL itself is checked next, by pushtarget.parse_endpoint (urlsplit
    # here raised ValueError, a 500, on "https://[::1/x").
    ok = (isinstance(subscription, dict) and isinstance(subscription.get("endpoint"), str)
          and len(subscription["endpoint"]) <= 2048
          and isinstance(subscription.get("keys"), dict)
          and isinstance(subscription["keys"].get("p256dh"), str)
          and isinstance(subscription["keys"].get("auth"), str))
    if not ok:
        raise ApprovalError(400, "bad_request", "push_subscription must have an http(s) "
                                                "endpoint and keys.p256dh and keys.auth")
