"""Cluster mode in the engine: several Engine instances ("nodes") over one store decide as one.

Each node has its own store connection (an inline AsyncStore, so a Clock drives
time) on one SQLite file or one PostgreSQL database; the push provider is a
recording fake shared by the nodes, with the ``await_decision(txid)`` the
approval service offers in cluster mode.
"""

from __future__ import annotations

import dataclasses
import os
from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.runner import InlineRunner
from pushproxy.audit import AuditLog
from pushproxy.cluster import cluster_mode
from pushproxy.config import FailMode, NoDeviceMode, PushConfig
from pushproxy.decision import Outcome, PrimaryStatus, PushResult, PushStatus, Reason
from pushproxy.engine import Engine, LoginRequest
from pushproxy.fatigue import FatigueLimits
from pushproxy.loginstate import LocalState, StoreState
from pushproxy.metrics import Counters
from pushproxy.policy import Policy, Verification
from tests.support import ScriptedDirectory

START = 1_800_000_000


class ClusterProvider:
    """A recording push provider shared by the nodes: ``answer`` decides a txid, and
    fires the node that started the push and every ``await_decision`` waiter."""

    def __init__(self, auto: PushStatus | None = None):
        self.auto = auto
        self.requests = []
        self.awaited = []
        self._started: dict = {}
        self._waiters: dict = {}

    def request_approval(self, request):
        self.requests.append(request)
        d = defer.Deferred()
        self._started[request.txid] = d
        if self.auto is not None:
            self.answer(request.txid, self.auto)
        return d

    def await_decision(self, txid):
        self.awaited.append(txid)
        d = defer.Deferred()
        self._waiters.setdefault(txid, []).append(d)
        return d

    def answer(self, txid, status=PushStatus.APPROVED, code=None):
        result = PushResult(status, txid, "dev1", code=code)
        started = self._started.pop(txid, None)
        if started is not None and not started.called:
            started.callback(result)
        for waiter in self._waiters.pop(txid, []):
            waiter.callback(result)


class StoreFactors:
    """Second factors over the shared store: the fraud lock is the store's."""

    def __init__(self, store):
        self.store = store
        self.alerts = []

    def lock_of(self, username):
        return self.store.user_lock(username)

    def verify_passcode(self, username, code, now, *, source, limits):
        raise AssertionError("no passcodes in these tests")

    def fatigue_alert(self, username, now):
        self.alerts.append(username)


class Cluster:
    """``n`` engines over one store (or one engine with in-memory state: ``local``)."""

    def __init__(self, backend, n, *, limits, provider, local=False, remember_minutes=0):
        self.clock = Clock()
        self.clock.advance(START)
        self.provider = provider
        self.stores, self.engines = [], []
        counters = Counters()
        for _ in range(n):
            store = backend.open() if backend is not None else None
            shared = AsyncStore.inline(store) if store is not None else None
            if store is not None:
                self.stores.append(store)
            state = LocalState(limits) if local else StoreState(shared, limits)
            if not local:
                state.start()
            factors = StoreFactors(shared) if shared is not None else None
            self.engines.append(Engine(
                clock=self.clock, directory=ScriptedDirectory(), provider=provider,
                push=PushConfig(timeout=60, failmode=FailMode.SECURE,
                                no_device=NoDeviceMode.REJECT),
                audit=AuditLog(os.devnull, counters), counters=counters,
                policy=Policy(rules=(), default_verification=Verification.NONE,
                              timezone="UTC", remember_minutes=remember_minutes),
                factors=factors, limits=limits, state=state))

    def close(self):
        for store in self.stores:
            store.close()


@pytest.fixture
def clusters(backend):
    made = []

    def make(n, **kwargs):
        cluster = Cluster(None if kwargs.get("local") else backend, n, **kwargs)
        made.append(cluster)
        return cluster
    yield make
    for cluster in made:
        cluster.close()


def req(*, station="198.51.100.7", password="alice-pw", state=None, verification=None,
        user="alice"):
    return LoginRequest(protocol="radius", username=user, password=password, client_name="vpn",
                        source="127.0.0.1", calling_station=station, nas="gw",
                        no_device=NoDeviceMode.REJECT, state=state, verification=verification,
                        port="7")


def result(d):
    out = []
    d.addCallback(out.append)
    return out


LIMITS = FatigueLimits()  # 1 pending, 5 pushes / 600 s, 3 denials / 900 s -> 900 s pause


def denied_logins(cluster):
    """20 logins 60 s apart, round robin over the nodes, each push denied at once."""
    reasons = []
    for i in range(20):
        engine = cluster.engines[i % len(cluster.engines)]
        reasons.append(result(engine.login(req(station=f"198.51.100.{i}")))[0].reason)
        cluster.clock.advance(60)
    return reasons, len(cluster.provider.requests)


def test_twenty_denied_logins_over_three_nodes_give_the_same_pushes_and_pause_as_one(clusters):
    one = clusters(1, limits=LIMITS, provider=ClusterProvider(PushStatus.DENIED), local=True)
    three = clusters(3, limits=LIMITS, provider=ClusterProvider(PushStatus.DENIED))
    single_reasons, single_pushes = denied_logins(one)
    spread_reasons, spread_pushes = denied_logins(three)
    assert spread_reasons == single_reasons
    # 3 denials pause pushes for 900 s; then 3 more denials pause them again
    assert spread_pushes == single_pushes == 6
    assert single_reasons[3:17] == [Reason.PUSHES_PAUSED] * 14
    assert single_reasons[17:] == [Reason.PUSH_DENIED] * 3
    assert single_reasons.count(Reason.PUSH_DENIED) == spread_pushes
    # one alert per pause, raised by whichever node crossed the threshold
    alerts = sum(len(engine.factors.alerts) for engine in three.engines)
    assert alerts == 2


def test_a_push_pending_on_one_node_holds_the_users_pending_limit_on_the_others(clusters):
    cluster = clusters(2, limits=LIMITS, provider=ClusterProvider())
    a, b = cluster.engines
    first = result(a.login(req(station="198.51.100.1")))
    second = result(b.login(req(station="198.51.100.2")))
    assert second[0].reason is Reason.TOO_MANY_PENDING and not first
    cluster.provider.answer(cluster.provider.requests[0].txid)
    assert first[0].reason is Reason.PUSH_APPROVED
    assert result(b.login(req(station="198.51.100.2")))  == []  # admitted: waits for the phone


def test_a_fraud_lock_made_via_one_node_refuses_logins_on_all(clusters):
    cluster = clusters(3, limits=LIMITS, provider=ClusterProvider(PushStatus.APPROVED))
    cluster.stores[0].lock_user("alice", START, "fraud", None)
    for engine in cluster.engines:
        assert result(engine.login(req()))[0].reason is Reason.USER_LOCKED
    assert cluster.provider.requests == []
    cluster.stores[2].unlock_user("alice")
    assert result(cluster.engines[1].login(req()))[0].reason is Reason.PUSH_APPROVED


def test_a_state_issued_by_node_a_is_honoured_at_node_b_with_the_push_result(clusters):
    """Number matching across a failover: the follow-up at B waits for A's push."""
    cluster = clusters(2, limits=LIMITS, provider=ClusterProvider())
    a, b = cluster.engines
    challenge = result(a.login(req(verification=Verification.NUMBER_MATCH)))[0]
    assert challenge.outcome is Outcome.CHALLENGE
    (push,) = cluster.provider.requests
    assert push.number in challenge.message
    follow_up = result(b.login(req(password="", state=challenge.state)))
    assert follow_up == [] and cluster.provider.awaited == [push.txid]
    cluster.provider.answer(push.txid, PushStatus.APPROVED)
    assert follow_up[0].outcome is Outcome.ACCEPT and follow_up[0].user == "alice"
    # single use on every node, the issuing one included
    for engine in (a, b):
        replay = result(engine.login(req(password="", state=challenge.state)))[0]
        assert replay.reason is Reason.CHALLENGE_INVALID
    assert len(cluster.provider.requests) == 1


def test_a_state_answered_elsewhere_is_refused_for_another_user_or_client(clusters):
    cluster = clusters(2, limits=LIMITS, provider=ClusterProvider())
    a, b = cluster.engines
    challenge = result(a.login(req(verification=Verification.NUMBER_MATCH)))[0]
    other = result(b.login(req(password="", state=challenge.state, user="bob")))[0]
    assert other.reason is Reason.CHALLENGE_INVALID


def test_a_denied_number_match_answered_at_b_counts_one_denial(clusters):
    limits = FatigueLimits(max_denials=2)
    cluster = clusters(2, limits=limits, provider=ClusterProvider())
    a, b = cluster.engines
    for n in range(2):
        challenge = result(a.login(req(verification=Verification.NUMBER_MATCH)))[0]
        follow_up = result(b.login(req(password="", state=challenge.state)))
        cluster.provider.answer(challenge.txid, PushStatus.NUMBER_MISMATCH)
        assert follow_up[0].reason is Reason.NUMBER_MISMATCH
        # both nodes saw the denial; it counted once: no pause after the first
        paused = result(b.login(req(station="203.0.113.9")))
        if n == 0:
            assert paused == []
            cluster.provider.answer(cluster.provider.requests[-1].txid)
            cluster.clock.advance(1)
        else:
            assert paused[0].reason is Reason.PUSHES_PAUSED


def test_a_login_remembered_at_node_a_is_honoured_at_node_b(clusters):
    cluster = clusters(2, limits=LIMITS, provider=ClusterProvider(PushStatus.APPROVED),
                       remember_minutes=60)
    a, b = cluster.engines
    assert result(a.login(req()))[0].reason is Reason.PUSH_APPROVED
    assert result(b.login(req()))[0].reason is Reason.REMEMBERED
    assert len(cluster.provider.requests) == 1
    # another calling station is another login
    assert result(b.login(req(station="203.0.113.5")))[0].reason is Reason.PUSH_APPROVED


def test_the_in_process_join_still_works_and_the_join_key_matches_across_nodes(clusters):
    """The same login at another node (a NAS failing over) reaches the provider with the
    same join key, past the pending limit its own push holds; another session does not."""
    cluster = clusters(2, limits=LIMITS, provider=ClusterProvider())
    a, b = cluster.engines
    assert a.state.digest_key == b.state.digest_key != b""
    first, joined = result(a.login(req())), result(a.login(req()))
    assert len(cluster.provider.requests) == 1  # joined in process: one push
    elsewhere = result(b.login(req()))  # the fake provider does not join: a second request
    other_pw = result(b.login(req(password="wrong")))  # wrong password: no push at all
    assert other_pw[0].reason is Reason.BAD_CREDENTIALS
    different_station = result(b.login(req(station="203.0.113.4")))
    assert different_station[0].reason is Reason.TOO_MANY_PENDING
    at_a, at_b = cluster.provider.requests
    assert at_a.join_key is not None and at_a.join_key == at_b.join_key
    cluster.provider.answer(at_a.txid)
    assert first[0].reason is joined[0].reason is Reason.PUSH_APPROVED
    assert elsewhere == []
    # another calling station is another session: another key
    assert b.state.join_key(("vpn", "gw", None, "203.0.113.4", "7", "alice"),
                            b"x") != at_a.join_key


def test_single_process_keeps_in_memory_state_and_no_join_key():
    """The default (one process on SQLite): LocalState, nothing computed for other nodes."""
    assert LocalState().join_key(("vpn", "alice"), b"d") is None
    sqlite = SimpleNamespace(approval=SimpleNamespace(database="/var/lib/p/approval.db"),
                             daemon=SimpleNamespace(workers=1))
    assert not cluster_mode(sqlite)
    sqlite.daemon.workers = 2
    assert cluster_mode(sqlite)
    pg = SimpleNamespace(approval=SimpleNamespace(database="postgresql://db/pushproxy"),
                         daemon=SimpleNamespace())
    assert cluster_mode(pg)


class FailingRunner(InlineRunner):
    """A store runner whose every call fails as an unreachable database does."""

    def __init__(self):
        from pushproxy.approval.store import SQLiteStore

        super().__init__(SQLiteStore(":memory:"))  # never called

    def submit(self, method, *args, **kwargs):
        from pushproxy.approval.store import StoreError

        return defer.fail(StoreError("approval store: connection refused"))


@pytest.mark.parametrize("failmode, outcome", [(FailMode.SECURE, Outcome.REJECT),
                                               (FailMode.SAFE, Outcome.ACCEPT)])
def test_an_unreachable_shared_state_follows_failmode_and_starts_no_push(failmode, outcome):
    clock = Clock()
    clock.advance(START)
    provider, counters = ClusterProvider(PushStatus.APPROVED), Counters()
    engine = Engine(clock=clock, directory=ScriptedDirectory(), provider=provider,
                    push=PushConfig(timeout=60, failmode=failmode,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(os.devnull, counters), counters=counters,
                    state=StoreState(AsyncStore(FailingRunner())))
    for verification in (None, Verification.NUMBER_MATCH):
        decision = result(engine.login(req(verification=verification)))[0]
        assert decision.outcome is outcome
        assert decision.reason.value.startswith("push_unavailable")
    assert provider.requests == [] and counters.get("push_provider_errors") == 2


@pytest.mark.parametrize("database, workers, shared", [
    (":memory:", 1, False), (":memory:", 2, True),
    ("postgresql://pushproxy@127.0.0.1:1/pushproxy", 1, True)])
def test_the_daemon_shares_the_state_only_in_cluster_mode(tmp_path, database, workers, shared):
    """One process on SQLite keeps the in-memory state (no store call per login)."""
    from pushproxy.wiring import build_daemon
    from tests.integration.harness import load, write_config

    slapd = SimpleNamespace(service_password="x", url="ldap://127.0.0.1:1",
                            service_dn="cn=svc,dc=example", people_dn="ou=people,dc=example",
                            group_dn=lambda name: f"cn={name},dc=example")
    path = write_config(tmp_path, slapd, approval=(
        "approval:\n  listen: \"127.0.0.1:0\"\n  public_url: \"http://127.0.0.1\"\n"
        f"  database: \"{database}\"\n"))
    config = load(path)
    if workers > 1:  # daemon.workers (its config key comes with the worker processes)
        import dataclasses

        fields = {f.name: getattr(config.daemon, f.name)
                  for f in dataclasses.fields(config.daemon)}
        config = dataclasses.replace(config, daemon=SimpleNamespace(
            **dict(fields, workers=workers)))
    daemon = build_daemon(config, Clock())
    assert isinstance(daemon.engine.state, StoreState if shared else LocalState)


def test_the_cluster_component_purges_expired_state_periodically(backend):
    from pushproxy.wiring import LoginStateComponent

    clock = Clock()
    clock.advance(START)
    store = backend.open()
    try:
        state = StoreState(AsyncStore.inline(store), LIMITS)
        component = LoginStateComponent(state, clock)
        component.start()
        state.remember(("vpn", "alice", "st"), "alice", START + 10)
        assert result(state.remembered(("vpn", "alice", "st"), START))[0] is True
        store.remember_login("other", "bob", START + 10 ** 6)
        clock.advance(LoginStateComponent.PURGE_EVERY)
        assert store.remembered_login("other", START)  # not expired: kept
        assert store.forget_logins("alice") == 0  # expired: purged
        component.stop()
        assert not clock.getDelayedCalls()
    finally:
        store.close()


class HeldRunner(InlineRunner):
    """Runs store calls at once, except ``fatigue_admit``, held until ``release``."""

    def __init__(self, store):
        super().__init__(store)
        self.held = []

    def submit(self, method, *args, **kwargs):
        if method.__name__ != "fatigue_admit":
            return super().submit(method, *args, **kwargs)
        d = defer.Deferred()
        self.held.append((d, args))
        return d

    def release(self):
        held, self.held = self.held, []
        for d, args in held:
            d.callback(self.store.fatigue_admit(*args))


def held_engine(tmp_path):
    from pushproxy.approval.store import SQLiteStore

    clock = Clock()
    clock.advance(START)
    runner = HeldRunner(SQLiteStore(str(tmp_path / "approval.db")))
    state = StoreState(AsyncStore(runner), LIMITS)
    state.start()
    counters = Counters()
    engine = Engine(clock=clock, directory=ScriptedDirectory(), provider=ClusterProvider(),
                    push=PushConfig(timeout=60, failmode=FailMode.SAFE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(os.devnull, counters), counters=counters, state=state)
    return engine, runner


def test_a_login_of_the_same_session_during_the_store_round_trip_joins_the_push(tmp_path):
    engine, runner = held_engine(tmp_path)
    first, second = result(engine.login(req())), result(engine.login(req()))
    assert len(runner.held) == 1  # the second login asked nothing: it joined
    runner.release()
    (push,) = engine.provider.requests
    engine.provider.answer(push.txid)
    assert first[0].reason is second[0].reason is Reason.PUSH_APPROVED
    runner.store.close()


def test_stopping_during_the_store_round_trip_sends_no_push(tmp_path):
    engine, runner = held_engine(tmp_path)
    pending = result(engine.login(req()))
    engine.stop()
    runner.release()
    assert pending[0].reason is Reason.SHUTTING_DOWN  # never failmode safe's Accept
    assert engine.provider.requests == []
    # the push admitted but never sent does not hold the user's pending limit
    assert runner.store.fatigue_admit("alice", START + 1, LIMITS, "next", START + 61, None) is None
    runner.store.close()


def test_code_to_login_answered_at_node_b_checks_the_code_from_the_push_result(clusters):
    """await_decision carries the code an approved code_to_login push showed."""
    cluster = clusters(2, limits=LIMITS, provider=ClusterProvider())
    a, b = cluster.engines
    outcomes = []
    for typed in ("4711", "9999"):
        challenge = result(a.login(req(verification=Verification.CODE_TO_LOGIN,
                                       station=f"198.51.100.{len(typed) + len(outcomes)}")))[0]
        follow_up = result(b.login(req(password=typed, state=challenge.state,
                                       station="198.51.100.1")))
        cluster.provider.answer(challenge.txid, PushStatus.APPROVED, code="4711")
        outcomes.append(follow_up[0].reason)
        cluster.clock.advance(1)
    assert outcomes == [Reason.PUSH_APPROVED, Reason.WRONG_LOGIN_CODE]


class CountingFactors(StoreFactors):
    """StoreFactors that count the separate lock checks."""

    def __init__(self, store):
        super().__init__(store)
        self.lock_checks = 0

    def lock_of(self, username):
        self.lock_checks += 1
        return super().lock_of(username)


def counting(cluster):
    for engine in cluster.engines:
        engine.factors = CountingFactors(engine.factors.store)
    return [engine.factors for engine in cluster.engines]


def test_a_push_login_is_refused_for_a_lock_made_at_another_node_by_the_admission(clusters):
    """Cluster mode: the lock check travels with the fatigue admission (no separate
    call), and a lock made at any node still stops the next push, its challenge too."""
    cluster = clusters(2, limits=LIMITS, provider=ClusterProvider(PushStatus.APPROVED))
    a, b = cluster.engines
    factors = counting(cluster)
    assert result(b.login(req()))[0].reason is Reason.PUSH_APPROVED
    cluster.stores[0].lock_user("alice", START, "fraud", None)
    assert result(b.login(req(station="198.51.100.8")))[0].reason is Reason.USER_LOCKED
    challenge = result(b.login(req(station="198.51.100.9",
                                   verification=Verification.NUMBER_MATCH)))[0]
    assert challenge.reason is Reason.USER_LOCKED
    assert len(cluster.provider.requests) == 1
    assert [f.lock_checks for f in factors] == [0, 0]
    # seen locked: once unlocked, the denials behind the lock go (as saw_locked did)
    cluster.stores[1].unlock_user("alice")
    assert result(a.login(req(station="198.51.100.10")))[0].reason is Reason.PUSH_APPROVED


def test_a_locked_users_remembered_login_is_refused_in_cluster_mode(clusters):
    """A remembered login asks no admission: the lock is checked before it is served."""
    cluster = clusters(2, limits=LIMITS, provider=ClusterProvider(PushStatus.APPROVED),
                       remember_minutes=60)
    a, b = cluster.engines
    factors = counting(cluster)
    assert result(a.login(req()))[0].reason is Reason.PUSH_APPROVED
    assert result(b.login(req()))[0].reason is Reason.REMEMBERED
    cluster.stores[0].lock_user("alice", START, "fraud", None)
    assert result(b.login(req()))[0].reason is Reason.USER_LOCKED
    assert factors[1].lock_checks == 2  # with each remembered login only
    assert len(cluster.provider.requests) == 1


class AliasDirectory(ScriptedDirectory):
    """Several login names for one account (as a directory matching mail or uid does)."""

    def authenticate(self, username, password):
        name = "alice" if username in ("alice", "alice.smith", "asmith") else username
        d = super().authenticate(name, password)
        return d.addCallback(lambda r: dataclasses.replace(r, account=name)
                             if r.status is PrimaryStatus.OK else r)


def test_a_locked_user_does_not_join_the_push_pending_in_process(clusters):
    """A login of the same session under another name of the same account joins the
    push pending at its node without an admission: the lock is checked first, as
    before the push was admitted."""
    cluster = clusters(1, limits=LIMITS, provider=ClusterProvider())
    (a,) = cluster.engines
    a.directory = AliasDirectory()
    factors = counting(cluster)
    first = result(a.login(req()))
    assert first == [] and len(cluster.provider.requests) == 1
    assert result(a.login(req(user="alice.smith"))) == []  # joined: the same push
    assert a.counters.get("pushes_joined") == 1 and factors[0].lock_checks == 1
    cluster.stores[0].lock_user("alice", START, "fraud", None)
    late = result(a.login(req(user="asmith")))
    assert late[0].reason is Reason.USER_LOCKED
    assert len(cluster.provider.requests) == 1
