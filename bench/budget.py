"""The CPU budget of a login: what every process of a run spends per login, and the
ceiling on logins/s that the sum puts on a machine of N cores (issue 16).

A pushproxy login on this benchmark is not only the daemon's work: the device
process (bench.devices) signs and sends the phone's HTTP requests, the load
generator (this process, bench.radload) builds and checks the RADIUS packets,
and slapd answers the search and the bind. All of them share the machine's
cores with the daemon, so

    logins/s <= cores * 1000 / (sum over the processes of CPU ms per login)

whatever the daemon does. FreeRADIUS's login needs only the generator and
slapd beside it. `Budget` snapshots the CPU of named processes (by
/proc/PID/stat, which a finished child keeps until it is reaped), of this
process (getrusage: every thread of the generator) and of the whole machine
(/proc/stat) at the start of a timed window, and `Budget.finish` turns the
differences into milliseconds per login. `ceilings` compares a run's push and
allow budgets with FreeRADIUS's: how far the ratio could go if the daemon cost
nothing, and how many ms per login the daemon may take for a target ratio.
"""

from __future__ import annotations

import os
import resource

_TICK = os.sysconf("SC_CLK_TCK")
#: issue 16's targets of logins/s against FreeRADIUS + rlm_ldap: push, allow
TARGET_PUSH, TARGET_ALLOW = 0.3, 0.5
#: The processes of a pushproxy run that are the benchmark's, not the product's.
HARNESS = ("devices", "generator")


def proc_cpu(pids: list[int]) -> float | None:
    """User + system CPU seconds of ``pids`` together; None when none is readable."""
    total, seen = 0.0, False
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
        seen = True
    return total if seen else None


def self_cpu() -> float:
    """CPU seconds of this process, every thread (the load generator)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of every core since boot, from /proc/stat."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0, 0.0
    # user nice system idle iowait irq softirq steal (guest is inside user)
    values = (values + [0] * 8)[:8]
    idle = values[3] + values[4]
    total = sum(values)
    return (total - idle) / _TICK, total / _TICK


class Budget:
    """CPU of the named processes, of this one and of the machine over one window."""

    def __init__(self, processes: dict[str, list[int]]):
        self.processes = {name: [p for p in pids if p] for name, pids in processes.items()}
        self.start = {name: proc_cpu(pids) for name, pids in self.processes.items()}
        self.self0 = self_cpu()
        self.machine0 = machine_cpu()

    def finish(self, logins: int, elapsed: float) -> dict:
        """The window's figures: per process CPU seconds, ms per login and share of the
        machine; their sum, the ceiling on logins/s it implies, and what the machine
        spent besides (other jobs, interrupts)."""
        ncpu = os.cpu_count() or 1
        per = max(1, logins)
        cpu = {}
        for name, pids in self.processes.items():
            end = proc_cpu(pids)
            if end is not None and self.start[name] is not None:
                cpu[name] = end - self.start[name]
        cpu["generator"] = self_cpu() - self.self0
        busy1, total1 = machine_cpu()
        busy = busy1 - self.machine0[0]
        capacity = elapsed * ncpu
        processes = {name: {"cpu_s": round(s, 3), "ms_per_login": round(s * 1000 / per, 3),
                            "share_of_machine": round(s / capacity, 3) if capacity else None}
                     for name, s in cpu.items()}
        total = sum(cpu.values())
        ms = total * 1000 / per
        harness = sum(cpu.get(name, 0.0) for name in HARNESS) * 1000 / per
        return {
            "logins": logins, "elapsed_s": round(elapsed, 3), "cores": ncpu,
            "processes": processes,
            "sum_ms_per_login": round(ms, 3),
            "ceiling_logins_per_s": round(ncpu * 1000 / ms, 1) if ms else None,
            "harness_ms_per_login": round(harness, 3),
            "harness_share": round(harness / ms, 3) if ms else None,
            "machine_busy_share": round(busy / capacity, 3) if capacity else None,
            # CPU the machine spent in this window on anything not listed above
            "others_ms_per_login": round(max(0.0, busy - total) * 1000 / per, 3),
        }


def _ms(run: dict, side: str, name: str | None = None) -> float | None:
    budget = (run.get(side) or {}).get("cpu_budget")
    if not budget:
        return None
    if name is None:
        return budget.get("sum_ms_per_login")
    return (budget["processes"].get(name) or {}).get("ms_per_login")


def ceilings(run: dict) -> dict:
    """What the per-login budgets of one throughput run allow, against FreeRADIUS's:

    - ``ratio_cpu_*``: the ratio if every side were bound by CPU alone (FreeRADIUS
      sum / pushproxy sum);
    - ``ratio_ceiling_*``: the same with a daemon that costs nothing (only the
      harness and slapd left): no daemon can get past it on this benchmark;
    - ``daemon_budget_*_ms``: the daemon CPU ms per login that would still reach
      the issue's target ratio (negative: not reachable at all on this harness);
    - ``one_process_ceiling_*``: 1000 / daemon ms per login, the most one daemon
      process can do while its interpreter runs on one core at a time."""
    out: dict = {}
    fr = _ms(run, "freeradius")
    for side, key, target in (("pushproxy_push", "push", TARGET_PUSH),
                              ("pushproxy_allow", "allow", TARGET_ALLOW)):
        total, daemon = _ms(run, side), _ms(run, side, "daemon")
        if total is None or daemon is None:
            continue
        rest = total - daemon
        out[f"rest_{key}_ms"] = round(rest, 3)
        # one daemon process runs Python on one core at a time (the GIL)
        out[f"one_process_ceiling_{key}"] = round(1000 / daemon, 1) if daemon else None
        if fr:
            out[f"ratio_cpu_{key}"] = round(fr / total, 4)
            out[f"ratio_ceiling_{key}"] = round(fr / rest, 4) if rest > 0 else None
            out[f"daemon_budget_{key}_ms"] = round(fr / target - rest, 3)
    return out


def table(run: dict) -> str:
    """One run's budgets as a Markdown table: a row per process, a column per side."""
    sides = [(s, label) for s, label in (("freeradius", "FreeRADIUS + rlm_ldap"),
                                         ("pushproxy_push", "pushproxy push"),
                                         ("pushproxy_allow", "pushproxy allow"))
             if (run.get(s) or {}).get("cpu_budget")]
    if not sides:
        return ""
    names: list[str] = []
    for side, _ in sides:
        for name in run[side]["cpu_budget"]["processes"]:
            if name not in names:
                names.append(name)
    lines = ["| CPU ms per login | " + " | ".join(label for _, label in sides) + " |",
             "|---" * (len(sides) + 1) + "|"]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(run[s]["cpu_budget"]) for s, _ in sides)
                     + " |")

    def fmt(value, pattern="{:.3f}"):
        return "-" if value is None else pattern.format(value)

    for name in names:
        row(name, lambda b, n=name: fmt((b["processes"].get(n) or {}).get("ms_per_login")))
    row("**sum**", lambda b: fmt(b["sum_ms_per_login"]))
    row("harness (devices + generator) share", lambda b: fmt(b["harness_share"], "{:.0%}"))
    row("ceiling logins/s (cores x 1000 / sum)", lambda b: fmt(b["ceiling_logins_per_s"],
                                                                "{:,.0f}"))
    lines.append("| measured logins/s | " + " | ".join(
        fmt(run[s].get("logins_per_s"), "{:,.0f}") for s, _ in sides) + " |")
    row("machine busy (all processes, all jobs)", lambda b: fmt(b["machine_busy_share"],
                                                                 "{:.0%}"))
    row("others (not listed) ms per login", lambda b: fmt(b["others_ms_per_login"]))
    return "\n".join(lines + ceilings_lines(run.get("ceilings") or {}))


def ceilings_lines(c: dict) -> list[str]:
    """`ceilings` in words, one line per path."""
    lines = []
    for key, target in (("push", TARGET_PUSH), ("allow", TARGET_ALLOW)):
        if f"ratio_cpu_{key}" not in c:
            continue
        lines.append(
            f"{key}: ratio {c[f'ratio_cpu_{key}']:.3f} if every side were bound by CPU; "
            f"at most {c[f'ratio_ceiling_{key}'] or 0:.3f} with a daemon costing nothing "
            f"(harness + slapd {c[f'rest_{key}_ms']:.3f} ms/login); the daemon may take "
            f"{c[f'daemon_budget_{key}_ms']:.3f} ms/login for >= {target}; one daemon "
            f"process tops out at {c[f'one_process_ceiling_{key}'] or 0:,.0f} logins/s")
    return ["", *lines] if lines else []
