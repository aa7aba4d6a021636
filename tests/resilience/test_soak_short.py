"""A 20-second soak (the same code as the 10-minute one): every login answered as
its kind says, no internal error, and the daemon's open file descriptors do not grow.

The full soak is not part of the suite (it takes 10 minutes):
``python -m tests.resilience.soak --minutes 10 --rate 20``; its figures are in
docs/resilience.md. RSS is recorded here but not asserted: 20 seconds are too
few for a slope to mean anything, while a leaked descriptor shows at once.
"""

from __future__ import annotations

import pytest

from tests.integration.slapd import slapd_available
from tests.resilience import soak


def test_short_soak_answers_every_login_as_expected_and_keeps_fds_flat(tmp_path, resilience):
    if not slapd_available():
        pytest.skip("OpenLDAP slapd/slapadd not installed (apt-get install slapd)")
    result = soak.soak(tmp_path, seconds=20, rate=10, sample=2, warmup=6)
    total = result["total"]
    resilience.record(
        fault="soak, 20 s (the suite's short version)",
        expected="every login answered as its kind says; fds flat",
        measured=f"{total['sent']} logins, {total['unanswered']} unanswered, "
                 f"{total['unexpected']} unexpected; fds {result['fds']['first']} -> "
                 f"{result['fds']['last']}; RSS {result['rss_kib']['first']} -> "
                 f"{result['rss_kib']['last']} KiB")
    assert total["sent"] >= 150 and total["skipped"] == 0
    assert total["unanswered"] == 0 and total["unexpected"] == 0, result["by_kind"]
    assert all(result["by_kind"][kind]["sent"] > 0 for kind in soak.KINDS)
    assert result["daemon"]["internal_errors"] == 0
    assert result["phones"]["errors"] == {}
    # after the warm-up, the descriptors in use are the same at the end as at the start
    assert result["fds"]["max"] - result["fds"]["min"] <= 3, result["samples"]
    assert result["fds"]["last"] <= result["fds"]["first"] + 1, result["samples"]
