"""The benchmark (bench/, issue 7) still runs end to end and writes well-formed results.

A smoke run: a few dozen logins through every scenario, one run, no profile,
nothing installed. It checks only that each scenario produced its figures
and that every login got an answer; it never asserts a timing -- those are
benchmark results (docs/benchmarks.md), not properties of the code.
FreeRADIUS takes part only when it is installed. The smoke includes a short
burst at full speed (issue 22); the run itself exits 1 if any login was
decided by push.failmode or an internal error. Issue 16: the throughput runs
carry a CPU budget per login for every process of the run, and the upstream
RADIUS and LDAP front end paths are measured beside their direct baselines.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.slapd import slapd_available

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    if not slapd_available():
        pytest.skip("OpenLDAP slapd/slapadd not installed (apt-get install slapd)")
    out = tmp_path_factory.mktemp("bench") / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--no-install",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=420)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_scenario_reports_its_figures(smoke):
    result, _ = smoke
    (run,) = result["runs"]
    for key in ("pushproxy_push", "pushproxy_allow", "pending", "overhead", "burst_secure",
                "burst_safe"):
        assert key in run
    assert run["pushproxy_push"]["logins_per_s"] > 0
    assert run["pending"]["bytes_per_pending_login"] is not None
    assert run["pending"]["idle"]["approve_to_accept"]["n"] > 0
    assert run["overhead"]["pushproxy_rtt"]["n"] > 0
    if result["freeradius_used"]:
        assert run["freeradius"]["logins_per_s"] > 0
        assert run["ratio_push"] is not None


def test_every_login_got_the_expected_answer(smoke):
    result, _ = smoke
    (run,) = result["runs"]
    sizes = result["sizes"]
    assert run["pushproxy_push"]["outcomes"] == {"accept": sizes["throughput"]}
    assert run["pushproxy_allow"]["outcomes"] == {"accept": sizes["throughput"]}
    pending = run["pending"]
    assert pending["held_at_once"] == sizes["pending"]
    assert pending["errors"] == 0
    assert pending["outcomes"] == {"accept": sizes["pending"] - sizes["pending"] // 2,
                                   "reject": sizes["pending"] // 2}


def test_the_pending_curve_reports_every_step_and_answers_every_login(smoke):
    """Issue 16: memory and other logins' latency at each step, read from the daemon;
    the later half approved, the first half timed out, nothing lost."""
    result, stdout = smoke
    (run,) = result["runs"]
    sizes = result["sizes"]
    (curve,) = run["pending_curve"]
    wanted = [int(s) for s in sizes["curve"].split(",")]
    assert [p["step"] for p in curve["steps"]] == wanted
    for point in curve["steps"]:
        assert point["held"] == point["step"] and point["rss_bytes"] > 0
        assert isinstance(point["bytes_per_pending_login"], int)
        assert point["other_logins"]["outcomes"] == {"accept": sizes["curve_probes"]}
        assert set(point["gc"]) == {"full_collections", "full_pause_total_s",
                                    "full_pause_max_s"}
    assert curve["errors"] == 0 and curve["failmode_decisions"] == {}
    assert curve["outcomes"] == {"accept": wanted[-1] - wanted[-1] // 2,
                                 "reject": wanted[-1] // 2}
    assert "B/login" in stdout


def test_summary_table_and_targets_are_well_formed(smoke):
    result, stdout = smoke
    assert {t["key"] for t in result["targets"]} >= {"bytes_pending", "busy_p99", "a2a_p99",
                                                     "ov_p50", "resolve_errors", "held"}
    for target in result["targets"]:
        assert target["holds"] in (True, False, None)
    for row in result["summary"].values():
        assert len(row["runs"]) == 1
    assert "figure" in stdout and "median" in stdout
    assert result["machine"]["nproc"] >= 1


def test_a_burst_at_full_speed_is_shed_and_resent_never_decided_by_failmode(smoke):
    """Issue 22: logins sent at once (tight bounds, so the small burst is over them):
    some are shed and counted, their NAS-style resends are served, every login is
    approved by its phone; no failmode decision (the run would have exited 1)."""
    result, _ = smoke
    (run,) = result["runs"]
    for failmode in ("secure", "safe"):
        burst = run[f"burst_{failmode}"]
        assert burst["shed_total"] > 0
        assert burst["served_after_resend"] > 0
        assert burst["lost"] == 0
        assert burst["accept_without_approval"] == 0
        assert burst["outcomes"] == {"accept": result["sizes"]["burst"]}
        assert not any(r.startswith("push_unavailable") for r in burst["decisions"])


def test_every_throughput_run_has_a_cpu_budget_per_process(smoke):
    """Issue 16: each throughput run says what every one of its processes spent per
    login (the daemon, the device process, the generator, slapd; FreeRADIUS in the
    reference run), their sum and the ceiling on logins/s the sum implies."""
    result, stdout = smoke
    (run,) = result["runs"]
    expected = {"pushproxy_push": {"daemon", "devices", "generator", "slapd"},
                "pushproxy_allow": {"daemon", "generator", "slapd"}}
    if result["freeradius_used"]:
        expected["freeradius"] = {"freeradius", "generator", "slapd"}
    for side, names in expected.items():
        budget = run[side]["cpu_budget"]
        assert set(budget["processes"]) == names, side
        assert budget["logins"] == run[side]["logins"]
        for figures in budget["processes"].values():
            assert figures["cpu_s"] >= 0 and figures["ms_per_login"] >= 0
        assert budget["sum_ms_per_login"] == pytest.approx(
            sum(p["ms_per_login"] for p in budget["processes"].values()), abs=0.01)
        assert budget["sum_ms_per_login"] > 0
        assert budget["ceiling_logins_per_s"] > 0
        assert 0 <= budget["harness_share"] <= 1
    if result["freeradius_used"]:
        for key in ("ratio_cpu_push", "ratio_ceiling_push", "daemon_budget_push_ms",
                    "ratio_cpu_allow", "ratio_ceiling_allow", "daemon_budget_allow_ms",
                    "one_process_ceiling_push", "one_process_ceiling_allow"):
            assert key in run["ceilings"]
    assert "CPU budget per login" in stdout and "| devices |" in stdout


def test_the_upstream_and_ldap_front_paths_are_measured_beside_their_baselines(smoke):
    """Issue 16 item 5: the primary: radius path beside FreeRADIUS directly (every
    login accepted on both), and the LDAP front end beside slapd directly; both in the
    targets."""
    result, _ = smoke
    (run,) = result["runs"]
    sizes = result["sizes"]
    front = run["ldap_front"]
    for line in ("direct_user", "direct_service", "front_service", "front_user_cached",
                 "front_user_engine"):
        assert front[line]["n"] == sizes["overhead"], line
    assert front["failmode_decisions"] == {}
    assert isinstance(front["overhead_p50_ms"], float)
    upstream = run["upstream"]
    targets = {t["key"] for t in result["targets"]}
    assert {"lf_overhead", "up_ratio", "ratio_push", "ratio_allow"} <= targets
    if "skipped" in upstream:
        return
    assert upstream["direct"]["outcomes"] == {
        "accept": sizes["throughput"] * sizes["freeradius_repeat"]}
    assert upstream["via_pushproxy"]["outcomes"] == {"accept": sizes["throughput"]}
    assert upstream["via_pushproxy"]["failmode_decisions"] == {}
    assert upstream["ratio"] > 0
    assert set(upstream["via_pushproxy"]["cpu_budget"]["processes"]) == {
        "daemon", "freeradius", "generator"}
