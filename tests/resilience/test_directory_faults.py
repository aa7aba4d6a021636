"""The directory breaks: slapd stopped in the middle of a stream of logins and
started again; the only LDAP server hanging (accepts TCP, never answers) or
refusing connections. (Failover to a second server is tested in
tests/integration/test_radius_ldap.py; its results are in the same table.)

A policy rule allows every user who passes the directory, so an Accept here
means exactly "the directory answered", and no push is involved.
"""

from __future__ import annotations

import os
import signal
import time

import pytest_twisted
from twisted.internet import reactor, threads

from pushproxy.decision import PrimaryStatus
from pushproxy.ldapauth import LdapDirectory
from pushproxy.metrics import Counters
from tests.integration.harness import SilentServer, closed_port, load, write_config
from tests.integration.slapd import Slapd
from tests.integration.test_approval_e2e import free_tcp_port
from tests.resilience import rig

LDAP_BUDGET = 2 + 2  # connect_timeout + response_timeout in the test config


@pytest_twisted.inlineCallbacks
def test_slapd_stopped_mid_load_rejects_within_the_ldap_timeouts_then_recovers(
        tmp_path, resilience, caplog):
    (tmp_path / "slapd").mkdir()
    own = Slapd(base_dir=tmp_path / "slapd")
    own.start()
    metrics_port = free_tcp_port()
    stack = rig.make_stack(tmp_path, own, extra=rig.ALLOW_ALL, edit=rig.with_metrics(metrics_port))
    yield stack.start()
    try:
        stream = rig.burst(stack.radius, [("alice", "alice-pw", f"m-{i}") for i in range(80)],
                           timeout=15, spacing=0.05)  # 20 logins/s for 4 s
        yield rig.sleep(1.5)
        stopped_at = time.monotonic()
        yield threads.deferToThread(own.stop)
        yield rig.sleep(1.0)
        down_status, down_body = yield threads.deferToThread(rig.healthz, metrics_port)
        results = yield stream
        reasons = rig.audit_reasons(tmp_path / "audit.jsonl")
        errors = stack.daemon.counters.get("ldap_server_errors")
        yield threads.deferToThread(own.start)  # same port, same data
        restarted_at = time.monotonic()
        recovered = None
        while recovered is None and time.monotonic() - restarted_at < 15:
            (after,) = yield rig.burst(stack.radius, [("alice", "alice-pw", "after")])
            if after.outcome == "accept":
                recovered = time.monotonic() - restarted_at
            else:
                yield rig.sleep(0.2)
        yield rig.sleep(1.1)  # past the health cache
        up_status, _ = yield threads.deferToThread(rig.healthz, metrics_port)
        events = rig.logged(caplog)
        resilience.record(
            fault="slapd stopped in the middle of 80 logins (20/s), then started again",
            expected="every login answered: Accept before, Reject directory_unavailable after, "
                     f"none slower than connect+response timeout ({LDAP_BUDGET} s); /healthz 503; "
                     "Accept again after the restart",
            measured=f"outcomes {rig.outcomes(results)}, slowest {rig.slowest(results):.2f} s; "
                     f"audit {reasons}; ldap_server_errors {errors:g}; log {events}; /healthz "
                     f"{down_status} while down ({down_body['directory']['servers']}), "
                     f"{up_status} after; first Accept {recovered and round(recovered, 2)} s "
                     f"after the restart (slapd was down {restarted_at - stopped_at:.1f} s)")
        assert rig.outcomes(results).get("none", 0) == 0
        assert reasons.get("policy_allow", 0) > 0 and reasons.get("directory_unavailable", 0) > 0
        assert set(reasons) == {"policy_allow", "directory_unavailable"}
        assert rig.slowest(results) < LDAP_BUDGET + 1.5
        assert errors > 0 and events.get("ldap.server_failed", 0) > 0
        assert down_status == 503 and up_status == 200
        assert recovered is not None
    finally:
        yield stack.stop()
        own.cleanup()


@pytest_twisted.inlineCallbacks
def test_the_only_ldap_server_hanging_rejects_within_the_ldap_timeouts(
        slapd, tmp_path, resilience, caplog):
    silent = SilentServer()
    stack = rig.make_stack(tmp_path, slapd, extra=rig.ALLOW_ALL,
                           edit=lambda t: t.replace(slapd.url, f"ldap://127.0.0.1:{silent.port}"))
    yield stack.start()
    try:
        results = yield rig.burst(stack.radius, [("alice", "alice-pw", f"h-{i}")
                                                 for i in range(5)], timeout=15)
        reasons = rig.audit_reasons(tmp_path / "audit.jsonl")
        resilience.record(
            fault="the only LDAP server accepts TCP and never answers, 5 concurrent logins",
            expected=f"Reject directory_unavailable within connect+response timeout "
                     f"({LDAP_BUDGET} s); ldap_server_errors counted",
            measured=f"outcomes {rig.outcomes(results)}, slowest {rig.slowest(results):.2f} s; "
                     f"audit {reasons}; ldap_server_errors "
                     f"{stack.daemon.counters.get('ldap_server_errors'):g}; "
                     f"log {rig.logged(caplog)}")
        assert rig.outcomes(results) == {"reject": 5}
        assert reasons == {"directory_unavailable": 5}
        assert rig.slowest(results) < LDAP_BUDGET + 1.5
    finally:
        yield stack.stop()
        silent.close()


@pytest_twisted.inlineCallbacks
def test_the_only_ldap_server_refusing_rejects_at_once(slapd, tmp_path, resilience, caplog):
    port = closed_port()
    stack = rig.make_stack(tmp_path, slapd, extra=rig.ALLOW_ALL,
                           edit=lambda t: t.replace(slapd.url, f"ldap://127.0.0.1:{port}"))
    yield stack.start()
    try:
        results = yield rig.burst(stack.radius, [("alice", "alice-pw", f"r-{i}")
                                                 for i in range(5)], timeout=15)
        reasons = rig.audit_reasons(tmp_path / "audit.jsonl")
        resilience.record(
            fault="the only LDAP server refuses connections, 5 concurrent logins",
            expected="Reject directory_unavailable at once (< 1 s); ldap_server_errors counted",
            measured=f"outcomes {rig.outcomes(results)}, slowest {rig.slowest(results):.2f} s; "
                     f"audit {reasons}; ldap_server_errors "
                     f"{stack.daemon.counters.get('ldap_server_errors'):g}; "
                     f"log {rig.logged(caplog)}")
        assert rig.outcomes(results) == {"reject": 5}
        assert reasons == {"directory_unavailable": 5}
        assert rig.slowest(results) < 1.0
    finally:
        yield stack.stop()


@pytest_twisted.inlineCallbacks
def test_slapd_frozen_mid_load_answers_every_login_within_the_ldap_timeouts_then_recovers(
        tmp_path, resilience, caplog):
    """SIGSTOP: slapd's kernel still accepts connections, nothing answers (a hung
    directory). 20 logins/s against 8 LDAP threads that each wait response_timeout
    must not pile up into a queue that answers minutes later."""
    (tmp_path / "slapd").mkdir()
    own = Slapd(base_dir=tmp_path / "slapd")
    own.start()
    stack = rig.make_stack(tmp_path, own, extra=rig.ALLOW_ALL)
    yield stack.start()
    try:
        stream = rig.burst(stack.radius, [("alice", "alice-pw", f"f-{i}") for i in range(100)],
                           timeout=30, spacing=0.05)  # 20 logins/s for 5 s
        yield rig.sleep(1.0)
        os.kill(own.pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        results = yield stream
        os.kill(own.pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        reasons = rig.audit_reasons(tmp_path / "audit.jsonl")
        recovered = None
        while recovered is None and time.monotonic() - resumed_at < 15:
            (after,) = yield rig.burst(stack.radius, [("alice", "alice-pw", "after")])
            if after.outcome == "accept":
                recovered = time.monotonic() - resumed_at
            else:
                yield rig.sleep(0.2)
        resilience.record(
            fault="slapd frozen (SIGSTOP: connects, never answers) in the middle of 100 logins "
                  "(20/s), then resumed (SIGCONT)",
            expected=f"every login answered, none slower than connect+response timeout "
                     f"({LDAP_BUDGET} s) + 1.5 s: Accept, or Reject directory_unavailable / "
                     f"directory_busy; Accept again after SIGCONT",
            measured=f"outcomes {rig.outcomes(results)}, slowest {rig.slowest(results):.2f} s; "
                     f"audit {reasons}; ldap_server_errors "
                     f"{stack.daemon.counters.get('ldap_server_errors'):g}, ldap_busy "
                     f"{stack.daemon.counters.get('ldap_busy'):g}; log {rig.logged(caplog)}; "
                     f"frozen {resumed_at - frozen_at:.1f} s; first Accept "
                     f"{recovered and round(recovered, 2)} s after SIGCONT")
        assert rig.outcomes(results).get("none", 0) == 0
        assert set(reasons) <= {"policy_allow", "directory_unavailable", "directory_busy"}
        assert rig.slowest(results) < LDAP_BUDGET + 1.5
        assert recovered is not None
    finally:
        if own.pid:
            os.kill(own.pid, signal.SIGCONT)
        yield stack.stop()
        own.cleanup()


@pytest_twisted.inlineCallbacks
def test_a_hung_directory_in_backoff_is_probed_by_one_login_at_a_time(slapd, tmp_path):
    """Regression: with every server in backoff, each login used to wait out the
    timeouts again, so a hung directory answered logins from a growing queue
    (18 s at 20 logins/s, minutes at higher rates). Now one login probes, the
    others are told at once that the directory is unavailable."""
    silent = SilentServer()
    config = load(write_config(tmp_path, slapd, servers=[f"ldap://127.0.0.1:{silent.port}"]))
    directory = LdapDirectory(config.ldap, reactor, Counters())
    directory.start()
    try:
        first = yield directory.authenticate("alice", "alice-pw")  # finds it hung
        assert first.status is PrimaryStatus.UNAVAILABLE
        started = time.monotonic()
        pending = [directory.authenticate("alice", "alice-pw") for _ in range(6)]
        quick = []
        for d in pending:
            d.addCallback(lambda r: quick.append((time.monotonic() - started, r.status)))
        yield rig.sleep(0.5)
        # five answered at once, one is still probing the hung server
        assert len(quick) == 5 and all(s is PrimaryStatus.UNAVAILABLE for _, s in quick)
        for d in pending:
            yield d
        assert len(quick) == 6
    finally:
        yield threads.deferToThread(directory.stop)
        silent.close()
