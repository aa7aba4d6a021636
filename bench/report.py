"""The table and the summary: per-run figures, their medians, and the issue's targets."""

from __future__ import annotations

from bench import budget as budget_mod
from bench.stats import median


def _budget_rows(side: str, label: str) -> list[tuple]:
    """Rows of one throughput run's CPU budget: a row per process, the sum, the ceiling."""
    names = ["freeradius"] if side == "freeradius" else ["daemon", "devices"]
    rows = [(f"cpu_{side}_{name}", f"  {label}: {name} CPU ms/login", "ms",
             (side, "cpu_budget", "processes", name, "ms_per_login"), None)
            for name in names + ["generator", "slapd"]]
    rows += [
        (f"cpu_{side}_sum", f"  {label}: sum of its processes, ms/login", "ms",
         (side, "cpu_budget", "sum_ms_per_login"), None),
        (f"cpu_{side}_ceiling", f"  {label}: ceiling, cores x 1000 / sum", "/s",
         (side, "cpu_budget", "ceiling_logins_per_s"), None),
        (f"cpu_{side}_busy", f"  {label}: machine busy share (all jobs)", "",
         (side, "cpu_budget", "machine_busy_share"), None),
    ]
    return rows


# (key, label, unit, path in a run, target as (operator, value) or None)
ROWS = [
    ("fr_rate", "FreeRADIUS+rlm_ldap logins/s", "/s", ("freeradius", "logins_per_s"), None),
    ("fr_radclient", "  same, radclient -p 128 (cross-check)", "/s",
     ("freeradius", "radclient", "logins_per_s"), None),
    ("push_rate", "pushproxy full path (push approved) logins/s", "/s",
     ("pushproxy_push", "logins_per_s"), None),
    ("allow_rate", "pushproxy policy allow (no push) logins/s", "/s",
     ("pushproxy_allow", "logins_per_s"), None),
    # issue 16's targets (issue 7 had asked 0.8 for the push)
    ("ratio_push", "throughput ratio push / FreeRADIUS", "", "ratio_push",
     (">=", budget_mod.TARGET_PUSH)),
    ("ratio_allow", "  ratio allow / FreeRADIUS", "", "ratio_allow",
     (">=", budget_mod.TARGET_ALLOW)),
    ("fr_cpu", "FreeRADIUS CPU ms per login", "ms", ("freeradius", "server_cpu_ms_per_login"),
     None),
    ("push_cpu", "pushproxy CPU ms per login (push)", "ms",
     ("pushproxy_push", "server_cpu_ms_per_login"), None),
    ("allow_cpu", "pushproxy CPU ms per login (allow)", "ms",
     ("pushproxy_allow", "server_cpu_ms_per_login"), None),
    # The CPU budget per login of every process of the throughput runs (bench.budget)
    *_budget_rows("freeradius", "FreeRADIUS"),
    *_budget_rows("pushproxy_push", "push"),
    *_budget_rows("pushproxy_allow", "allow"),
    ("ratio_cpu_push", "push ratio if CPU-bound (FreeRADIUS sum / push sum)", "",
     ("ceilings", "ratio_cpu_push"), None),
    ("ratio_ceiling_push", "  push ratio ceiling, daemon costing 0 (harness+slapd)", "",
     ("ceilings", "ratio_ceiling_push"), None),
    ("daemon_budget_push", f"  daemon ms/login that allows push >= {budget_mod.TARGET_PUSH}",
     "ms", ("ceilings", "daemon_budget_push_ms"), None),
    ("one_process_push", "  push: one daemon process, 1000 / daemon ms", "/s",
     ("ceilings", "one_process_ceiling_push"), None),
    ("ratio_cpu_allow", "allow ratio if CPU-bound", "", ("ceilings", "ratio_cpu_allow"), None),
    ("ratio_ceiling_allow", "  allow ratio ceiling, daemon costing 0", "",
     ("ceilings", "ratio_ceiling_allow"), None),
    ("daemon_budget_allow", f"  daemon ms/login that allows allow >= {budget_mod.TARGET_ALLOW}",
     "ms", ("ceilings", "daemon_budget_allow_ms"), None),
    ("one_process_allow", "  allow: one daemon process, 1000 / daemon ms", "/s",
     ("ceilings", "one_process_ceiling_allow"), None),
    ("held", "logins held pending at once", "", ("pending", "held_at_once"), None),
    ("fill", "  seconds to get them all pending", "s", ("pending", "fill_s"), None),
    ("bytes_pending", "memory per pending login (RSS delta / count)", "B",
     ("pending", "bytes_per_pending_login"), ("<=", 8192)),  # issue 16: 8 KB (issue 7: 10)
    ("busy_p50", "other logins while pending: RTT p50", "ms",
     ("pending", "during_pending", "login_rtt", "p50_ms"), None),
    ("busy_p99", "other logins while pending: RTT p99", "ms",
     ("pending", "during_pending", "login_rtt", "p99_ms"), ("<=", 50)),
    ("idle_p50", "  same with nothing pending: RTT p50", "ms",
     ("pending", "idle", "login_rtt", "p50_ms"), None),
    ("idle_p99", "  same with nothing pending: RTT p99", "ms",
     ("pending", "idle", "login_rtt", "p99_ms"), None),
    ("resolve_errors", "errors resolving (lost + wrong outcome)", "", ("pending", "errors"),
     ("<=", 0)),
    ("a2a_p50", "approve -> Accept p50 (idle)", "ms",
     ("pending", "idle", "approve_to_accept", "p50_ms"), None),
    ("a2a_p99", "approve -> Accept p99 (idle)", "ms",
     ("pending", "idle", "approve_to_accept", "p99_ms"), ("<=", 5)),
    ("a2a_sock_p50", "  the same at the generator's socket: p50 (idle)", "ms",
     ("pending", "idle", "approve_to_accept_at_socket", "p50_ms"), None),
    ("a2a_sock_p99", "  the same at the generator's socket: p99 (idle)", "ms",
     ("pending", "idle", "approve_to_accept_at_socket", "p99_ms"), None),
    ("a2a_busy_p99", "  approve -> Accept p99 (all pending held)", "ms",
     ("pending", "during_pending", "approve_to_accept", "p99_ms"), None),
    ("post_p50", "  answer POST round trip p50 (idle)", "ms",
     ("pending", "idle", "answer_post_rtt", "p50_ms"), None),
    ("ov_p50", "proxy overhead p50 (RTT allow - raw LDAP)", "ms",
     ("overhead", "overhead_p50_ms"), ("<=", 0.5)),  # issue 16 (issue 7: 1 ms)
    ("ov_p99", "proxy overhead p99", "ms", ("overhead", "overhead_p99_ms"), None),
    ("ov_metrics", "  mean decision - mean LDAP (daemon metrics)", "ms",
     ("overhead", "metrics_mean_overhead_ms"), None),
    ("raw_ldap_p50", "  raw ldap3 search+bind p50", "ms", ("overhead", "raw_ldap", "p50_ms"),
     None),
    ("fr_ov_p50", "  FreeRADIUS RTT - raw LDAP, p50", "ms",
     ("overhead", "freeradius_overhead_p50_ms"), None),
    ("pending_scrape", "slowest /metrics scrape during pending (separate scraper)", "s",
     ("pending", "metrics_watch", "slowest_s"), ("<=", 1)),
    ("pending_scrape_gen", "  slowest scrape from the busy generator itself", "s",
     ("pending", "metrics_slowest_scrape_s"), None),
    ("up_direct", "upstream: FreeRADIUS (users file) directly, logins/s", "/s",
     ("upstream", "direct", "logins_per_s"), None),
    ("up_via", "  through pushproxy (primary: radius, allow), /s", "/s",
     ("upstream", "via_pushproxy", "logins_per_s"), None),
    ("up_ratio", "upstream RADIUS path / FreeRADIUS direct", "", ("upstream", "ratio"),
     (">=", 0.5)),
    ("up_daemon_cpu", "  upstream path: daemon CPU ms/login", "ms",
     ("upstream", "via_pushproxy", "cpu_budget", "processes", "daemon", "ms_per_login"), None),
    ("up_fr_cpu", "  upstream path: FreeRADIUS CPU ms/login", "ms",
     ("upstream", "via_pushproxy", "cpu_budget", "processes", "freeradius", "ms_per_login"),
     None),
    ("up_gen_cpu", "  upstream path: generator CPU ms/login", "ms",
     ("upstream", "via_pushproxy", "cpu_budget", "processes", "generator", "ms_per_login"),
     None),
    ("up_ceiling", "  upstream path: ceiling, cores x 1000 / sum", "/s",
     ("upstream", "via_pushproxy", "cpu_budget", "ceiling_logins_per_s"), None),
    ("up_direct_ceiling", "  direct: ceiling, cores x 1000 / sum", "/s",
     ("upstream", "direct", "cpu_budget", "ceiling_logins_per_s"), None),
    ("lf_direct_p50", "LDAP front: slapd directly, user bind+search p50", "ms",
     ("ldap_front", "direct_user", "p50_ms"), None),
    ("lf_engine_p50", "  through pushproxy, engine every time, p50", "ms",
     ("ldap_front", "front_user_engine", "p50_ms"), None),
    ("lf_overhead", "LDAP front end overhead p50 (engine every bind)", "ms",
     ("ldap_front", "overhead_p50_ms"), ("<=", 1)),
    ("lf_overhead_cached", "  same, bind cache hit", "ms",
     ("ldap_front", "overhead_cached_p50_ms"), None),
    ("lf_overhead_service", "  same, service account passed through", "ms",
     ("ldap_front", "overhead_service_p50_ms"), None),
    ("burst_secure_shed", "burst, failmode secure: requests shed", "",
     ("burst_secure", "shed_total"), None),
    ("burst_secure_resent", "  logins answered after a NAS-style resend", "",
     ("burst_secure", "served_after_resend"), None),
    ("burst_secure_lost", "  logins never answered", "", ("burst_secure", "lost"), None),
    ("burst_secure_s", "  seconds until every login was answered", "s",
     ("burst_secure", "elapsed_s"), None),
    ("burst_safe_shed", "burst, failmode safe: requests shed", "", ("burst_safe", "shed_total"),
     None),
    ("burst_safe_resent", "  logins answered after a NAS-style resend", "",
     ("burst_safe", "served_after_resend"), None),
    ("burst_safe_lost", "  logins never answered", "", ("burst_safe", "lost"), None),
    ("burst_safe_a2a", "  Accepts without an approval", "",
     ("burst_safe", "accept_without_approval"), ("<=", 0)),
]


def _get(run: dict, path):
    if isinstance(path, str):
        return run.get(path)
    value = run
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _ratios(run: dict) -> None:
    fr = _get(run, ("freeradius", "logins_per_s"))
    for key, side in (("ratio_push", "pushproxy_push"), ("ratio_allow", "pushproxy_allow")):
        value = _get(run, (side, "logins_per_s"))
        run[key] = round(value / fr, 4) if fr and value is not None else None
    run["ceilings"] = budget_mod.ceilings(run)


def _holds(value, target) -> bool | None:
    if value is None or target is None:
        return None
    op, limit = target
    return value >= limit if op == ">=" else value <= limit


def summarize(result: dict) -> tuple[dict, list[dict]]:
    """Median of every row over the runs, and each target with whether it holds."""
    for run in result["runs"]:
        _ratios(run)
    summary, targets = {}, []
    for key, label, unit, path, target in ROWS:
        values = [_get(run, path) for run in result["runs"]]
        med = median(values)
        summary[key] = {"label": label, "unit": unit, "runs": values, "median": med}
        if target is not None:
            targets.append({"key": key, "label": label, "target": f"{target[0]} {target[1]}",
                            "median": med, "holds": _holds(med, target)})
    held = summary["held"]["median"]
    pending = result["sizes"]["pending"]
    if held is not None:
        targets.append({"key": "held", "label": f"{pending} logins held pending at once",
                        "target": f">= {pending}", "median": held,
                        "holds": held >= pending})
    return summary, targets


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table_lines(result: dict) -> list[str]:
    """The summary as a fixed-width text table."""
    runs = len(result["runs"])
    targets = {t["key"]: t for t in result["targets"]}
    head = (f"{'figure':<50}" + "".join(f"{'run ' + str(i + 1):>10}" for i in range(runs))
            + f"{'median':>10}  {'target':<9}{'holds':<5}")
    lines = [head, "-" * len(head)]
    for key, row in result["summary"].items():
        if all(v is None for v in row["runs"]):
            continue
        t = targets.get(key)
        holds = "" if t is None else {True: "yes", False: "NO", None: "?"}[t["holds"]]
        lines.append(f"{row['label'][:50]:<50}" + "".join(f"{_fmt(v):>10}" for v in row["runs"])
                     + f"{_fmt(row['median']):>10}  {(t['target'] if t else ''):<9}{holds:<5}")
    return lines


def print_table(result: dict) -> None:
    """Print the table and the machine line."""
    m = result["machine"]
    print(f"machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}, "
          f"FreeRADIUS {m.get('freeradius')}, slapd {m.get('slapd')}; "
          f"load average at start {m['loadavg_at_start'][0]:.2f}")
    for line in table_lines(result):
        print(line)
    for run in result["runs"]:
        text = budget_mod.table(run)
        if text:
            print(f"\nCPU budget per login, run {run['run']}:")
            print(text)
    profile = result.get("profile") or {}
    for mode, title in (("active_threads", "every busy thread, native calls included"),
                        ("gil", "the thread holding the GIL")):
        if mode not in profile:
            continue
        print(f"\nprofile of the push path, py-spy ({title}); own time, share of samples:")
        for row in profile[mode]["own"][:12]:
            print(f"  {row['share'] * 100:5.1f}%  {row['function']}")
