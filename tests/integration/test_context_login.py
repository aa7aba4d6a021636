"""Issue 21 acceptance (location and baselines) with real slapd, radclient, the approval
service, the command-line authenticator and databases built by mmdb-writer.

The Calling-Station-Ids are documentation ranges (listed in context.geoip.look_up):
192.0.2.0/24 is "Berlin", 198.51.100.0/24 "Lisbon", 203.0.113.0/24 "Tokyo".
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor, threads
from twisted.web import server

from pushproxy.approval import authenticator as auth
from tests.geodb import LOOK_UP, write_asn, write_city
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient
from tests.integration.test_approval_e2e import Recorder, first_request

REPO = Path(__file__).resolve().parents[2]
MA = ("Message-Authenticator", "0x00")


def context_section(tmp: Path, signals: str = "") -> str:
    city, asn = write_city(tmp / "city.mmdb"), write_asn(tmp / "asn.mmdb")
    return textwrap.dedent(f"""\
        context:
          geoip:
            city_database: {city}
            asn_database: {asn}
            look_up: [{", ".join(LOOK_UP)}]
          baselines:
            learning_logins: 2
            learning_days: 0
            max_speed_kmh: 1000
            min_distance_km: 3000
          signals:
            unusual_hour: ignore
        """) + signals


def attrs(station: str, password="alice-pw", state=None):
    out = [("User-Name", "alice"), ("User-Password", password),
           ("Calling-Station-Id", station), MA]
    if state:
        out.insert(2, ("State", state))
    return out


def cli_pending(state: str) -> str:
    """The real command-line authenticator's prompt (``authenticator pending``)."""
    done = subprocess.run([sys.executable, "-m", "pushproxy.cli", "authenticator", "pending",
                           "--state", state, "--wait", "10"], capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest_twisted.inlineCallbacks
def plain_push(s, state, station):
    """A login that gets a plain push; approved from the CLI. Returns (reply, prompt, request)."""
    login = radclient(s.radius, SECRET, attrs(station), timeout=30)
    request = yield threads.deferToThread(first_request, state)
    prompt = yield threads.deferToThread(cli_pending, state)
    yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
    reply = yield login
    return reply, prompt, request


@pytest_twisted.inlineCallbacks
def test_location_on_the_cli_prompt_and_in_the_audit_then_step_up_and_impossible_travel(
        stacks, tmp_path):
    hook = Recorder(status=204)
    listening = reactor.listenTCP(0, server.Site(hook), interface="127.0.0.1")
    try:
        s = yield stacks(extra=context_section(tmp_path),
                         webhook=f"http://127.0.0.1:{listening.getHost().port}/alert")
        state = yield s.device()
        # 1-2: the learning period (two approved logins from Berlin); the prompt says where
        for station in ("192.0.2.10", "2001:db8:1::10"):
            reply, prompt, request = yield plain_push(s, state, station)
            assert reply.code == "Access-Accept"
            assert "location:    Berlin, Germany · AS64500 Example Berlin Net" in prompt
            assert request["verification"] == "none" and request["warnings"] == []
        first = s.audit()[0]
        assert first["location"]["country_code"] == "DE" and first["location"]["city"] == \
            "Berlin" and first["location"]["asn"] == 64500 and first["signals"] is None
        # 3: the usual country: a plain push, no warning
        reply, prompt, request = yield plain_push(s, state, "192.0.2.77")
        assert reply.code == "Access-Accept" and "WARNING" not in prompt
        assert request["verification"] == "none"
        # 4: ten minutes later (the daemon's clock), from Tokyo, ~8,900 km away:
        # impossible travel -> deny without a push, and an alert
        s.daemon.engine.wallclock = lambda: time.time() + 600
        reply = yield radclient(s.radius, SECRET, attrs("203.0.113.5"))
        assert reply.code == "Access-Reject"
        event = s.audit()[-1]
        assert event["reason"] == "risk_signal_deny" and event["txid"] is None
        assert "impossible_travel" in event["signals"]
        assert event["location"]["country_code"] == "JP"
        yield hook.arrived
        alert = json.loads(hook.requests[-1][1])
        assert alert["event"] == "risk_deny" and alert["user"] == "alice"
        assert alert["reason"] == "impossible_travel" and alert["client_ip"] == "203.0.113.5"
        s.daemon.engine.wallclock = time.time
        # 5: Lisbon (2,300 km: under min_distance_km, so only a new country): number
        # matching through an Access-Challenge, and the prompt says why
        first_reply = yield radclient(s.radius, SECRET, attrs("198.51.100.7"))
        assert first_reply.code == "Access-Challenge"
        request = yield threads.deferToThread(first_request, state)
        assert request["verification"] == "number_match"
        assert "First login from Portugal" in request["warnings"]
        prompt = yield threads.deferToThread(cli_pending, state)
        assert "WARNING:     First login from Portugal" in prompt
        assert "Lisbon, Portugal" in prompt
        number = "".join(ch for ch in first_reply.get("Reply-Message") if ch.isdigit())
        second = radclient(s.radius, SECRET, attrs("198.51.100.7", password="ok",
                                                   state=first_reply.get("State")), timeout=20)
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve", None, number)
        result = yield second
        assert result.code == "Access-Accept"
        reasons = [e["reason"] for e in s.audit()]
        assert reasons == ["push_approved"] * 3 + ["risk_signal_deny", "challenge_sent",
                                                   "push_approved"]
        assert "new_country" in s.audit()[-2]["signals"]
        # Portugal is learned now: the next login from Lisbon is a plain push again
        reply, prompt, request = yield plain_push(s, state, "198.51.100.8")
        assert reply.code == "Access-Accept" and request["verification"] == "none"
    finally:
        yield listening.stopListening()


@pytest_twisted.inlineCallbacks
def test_spoofed_and_garbage_calling_station_ids_are_shown_as_such_never_guessed(
        stacks, tmp_path):
    s = yield stacks(extra=context_section(tmp_path))
    state = yield s.device()
    for station, label in (("10.1.2.3", "private address"),
                           ("00-11-22-33-44-55", "not an IP address"),
                           ("192.0.2.10; 203.0.113.5", "not an IP address"),
                           ("１９２.０.２.１０", "not an IP address"),
                           ("8.8.8.8", "unknown location")):
        # five logins: push.limits allows five pushes a window
        reply, prompt, request = yield plain_push(s, state, station)
        assert reply.code == "Access-Accept", station
        assert request["location"]["label"] == label, station
        assert f"location:    {label}" in prompt and "\x1b" not in prompt
        assert s.audit()[-1]["location"]["label"] == label
