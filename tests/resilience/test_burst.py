"""A login storm is load, not a fault (issue 22): logins sent at once to ``pushproxy serve``
(SQLite store, real slapd), more than its bounds admit. What is over capacity is shed
(no answer) and counted; the NAS-style resends are served once there is room; every
login is approved by its phone; none is decided by ``push.failmode`` -- in either mode."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench import burst
from bench.scenarios import Bench, Sizes
from tests.integration.slapd import slapd_available

LOGINS = 400
BOUNDS = {"ldap_queue": 50}  # tight, so that 400 logins at once are over them


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    if not slapd_available():
        pytest.skip("OpenLDAP slapd/slapadd not installed (apt-get install slapd)")
    sizes = replace(Sizes.smoke(), throughput=0, pending=0, probes=0, latency=0, overhead=0,
                    burst=LOGINS, burst_timeout=30, window=64)
    b = Bench(tmp_path_factory.mktemp("burst"), sizes, use_freeradius=False,
              log=lambda text: None)
    b.start()
    yield b
    b.stop()


@pytest.mark.parametrize("failmode", ["secure", "safe"])
def test_a_burst_is_shed_and_served_by_resends_never_decided_by_failmode(bench, failmode,
                                                                          resilience):
    result = burst.run(bench, failmode, BOUNDS)
    resilience.record(
        fault=f"login burst: {LOGINS} logins sent at once (daemon.overload.ldap_queue "
              f"{BOUNDS['ldap_queue']}), every phone approves, failmode {failmode}",
        expected="no failmode decision, no Accept without an approval; requests over the "
                 "bounds shed (no answer) and counted; NAS-style resends served; every "
                 "login answered",
        measured=f"outcomes {result['outcomes']} in {result['elapsed_s']} s; shed "
                 f"{result['shed']}; {result['served_after_resend']} logins served after "
                 f"a resend ({result['retransmits_sent']} resends); decisions "
                 f"{result['decisions']}; Accepts without approval "
                 f"{result['accept_without_approval']}")
    assert result["failmode_decisions"] == {}
    assert result["shed_total"] > 0
    assert result["served_after_resend"] > 0
    assert result["lost"] == 0
    assert result["outcomes"] == {"accept": LOGINS}
    assert result["accept_without_approval"] == 0
    assert not [r for r in result["decisions"]
                if r.startswith("push_unavailable") or r == "internal_error"]
