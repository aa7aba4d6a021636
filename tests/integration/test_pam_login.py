"""Acceptance: a Linux login through the real PAM module ends as the phone decides.

Debian's ``libpam-radius-auth`` (``pam_radius_auth.so``) is driven by
``pamtester`` with a private PAM service; the daemon is the real pushproxy
Daemon on the test reactor, against the session slapd. approve -> PAM success,
deny -> "Authentication failure".

The system's PAM is not changed: every pamtester runs in a private mount
namespace where a test directory is bind-mounted over ``/etc/pam.d`` (see
tests/integration/pam.py). The tests skip where the module, pamtester or
mount namespaces (root) are missing.

pam_radius_auth 2.0 signs nothing (no Message-Authenticator), so the daemon's
client entry for it sets ``require_message_authenticator: false``; it sends one
Access-Request and waits ``timeout`` seconds for the answer, so that timeout
is larger than every push in these tests.
"""

from __future__ import annotations

import json
import socket
import textwrap
import time

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from pushproxy.approval import authenticator
from pushproxy.approval.service import new_enrollment
from pushproxy.approval.store import SQLiteStore
from pushproxy.wiring import build_daemon
from tests.integration.harness import SECRET, load, start_daemon, write_config
from tests.integration.pam import PamLogin, unavailable
from tests.support import ScriptedProvider

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=unavailable() or "")

CLIENT_NAME = "linux-host"
NAS_ID = "gw-pam"  # pam_radius_auth's client_id= -> NAS-Identifier
RHOST = "198.51.100.7"  # pamtester's PAM_RHOST -> Calling-Station-Id
PAM_TIMEOUT = 15  # s pam_radius_auth waits for its single Access-Request

# The client entry a Linux host with pam_radius_auth 2.0 needs (it sends no
# Message-Authenticator; the default, true, would drop all its requests).
PAM_CLIENT = textwrap.dedent(f"""\
    - name: {CLIENT_NAME}
      address: 127.0.0.1
      secret_file: radius.secret
      require_message_authenticator: false
""")
STRICT_CLIENT = textwrap.dedent(f"""\
    - name: {CLIENT_NAME}
      address: 127.0.0.1
      secret_file: radius.secret
""")


def audit(tmp_path):
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


@pytest.fixture
def run(slapd, tmp_path):
    """Start a Daemon (scripted provider) and a PAM service pointing at it; stop it afterwards."""
    started = []

    @pytest_twisted.inlineCallbacks
    def _run(provider, clients=PAM_CLIENT, pam_timeout=PAM_TIMEOUT, **config_kwargs):
        config = load(write_config(tmp_path, slapd, clients=clients, **config_kwargs))
        daemon, addr = yield start_daemon(config, provider)
        started.append(daemon)
        return daemon, PamLogin(tmp_path / "pam", addr, SECRET, timeout=pam_timeout,
                                client_id=NAS_ID)

    yield _run
    for daemon in started:
        pytest_twisted.blockon(daemon.stop())


@pytest_twisted.inlineCallbacks
def test_approved_push_gives_pam_success(run, tmp_path):
    """Right password + phone approves -> pamtester 'successfully authenticated', exit 0."""
    provider = ScriptedProvider(mode="approve")
    daemon, pam = yield run(provider)
    result = yield pam.authenticate("alice", "alice-pw", rhost=RHOST)
    assert result.succeeded, result.output
    # What pam_radius_auth sent reached the push as the phone shows it.
    (req,) = provider.requests
    assert (req.username, req.application, req.client_ip, req.nas) == \
        ("alice", CLIENT_NAME, RHOST, NAS_ID)
    (event,) = audit(tmp_path)
    assert (event["outcome"], event["reason"]) == ("accept", "push_approved")
    assert result.elapsed < 5, result.elapsed  # an instant approval: no RADIUS timeout hit


@pytest_twisted.inlineCallbacks
def test_denied_push_gives_pam_authentication_failure(run, tmp_path):
    """Right password + phone denies -> PAM_AUTH_ERR ("Authentication failure"), non-zero."""
    provider = ScriptedProvider(mode="deny")
    daemon, pam = yield run(provider)
    result = yield pam.authenticate("bob", "bob-pw", rhost=RHOST)
    assert result.auth_failed, result.output
    assert not result.succeeded
    assert [r.username for r in provider.requests] == ["bob"]
    assert audit(tmp_path)[0]["outcome"] == "reject"
    # A reject answers at once; a failure by RADIUS timeout would take PAM_TIMEOUT.
    assert result.elapsed < 5, result.elapsed


@pytest_twisted.inlineCallbacks
def test_wrong_password_fails_pam_without_a_push(run, tmp_path):
    """Wrong password -> PAM "Authentication failure" and the phone is never asked."""
    provider = ScriptedProvider(mode="approve")
    daemon, pam = yield run(provider)
    result = yield pam.authenticate("alice", "not-her-password", rhost=RHOST)
    assert result.auth_failed, result.output
    assert provider.requests == []
    assert audit(tmp_path)[0]["reason"] == "bad_credentials"


@pytest_twisted.inlineCallbacks
def test_push_taking_seconds_still_succeeds_within_pam_timeout(run):
    """A phone answering after 3 s: pam_radius_auth's single request waits, PAM succeeds."""
    provider = ScriptedProvider(mode="approve", delay=3, clock=reactor)
    daemon, pam = yield run(provider, push="timeout: 10")
    result = yield pam.authenticate("alice", "alice-pw", rhost=RHOST)
    assert result.succeeded, result.output
    assert 2.9 <= result.elapsed < PAM_TIMEOUT, result.elapsed
    assert len(provider.requests) == 1


@pytest_twisted.inlineCallbacks
def test_pam_radius_sends_no_message_authenticator_so_a_strict_client_drops_it(run):
    """Why PAM_CLIENT sets require_message_authenticator: false.

    pam_radius_auth 2.0 sends no Message-Authenticator: with the default
    (required) the daemon drops the request silently, counts the drop, asks no
    phone, and PAM fails by timeout. If a newer module starts signing its
    requests, this test fails: the advice for Linux hosts should then change.
    """
    provider = ScriptedProvider(mode="approve")
    daemon, pam = yield run(provider, clients=STRICT_CLIENT, pam_timeout=3)
    result = yield pam.authenticate("alice", "alice-pw", rhost=RHOST)
    assert not result.succeeded and not result.auth_failed, result.output
    assert "cannot retrieve authentication info" in result.output  # no answer at all
    assert daemon.counters.get("radius_drops", reason="missing_message_authenticator") == 1
    assert provider.requests == []


# -- full stack: the built-in approval service and the command-line authenticator


def free_tcp_port() -> int:
    """A loopback port free right now (approval.public_url must name the port up front)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_enrollment(database: str, username: str, public_url: str) -> str:
    """What ``pushproxy enroll USER`` does: a one-time link, from a second store connection."""
    store = SQLiteStore(database)
    try:
        return new_enrollment(store, username, public_url, 900, time.time())
    finally:
        store.close()


def in_thread(f, *args):
    """A blocking call (requests, sqlite) off the reactor thread, with a bound on its time."""
    return threads.deferToThread(f, *args).addTimeout(30, reactor)


@pytest_twisted.inlineCallbacks
def test_full_stack_cli_authenticator_approves_a_pam_login(slapd, tmp_path):
    """PAM login -> daemon -> built-in approval service -> CLI authenticator approves -> success.

    Nothing is scripted: build_daemon's approval service (HTTP API, SQLite
    store on its thread), a device enrolled with a one-time link, and the
    device's signed long-poll and answer over HTTP.
    """
    port = free_tcp_port()
    public_url = f"http://127.0.0.1:{port}"
    database = str(tmp_path / "approval.db")
    approval = textwrap.dedent(f"""\
        approval:
          listen: "127.0.0.1:{port}"
          public_url: "{public_url}"
          database: "{database}"
    """)
    config = load(write_config(tmp_path, slapd, clients=PAM_CLIENT, approval=approval,
                               push="timeout: 20"))
    daemon = build_daemon(config, reactor)
    yield daemon.start()
    login = None
    try:
        addr = f"127.0.0.1:{daemon.ports[0].getHost().port}"
        pam = PamLogin(tmp_path / "pam", addr, SECRET, timeout=30, client_id=NAS_ID)
        link = yield in_thread(make_enrollment, database, "alice", public_url)
        state_dir = str(tmp_path / "alice-device")
        device = yield in_thread(authenticator.enroll, link, state_dir, "pam-test-cli")
        assert device["username"] == "alice"

        started = time.monotonic()
        login = pam.authenticate("alice", "alice-pw", rhost=RHOST)
        # The device long-polls (server holds it up to 5 s) until the login shows up.
        entries = []
        while not entries and time.monotonic() - started < 20:
            entries = yield in_thread(authenticator.pending, state_dir, 5)
        assert len(entries) == 1, "no approval request reached the device"
        (entry,) = entries
        assert (entry["username"], entry["client_ip"], entry["nas"], entry["application"]) == \
            ("alice", RHOST, NAS_ID, CLIENT_NAME)
        answer = yield in_thread(authenticator.answer, state_dir, entry["txid"], "approve")
        assert answer["status"] == "recorded"

        result = yield login
        login = None
        assert result.succeeded, result.output
        assert result.elapsed < 20, result.elapsed
        (event,) = audit(tmp_path)
        assert (event["outcome"], event["reason"]) == ("accept", "push_approved")
    finally:
        if login is not None:
            # Let pamtester end (bounded by its own timeout) before the daemon goes.
            yield login
        yield daemon.stop()
