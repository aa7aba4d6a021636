"""A login burst against the real daemon (``pushproxy serve``, SQLite store) and a real
slapd (issue 22): what is over capacity is shed and counted, the NAS-style resends of shed
requests are served once there is room, every login is approved by its phone, and no
login is decided by ``push.failmode`` -- with ``safe`` such a login would be an Accept
without a second factor."""

from __future__ import annotations

from dataclasses import replace

import pytest

from bench import burst
from bench.scenarios import Bench, Sizes
from tests.integration.slapd import slapd_available


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    if not slapd_available():
        pytest.skip("OpenLDAP slapd/slapadd not installed (apt-get install slapd)")
    sizes = replace(Sizes.smoke(), throughput=0, pending=0, probes=0, latency=0, overhead=0,
                    burst=120, burst_timeout=30)
    b = Bench(tmp_path_factory.mktemp("overload"), sizes, use_freeradius=False,
              log=lambda text: None)
    b.start()
    yield b
    b.stop()


@pytest.mark.parametrize("failmode", ["safe"])
def test_a_burst_is_shed_and_resent_and_never_decided_by_failmode(bench, failmode):
    # A tight LDAP bound, so that 120 logins at once are over it.
    result = burst.run(bench, failmode, {"ldap_queue": 10})
    assert result["failmode_decisions"] == {}
    assert result["shed_total"] > 0 and set(result["shed"]) == {"ldap_queue"}
    assert result["served_after_resend"] > 0
    assert result["lost"] == 0
    assert result["outcomes"] == {"accept": 120}
    assert result["accept_without_approval"] == 0
    assert not [r for r in result["decisions"]
                if r.startswith("push_unavailable") or r == "internal_error"]
