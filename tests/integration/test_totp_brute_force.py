"""Issue 14, finding 1 against the real daemon: slapd, radclient over UDP, the built-in
approval service on an SQLite file, the CLI authenticator's TOTP secret, a real alert
webhook, and the real `pushproxy unlock` command on the same database.

A scripted TOTP brute force (a stolen password plus wrong codes) gets no Accept: the pause
and its alert come within the first 10 wrong codes, then the lock; the RIGHT current code
is refused until `pushproxy unlock alice`, then accepted. Wrong primary passwords from one
calling station stop reaching the directory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest_twisted
from twisted.internet import reactor, threads
from twisted.web import server

from pushproxy import passcodes
from pushproxy.approval import authenticator as auth
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient
from tests.integration.test_approval_e2e import Recorder, Stack

MA = ("Message-Authenticator", "0x00")
CLIENTS = """\
- name: plain-gw
  address: 127.0.0.1
  secret_file: radius.secret
"""


def attrs(password, user="alice", station="198.51.100.7"):
    return [("User-Name", user), ("User-Password", password), ("Calling-Station-Id", station),
            MA]


def totp_secret(state_dir):
    return auth.load_state(state_dir)[0].totp_secret


def wrong_codes(secret, count):
    """Codes that are none of the codes valid around now (the current step +-1, with margin)."""
    now = time.time()
    valid = {passcodes.totp(secret, passcodes.totp_step(now) + d) for d in range(-3, 4)}
    return [c for c in (f"{i:06d}" for i in range(100, 100 + 2 * count)) if c not in valid][:count]


@pytest_twisted.inlineCallbacks
def test_totp_brute_force_is_paused_alerted_and_locked_until_unlock(slapd, tmp_path):
    hook = Recorder(status=204)
    listening = reactor.listenTCP(0, server.Site(hook), interface="127.0.0.1")
    s = Stack(tmp_path, slapd, clients=CLIENTS,
              webhook=f"http://127.0.0.1:{listening.getHost().port}/alert")
    try:
        yield s.start()
        state = yield s.device()
        secret = totp_secret(state)
        codes = []
        for i, code in enumerate(wrong_codes(secret, 12)):
            reply = yield radclient(s.radius, SECRET, attrs(f"alice-pw,{code}",
                                                            station=f"10.1.0.{i}"))
            codes.append(reply.code)
        assert codes == ["Access-Reject"] * 12
        reasons = [e["reason"] for e in s.audit()]
        assert reasons == (["bad_passcode"] * 5 + ["passcodes_paused_after_failures"] * 5
                           + ["user_locked_after_passcode_guessing"] * 2)
        events = [json.loads(body)["event"] for _, body in hook.requests]
        assert "passcodes_paused" in events  # posted after the 5th wrong code
        assert s.daemon.counters.get("alerts", kind="passcodes_paused") == 1
        assert s.daemon.counters.get("alerts", kind="user_locked") == 1
        # Locked: the RIGHT current code is refused (and a push is never sent).
        right = auth.current_code(state)[0]
        locked = yield radclient(s.radius, SECRET, attrs(f"alice-pw,{right}", station="10.2.0.1"))
        assert locked.code == "Access-Reject"
        assert s.audit()[-1]["reason"] == "user_locked_after_passcode_guessing"
        out = yield threads.deferToThread(subprocess.run, [
            sys.executable, "-m", "pushproxy.cli", "locks", "--config", str(s.config_path)],
            capture_output=True, text=True, timeout=60)
        assert "passcode guessing" in out.stdout, out.stderr
        out = yield threads.deferToThread(subprocess.run, [
            sys.executable, "-m", "pushproxy.cli", "unlock", "alice", "--config",
            str(s.config_path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "passcode guessing" in out.stdout, out.stderr
        right = auth.current_code(state)[0]
        ok = yield radclient(s.radius, SECRET, attrs(f"alice-pw,{right}", station="10.2.0.2"))
        assert ok.code == "Access-Accept" and s.audit()[-1]["reason"] == "passcode_totp"
        assert sum(e["outcome"] == "accept" for e in s.audit()) == 1
    finally:
        if s.daemon is not None and s.daemon.ports:
            yield s.stop()
        yield listening.stopListening()


@pytest_twisted.inlineCallbacks
def test_the_guessing_count_survives_a_daemon_restart(slapd, tmp_path):
    s = Stack(tmp_path, slapd, clients=CLIENTS)
    yield s.start()
    try:
        state = yield s.device()
        codes = wrong_codes(totp_secret(state), 6)
        for code in codes[:4]:
            yield radclient(s.radius, SECRET, attrs(f"alice-pw,{code}"))
    finally:
        yield s.stop()
    s2 = Stack(tmp_path, slapd, clients=CLIENTS)
    yield s2.start()
    try:
        for code in codes[4:]:
            yield radclient(s2.radius, SECRET, attrs(f"alice-pw,{code}"))
        assert [e["reason"] for e in s2.audit()][-2:] == [
            "bad_passcode", "passcodes_paused_after_failures"]
    finally:
        yield s2.stop()


@pytest_twisted.inlineCallbacks
def test_wrong_passwords_from_one_station_stop_reaching_the_directory(slapd, tmp_path):
    s = Stack(tmp_path, slapd, clients=CLIENTS,
              push_extra="password_limits: {max_failures: 3, window: 60, pause: 60}\n")
    yield s.start()
    try:
        for user in ("alice", "bob", "alice", "bob", "alice"):
            yield radclient(s.radius, SECRET, attrs("wrong-pw", user=user, station="203.0.113.9"))
        # the right password from that station waits too; another station does not
        yield radclient(s.radius, SECRET, attrs("alice-pw", station="203.0.113.9"))
        assert [e["reason"] for e in s.audit()] == (
            ["bad_credentials"] * 3 + ["source_throttled_after_bad_passwords"] * 3)
        assert s.daemon.counters.get("password_throttled", client="plain-gw") == 3
        other = yield radclient(s.radius, SECRET, attrs("wrong-pw", station="203.0.113.10"))
        assert other.code == "Access-Reject" and s.audit()[-1]["reason"] == "bad_credentials"
    finally:
        yield s.stop()
