"""The throughput scenario with 1 and 2 worker processes, on SQLite and on PostgreSQL,
next to FreeRADIUS in the same run (issue 15): ``python -m bench --only workers``.

Each variant is a fresh daemon (``daemon.workers`` 1 or 2) on a fresh store with
a device for every user: a SQLite file, or a PostgreSQL schema filled from that
file by ``pushproxy store migrate`` (a private server, as tests/pg.py starts it).
The same users log in once per variant through the asyncio generator.

- ``allow``: the policy allows every login (LDAP search + bind, policy, reply).
  No store call is on this path, so the backend changes nothing but is run
  anyway to show it.
- ``push``: a push per login, approved at once by the device process. Several
  workers need cross-worker wake-ups for it (a device's long-poll and the
  answer may reach another worker than the one holding the login): run only
  where the store's notification bus (pushproxy.approval.notify) exists.

CPU is summed over the supervisor and its workers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import time
from collections import Counter

from bench import pushproxyd
from bench.stats import summary_ms


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def cross_worker_wakeups() -> bool:
    """Whether this tree has the store notification bus several workers need for pushes."""
    return importlib.util.find_spec("pushproxy.approval.notify") is not None


class Postgres:
    """A private PostgreSQL server for the run (started on first use)."""

    def __init__(self):
        self.server = None

    def new_database(self) -> tuple[str, str]:
        """(URL of a fresh schema, password)."""
        from tests.pg import PASSWORD, PostgresServer

        if self.server is None:
            self.server = PostgresServer()
            self.server.init()
            self.server.start()
        return self.server.new_database(), PASSWORD

    def stop(self) -> None:
        if self.server is not None:
            self.server.cleanup()
            self.server = None


def new_daemon(bench, pg: Postgres, *, allow_all: bool, workers: int, backend: str):
    """A daemon with ``workers`` workers on a fresh ``backend`` store holding every device."""
    from pushproxy.approval.migrate import migrate

    bench.daemon_count += 1
    folder = bench.workdir / f"pushproxy-{bench.daemon_count}"
    database, password = "pushproxy.db", None
    folder.mkdir(parents=True, exist_ok=True)
    bench.ids = pushproxyd.seed_devices(folder / "seed.db", [u for u, _ in bench.all_users],
                                        bench.key)
    if backend == "postgresql":
        database, password = pg.new_database()
        migrate(str(folder / "seed.db"), database, password=password)
    else:
        os.rename(folder / "seed.db", folder / "pushproxy.db")
    for _ in range(3):
        config = pushproxyd.write_config(folder, bench.slapd, pushproxyd_secret(),
                                         allow_all=allow_all, ldap_pool=bench.sizes.ldap_pool,
                                         workers=workers, database=database,
                                         database_password=password)
        try:
            return pushproxyd.Daemon(config, folder).start(timeout=60)
        except pushproxyd.PortTaken:  # taken by another process meanwhile: new ports
            continue
    raise RuntimeError("pushproxy: no free ports after 3 attempts")


def pushproxyd_secret() -> str:
    from bench.scenarios import SECRET

    return SECRET


def throughput(bench, pg: Postgres, *, allow_all: bool, workers: int, backend: str) -> dict:
    """One variant: the throughput users log in once; logins/s and CPU of all processes."""
    daemon = new_daemon(bench, pg, allow_all=allow_all, workers=workers, backend=backend)
    try:
        bench.warm(daemon, push=not allow_all)
        dev = None
        if not allow_all:
            dev = bench.devices(daemon, [u for u, _ in bench.tp], window=bench.sizes.window,
                                name="throughput")
        pids = daemon.pids()
        processes = {"daemon": pids}
        if dev is not None:
            processes["devices"] = [dev.proc.pid]
        budget = bench.budget(processes)
        cpu0 = _cpu(pids)
        started = time.monotonic()
        results = asyncio.run(bench._logins(daemon.radius_port, bench.tp,
                                            bench.sizes.concurrency))
        elapsed = time.monotonic() - started
        cpu = _cpu(pids) - cpu0
        cpu_budget = budget.finish(len(results), elapsed)
        outcomes = Counter(r.outcome or "lost" for r in results)
        result = {"workers": workers, "backend": backend,
                  "path": "allow" if allow_all else "push", "logins": len(results),
                  "elapsed_s": round(elapsed, 3),
                  "logins_per_s": round(outcomes["accept"] / elapsed, 1),
                  "outcomes": dict(outcomes), "server_cpu_s": round(cpu, 3),
                  "server_cpu_ms_per_login": round(cpu * 1000 / max(1, len(results)), 3),
                  "latency": summary_ms([r.rtt for r in results if r.rtt is not None]),
                  "loadavg_before": os.getloadavg()[0], "cpu_budget": cpu_budget}
        if dev is not None:
            result["device"] = dev.brief(dev.finish(timeout=60))
        result["daemon_decisions"] = daemon.metrics().value("pushproxy_decisions_total")
        bench.verify(daemon, f"workers ({backend}, {workers})", result)
        return result
    finally:
        daemon.stop(timeout=60)


def run(bench, log=print) -> dict:
    """Every variant once, FreeRADIUS first; {name: result}."""
    out: dict = {"cross_worker_wakeups": cross_worker_wakeups()}
    pg = Postgres()
    try:
        if bench.use_freeradius:
            log("workers: throughput, FreeRADIUS")
            out["freeradius"] = bench.throughput_freeradius()
        for backend in ("sqlite", "postgresql"):
            for path in ("allow", "push"):
                for workers in (1, 2):
                    if path == "push" and workers > 1 and not out["cross_worker_wakeups"]:
                        continue
                    log(f"workers: throughput, {path}, {backend}, {workers} worker(s)")
                    out[f"{path}_{backend}_{workers}"] = throughput(
                        bench, pg, allow_all=path == "allow", workers=workers,
                        backend=backend)
    finally:
        pg.stop()
    return out


def table(out: dict) -> str:
    """A Markdown table of one `run`."""
    rows = ["| server | path | store | workers | logins/s | server CPU ms/login | p50 ms "
            "| p99 ms | outcomes | devices, generator, slapd ms/login | sum ms/login "
            "| ceiling logins/s |", "|---" * 12 + "|"]
    fr = out.get("freeradius")
    if fr:
        rows.append(f"| FreeRADIUS + rlm_ldap | password only | - | - | {fr['logins_per_s']} "
                    f"| {fr['server_cpu_ms_per_login']} | {fr['latency'].get('p50_ms')} "
                    f"| {fr['latency'].get('p99_ms')} | {fr['outcomes']} | {_rest(fr)} |")
    for key, r in out.items():
        if not isinstance(r, dict) or "workers" not in r:
            continue
        rows.append(f"| pushproxy | {r['path']} | {r['backend']} | {r['workers']} "
                    f"| {r['logins_per_s']} | {r['server_cpu_ms_per_login']} "
                    f"| {r['latency'].get('p50_ms')} | {r['latency'].get('p99_ms')} "
                    f"| {r['outcomes']} | {_rest(r)} |")
    return "\n".join(rows)


def _rest(result: dict) -> str:
    """The CPU budget columns: the harness and slapd per login, the sum, the ceiling."""
    budget = result.get("cpu_budget")
    if not budget:
        return "- | - | -"
    per = budget["processes"]
    rest = ", ".join("-" if name not in per else f"{per[name]['ms_per_login']:.2f}"
                     for name in ("devices", "generator", "slapd"))
    return f"{rest} | {budget['sum_ms_per_login']:.2f} | {budget['ceiling_logins_per_s']}"
