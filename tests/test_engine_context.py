"""The engine's context step with a Clock: a real GeoIP database (mmdb-writer), a real
SQLite store through the inline AsyncStore, a scripted phone and a recording alerter."""

from __future__ import annotations

import dataclasses
import ipaddress
import json

import pytest
from twisted.internet.task import Clock

from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.store import SQLiteStore
from pushproxy.audit import AuditLog
from pushproxy.config import FailMode, NoDeviceMode, PushConfig
from pushproxy.contextcheck import ContextChecks
from pushproxy.decision import Outcome, PushStatus, Reason
from pushproxy.engine import Engine, LoginRequest
from pushproxy.geoip import GeoConfig
from pushproxy.metrics import Counters
from pushproxy.risk import ContextConfig, RiskSettings
from tests.geodb import LOOK_UP, write_asn, write_city
from tests.support import ScriptedDirectory, ScriptedProvider


class Alerts:
    """Records alerts as the approval service's Alerter would send them."""

    def __init__(self):
        self.sent = []

    def user_alert(self, event, username, now, **details):
        self.sent.append((event, username, now, details))


@pytest.fixture
def setup(tmp_path):
    clock = Clock()
    clock.advance(1_800_000_000)  # 2027-01-15 08:00 UTC
    counters = Counters()
    store = SQLiteStore(":memory:")
    alerts = Alerts()
    geo = GeoConfig(str(write_city(tmp_path / "c.mmdb")), str(write_asn(tmp_path / "a.mmdb")),
                    tuple(map(ipaddress.ip_network, LOOK_UP)))
    engine = Engine(clock=clock, directory=ScriptedDirectory(), provider=ScriptedProvider(),
                    push=PushConfig(timeout=60, failmode=FailMode.SECURE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(str(tmp_path / "audit.jsonl"), counters), counters=counters)
    engine.context = ContextChecks(
        ContextConfig(geo, RiskSettings(learning_logins=2, learning_days=0)),
        store=AsyncStore.inline(store), counters=counters, alerter=alerts)
    yield engine, clock, store, alerts, tmp_path
    store.close()


def login(station: str) -> LoginRequest:
    return LoginRequest(protocol="radius", username="alice", password="alice-pw",
                        client_name="vpn", source="127.0.0.1", calling_station=station,
                        nas="gw1", no_device=NoDeviceMode.REJECT)


def run(engine, station, answer=PushStatus.APPROVED):
    out = []
    engine.login(login(station)).addCallback(out.append)
    if not out:
        engine.provider.answer(status=answer)
    return out[0]


def audit(tmp_path):
    return [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_ten_minutes_and_nine_thousand_km_after_an_approved_login_is_denied_with_an_alert(
        setup):
    engine, clock, store, alerts, tmp_path = setup
    for station in ("192.0.2.1", "192.0.2.2"):
        assert run(engine, station).reason is Reason.PUSH_APPROVED
        clock.advance(3600)
    assert store.user_baseline("alice").approved == 2
    pushes = len(engine.provider.requests)
    clock.advance(600 - 3600)  # ten minutes after the last approval
    decision = run(engine, "203.0.113.9")
    assert (decision.outcome, decision.reason) == (Outcome.REJECT, Reason.RISK_DENY)
    assert len(engine.provider.requests) == pushes  # the phone was not asked
    (event, user, _, details), = alerts.sent
    assert (event, user, details["reason"]) == ("risk_deny", "alice", "impossible_travel")
    assert details["location"]["country_code"] == "JP"
    last = audit(tmp_path)[-1]
    assert last["reason"] == "risk_signal_deny" and "impossible_travel" in last["signals"]
    assert store.user_baseline("alice").countries == {"DE"}  # a denied login teaches nothing


def test_a_new_country_steps_a_plain_push_up_to_number_matching_with_a_warning(setup):
    engine, clock, store, alerts, _ = setup
    for station in ("192.0.2.1", "192.0.2.2"):
        run(engine, station)
    clock.advance(86400)
    out = []
    engine.login(login("198.51.100.7")).addCallback(out.append)
    assert out[0].outcome is Outcome.CHALLENGE
    request = engine.provider.requests[-1]
    assert request.verification == "number_match"
    assert "First login from Portugal" in request.warnings
    assert request.location["city"] == "Lisbon"


def test_the_usual_country_gets_a_plain_push_with_its_location(setup):
    engine, clock, *_ = setup
    for station in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        assert run(engine, station).reason is Reason.PUSH_APPROVED
        clock.advance(3600)
    request = engine.provider.requests[-1]
    assert request.verification == "none" and request.warnings == ()
    assert request.location["label"] == "Berlin, Germany · AS64500 Example Berlin Net"


def test_an_unreadable_baseline_costs_the_signals_not_the_login(setup):
    engine, clock, store, alerts, tmp_path = setup
    store.close()  # every store call now fails
    decision = run(engine, "203.0.113.9")
    assert decision.reason is Reason.PUSH_APPROVED
    assert engine.counters.get("context_errors") >= 1
    assert audit(tmp_path)[-1]["location"]["country_code"] == "JP"


def test_a_wrong_password_is_audited_with_its_location_and_no_baseline_read(setup):
    engine, clock, store, alerts, tmp_path = setup
    out = []
    engine.login(LoginRequest(protocol="radius", username="alice", password="nope",
                              client_name="vpn", source="127.0.0.1",
                              calling_station="2001:db8:1::7", nas=None,
                              no_device=NoDeviceMode.REJECT)).addCallback(out.append)
    assert out[0].reason is Reason.BAD_CREDENTIALS
    assert audit(tmp_path)[-1]["location"]["city"] == "Berlin"


def test_an_application_peer_is_located_but_never_assessed_or_learned(setup):
    """The LDAP front end's peer is the application server, not the user: a bind relayed
    from a server in Tokyo ten minutes after alice's Berlin logins is no travel."""
    import dataclasses

    engine, clock, store, alerts, _ = setup
    for station in ("192.0.2.1", "192.0.2.2"):
        run(engine, station)
    clock.advance(600)
    out = []
    engine.login(dataclasses.replace(login("203.0.113.9"), peer_is_application=True)
                 ).addCallback(out.append)
    assert out == [] and alerts.sent == []  # a push is out, nothing denied
    request = engine.provider.requests[-1]
    assert request.location["country_code"] == "JP" and request.warnings == ()
    engine.provider.answer(status=PushStatus.APPROVED)
    assert out[0].reason is Reason.PUSH_APPROVED
    assert store.user_baseline("alice").approved == 2  # not learned


def test_a_located_login_is_looked_up_in_the_database_once(setup):
    """The context step's location is the audit's too: one GeoIP lookup per login,
    whether it is approved, denied by a signal, or refused before the context step."""
    engine, clock, store, alerts, tmp_path = setup
    geo, looked_up = engine.context.geo, []
    real = geo.locate

    def locate(address):
        looked_up.append(address)
        return real(address)

    geo.locate = locate  # the real lookup, counted
    assert run(engine, "192.0.2.1").reason is Reason.PUSH_APPROVED
    clock.advance(3600)
    assert run(engine, "192.0.2.2").reason is Reason.PUSH_APPROVED
    assert looked_up == ["192.0.2.1", "192.0.2.2"]
    assert audit(tmp_path)[-1]["location"]["city"] == "Berlin"
    clock.advance(600)  # ten minutes after Berlin, from Tokyo: denied
    assert run(engine, "203.0.113.9").reason is Reason.RISK_DENY
    out = []
    engine.login(dataclasses.replace(login("198.51.100.7"), password="nope")
                 ).addCallback(out.append)
    assert out[0].reason is Reason.BAD_CREDENTIALS
    assert looked_up == ["192.0.2.1", "192.0.2.2", "203.0.113.9", "198.51.100.7"]
    assert [e["location"]["country_code"] for e in audit(tmp_path)[-2:]] == ["JP", "PT"]
