"""The scenarios of issue 7, run against one slapd in one process tree.

Processes (each its own, so none shares a CPU time slice with another):

    this process  -- orchestration and the RADIUS load generator (asyncio)
    slapd         -- one directory, loglevel 0, for both servers
    freeradius    -- the reference (FreeRADIUS 3.2 + rlm_ldap), bench.freeradius
    pushproxy     -- `pushproxy serve`, restarted with a fresh store for every run
    bench.devices -- the phones, answering through the real approval API

Every figure is measured once per run; the caller takes medians over runs,
and a ratio is computed within a run (both sides measured minutes apart,
under the same background load) before its median is taken.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bench import budget as budget_mod
from bench import freeradius as fr_mod
from bench import profile as profiling
from bench import pushproxyd, radload
from bench.rawldap import RawLdap
from bench.scrapewatch import ScrapeWatch
from bench.stats import percentile, summary_ms

SECRET = "bench-radius-secret-0123456789"
#: Logins the pending fill keeps in flight beyond the pushes the daemon has opened.
FILL_BACKLOG = 800
#: Seconds before each NAS-style resend of a request still unanswered (the last
#: repeats): a request the daemon shed while busy is served by a resend.
RETRANSMIT = (2.0, 4.0, 8.0, 15.0)
#: The pending fill keeps sending for at most this many push timeouts.
FILL_LIMIT = 3
#: Seconds past its push timeout (counted from the end of the fill, when every
#: login was in) within which each pending login must have its answer.
ANSWER_SLACK = 60.0


class BenchFailure(Exception):
    """What must never happen (a failmode or internal-error decision, an Accept without
    an approval): the run exits 1."""


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is."""

    throughput: int = 4000  # distinct users logging in once per pushproxy run
    freeradius_repeat: int = 5  # FreeRADIUS is ~20x faster: same users, more passes
    concurrency: int = 128  # outstanding requests of the throughput generator
    window: int = 256  # device long-polls kept open ahead of the logins
    pending: int = 20000
    # push.timeout of the pending run: all 20,000 must be pending before the first
    # one times out, and the daemon takes in ~170 new logins/s on a quiet 2-core
    # machine (CPU-bound, ~5 ms a login): ~120 s of fill, so 180 s
    pending_timeout: float = 180.0
    probes: int = 300  # other logins while the pending ones wait
    burst: int = 5000  # logins sent at once, as fast as the generator can (issue 22)
    burst_timeout: float = 60.0  # push.timeout of the burst runs
    latency: int = 1000  # logins for the decision-latency phase (no pending load)
    overhead: int = 1000  # sequential logins for the proxy-overhead phase
    warmup: int = 100
    ldap_pool: int = 8  # ldap.pool_size of the daemon (its default)
    # pending-curve (bench.pendingcurve): steps, other logins per step, push.timeout (0: auto)
    curve: str = "1000,10000,20000,100000"
    curve_probes: int = 75
    curve_timeout: float = 0.0
    switch_interval: float = 0.0  # >0: experiment, sys.setswitchinterval in the daemon

    @classmethod
    def smoke(cls) -> "Sizes":
        """A few dozen logins: proves the benchmark runs, measures nothing. (The push
        timeout leaves the phones' process time to start and approve the later half
        on a loaded machine, where starting a Python process takes seconds.)"""
        return cls(throughput=30, freeradius_repeat=1, concurrency=8, window=16, pending=40,
                   pending_timeout=15, probes=10, latency=20, overhead=20, warmup=5,
                   burst=150, burst_timeout=30, curve="10,20,40", curve_probes=3,
                   curve_timeout=20)


def users(prefix: str, count: int) -> list[tuple[str, str]]:
    """(uid, password) pairs: prefix00000, pw-prefix00000, ..."""
    return [(f"{prefix}{i:05d}", f"pw-{prefix}{i:05d}") for i in range(count)]


class Bench:
    """Shared state of one benchmark invocation."""

    def __init__(self, workdir: Path, sizes: Sizes, *, use_freeradius: bool, log=print,
                 slapd_loglevel: str = "0"):
        self.workdir = workdir
        self.slapd_loglevel = slapd_loglevel
        self.sizes = sizes
        self.log = log
        self.use_freeradius = use_freeradius
        s = sizes
        self.tp = users("tp", s.throughput)
        self.pd = users("pd", s.pending)
        self.pq = users("pq", s.probes)
        self.lt = users("lt", s.latency)
        self.ov = users("ov", s.overhead)
        self.wu = users("wu", s.warmup)
        self.bu = users("bu", s.burst)
        self.all_users = self.tp + self.pd + self.pq + self.lt + self.ov + self.wu + self.bu
        self.passwords = dict(self.all_users)
        self.key, self.key_pem = pushproxyd.new_device_key()
        self.slapd = None
        self.freeradius = None
        self.daemon_count = 0
        self.device_processes: list[DeviceProcess] = []
        self.failures: list[str] = []  # what must never happen, seen by any scenario

    # -- setup and teardown --

    def start(self) -> None:
        """slapd with every benchmark user (in vpn-users), then FreeRADIUS."""
        from tests.integration.slapd import Slapd

        started = time.monotonic()
        self.slapd = Slapd(extra_users=self.all_users, extra_users_groups=["vpn-users"],
                           loglevel=self.slapd_loglevel, base_dir=str(self.workdir))
        self.slapd.start()
        self.log(f"slapd: {len(self.all_users)} users, {time.monotonic() - started:.1f} s, "
                 f"pid {self.slapd.pid}")
        if self.use_freeradius:
            folder = self.workdir / "freeradius"
            folder.mkdir(exist_ok=True)
            self.freeradius = fr_mod.FreeRadius(folder, self.slapd, SECRET)
            self.freeradius.configure()
            self.freeradius.check()
            self.freeradius.start()
            self.log(f"freeradius: {self.freeradius.address}, pid {self.freeradius.pid}")
            asyncio.run(self._logins(self.freeradius.port, self.wu, 16))

    def stop(self) -> None:
        """Stop any device process still running, FreeRADIUS and slapd."""
        for dev in self.device_processes:
            if dev.proc.poll() is None:
                dev.proc.kill()
                dev.proc.wait(10)
        if self.freeradius is not None:
            self.freeradius.stop()
        if self.slapd is not None:
            self.slapd.stop()

    def new_daemon(self, *, allow_all: bool = False, push_timeout: float = 60,
                   failmode: str = "secure", overload: dict | None = None,
                   source: Path | None = None):
        """A pushproxy daemon on a fresh store with a device for every user (its code
        from ``source``, default this tree)."""
        self.daemon_count += 1
        folder = self.workdir / f"pushproxy-{self.daemon_count}"
        config = pushproxyd.write_config(folder, self.slapd, SECRET, push_timeout=push_timeout,
                                         allow_all=allow_all, ldap_pool=self.sizes.ldap_pool,
                                         failmode=failmode, overload=overload)
        self.ids = pushproxyd.seed_devices(config["database"], [u for u, _ in self.all_users],
                                           self.key)
        for attempt in range(3):
            try:
                return pushproxyd.Daemon(config, folder, source=source,
                                         switch_interval=self.sizes.switch_interval or None).start()
            except pushproxyd.PortTaken:
                # A port free a moment ago was taken by another process: new ports.
                config = pushproxyd.write_config(
                    folder, self.slapd, SECRET, push_timeout=push_timeout, allow_all=allow_all,
                    ldap_pool=self.sizes.ldap_pool, failmode=failmode, overload=overload)
        raise RuntimeError("pushproxy: no free ports after 3 attempts")

    def devices(self, daemon, user_list: list[str], *, window: int, name: str,
                per_user_timeout: float = 120, deadline: float = 900) -> "DeviceProcess":
        """Start the device process for ``user_list`` (in login order)."""
        job = pushproxyd.device_job(daemon.folder / f"{name}.job.json", users=user_list,
                                    ids=self.ids, key_pem=self.key_pem,
                                    port=daemon.approval_port, window=window,
                                    per_user_timeout=per_user_timeout, deadline=deadline)
        dev = DeviceProcess(job, daemon.folder / f"{name}.result.json")
        self.device_processes.append(dev)
        return dev

    def verify(self, daemon, scenario: str, result: dict) -> None:
        """Note in ``result`` and in ``failures`` any login of this daemon decided by a
        failmode or an internal error: the run then exits 1 (after writing its figures),
        since a benchmark that measures a broken daemon measures nothing."""
        bad = daemon.failmode_decisions()
        result["failmode_decisions"] = bad
        if bad:
            self.failures.append(f"{scenario}: logins decided by push.failmode or an "
                                 f"internal error: {bad} (see {daemon.log_path})")

    async def _logins(self, port: int, logins, concurrency: int, timeout: float = 30.0):
        client = await radload.RadiusClient("127.0.0.1", port, SECRET, sockets=4).open()
        try:
            return await radload.closed_loop(client, list(logins), concurrency, timeout)
        finally:
            client.close()

    def warm(self, daemon, *, push: bool = True) -> None:
        """A few logins (approved, with ``push``): imports done, connections open."""
        dev = self.devices(daemon, [u for u, _ in self.wu], window=16, name="warmup") \
            if push else None
        try:
            asyncio.run(self._logins(daemon.radius_port, self.wu, 8))
        finally:
            if dev is not None:
                dev.finish(timeout=30)

    # -- throughput --

    def throughput_freeradius(self) -> dict:
        """FreeRADIUS + rlm_ldap: logins/s with the asyncio generator, and with radclient."""
        logins = self.tp * self.sizes.freeradius_repeat
        result = self._timed(self.freeradius.port, logins, self.freeradius.pid,
                             {"freeradius": [self.freeradius.pid]})
        if not os.access(radload.RADCLIENT_BIN, os.X_OK):
            return result
        load = self.workdir / "freeradius-load.txt"
        if not load.exists():
            radload.write_load_file(load, logins)
        rc = radload.run_radclient(self.freeradius.address, SECRET, load,
                                   parallel=self.sizes.concurrency)
        result["radclient"] = {"logins_per_s": round(rc.rate, 1), "accepted": rc.accepted,
                               "lost": rc.lost, "rejected": rc.rejected,
                               "elapsed_s": round(rc.elapsed, 3), "cpu_s": round(rc.cpu, 3)}
        return result

    def throughput_pushproxy(self, *, allow_all: bool, profile_to: Path | None = None,
                             profile_gil: bool = False) -> dict:
        """pushproxy's full path (push approved at once by a device) or policy allow."""
        daemon = self.new_daemon(allow_all=allow_all)
        spy = None
        try:
            self.warm(daemon, push=not allow_all)
            dev = None
            if not allow_all:
                dev = self.devices(daemon, [u for u, _ in self.tp], window=self.sizes.window,
                                   name="throughput")
            if profile_to is not None:
                spy = profiling.start(daemon.pid, profile_to, rate=250, gil=profile_gil)
                time.sleep(1.0)
            others = {"daemon": [daemon.pid]}
            if dev is not None:
                others["devices"] = [dev.proc.pid]
            result = self._timed(daemon.radius_port, self.tp, daemon.pid, others)
            if spy is not None:
                profiling.stop(spy)
                spy = None
            if dev is not None:
                answers = dev.finish(timeout=60)
                result["device"] = dev.brief(answers)
            metrics = daemon.metrics()
            result["daemon_decisions"] = metrics.value("pushproxy_decisions_total")
            self.verify(daemon, "throughput", result)
            return result
        finally:
            if spy is not None:
                profiling.stop(spy)
            daemon.stop()

    def budget(self, processes: dict[str, list[int]]) -> budget_mod.Budget:
        """A CPU budget over ``processes`` plus slapd (and this process, the generator)."""
        return budget_mod.Budget({**processes, "slapd": [self.slapd.pid]})

    def _timed(self, port: int, logins, pid: int, processes: dict[str, list[int]]) -> dict:
        """The logins through the generator, timed; ``processes``: the run's other
        processes by name (server, devices), for the CPU budget per login."""
        cpu0 = _cpu_of(pid)
        gen0 = time.process_time()
        budget = self.budget(processes)
        started = time.monotonic()
        results = asyncio.run(self._logins(port, logins, self.sizes.concurrency))
        elapsed = time.monotonic() - started
        cpu_budget = budget.finish(len(results), elapsed)
        outcomes = Counter(r.outcome or "lost" for r in results)
        server_cpu = _cpu_of(pid) - cpu0
        return {"logins": len(results), "elapsed_s": round(elapsed, 3),
                "logins_per_s": round(outcomes["accept"] / elapsed, 1),
                "outcomes": dict(outcomes),
                "server_cpu_s": round(server_cpu, 3),
                "server_cpu_ms_per_login": round(server_cpu * 1000 / max(1, len(results)), 3),
                "generator_cpu_s": round(time.process_time() - gen0, 3),
                "latency": summary_ms([r.rtt for r in results if r.rtt is not None]),
                "loadavg_before": os.getloadavg()[0], "cpu_budget": cpu_budget}

    # -- pending capacity and decision latency --

    def pending(self) -> dict:
        """20,000 held logins: memory, other logins' latency, then all resolve."""
        s = self.sizes
        daemon = self.new_daemon(push_timeout=s.pending_timeout)
        try:
            self.warm(daemon)
            watch = ScrapeWatch(daemon.config["metrics"]).start()
            try:
                result = asyncio.run(self._pending(daemon))
            finally:
                # Scraped from a process of its own, as Prometheus would: the
                # generator's own scrapes also wait for its busy event loop.
                result_watch = watch.stop()
            result["metrics_watch"] = result_watch
            result["metrics_scrapes"] = daemon.scrapes
            result["metrics_slowest_scrape_s"] = round(daemon.slowest_scrape, 3)
            self.verify(daemon, "pending", result)
            return result
        finally:
            daemon.stop()

    async def _probe(self, client, daemon, logins, name: str) -> dict:
        """Logins approved at once (device long-polls armed), 4 at a time."""
        dev = self.devices(daemon, [u for u, _ in logins], window=16, name=name)
        await asyncio.sleep(0.3)
        results = await radload.closed_loop(client, list(logins), 4, timeout=30)
        answers = await asyncio.to_thread(dev.finish, 30)
        return _latency(results, answers)

    async def _pending(self, daemon) -> dict:
        s = self.sizes
        out: dict = {"pending_target": s.pending, "push_timeout_s": s.pending_timeout}
        sockets = s.pending // 200 + 8
        client = await radload.RadiusClient("127.0.0.1", daemon.radius_port, SECRET,
                                            sockets=sockets).open()
        try:
            # Decision latency with nothing else going on.
            out["idle"] = await self._probe(client, daemon, self.lt, "latency-idle")
            await asyncio.sleep(0.5)
            rss0 = daemon.rss()
            cpu0 = daemon.cpu_seconds()
            started = time.monotonic()
            # Paced by the pushes the daemon has opened (its pushes_requested
            # counter): logins past its capacity would only be shed (not
            # answered) while it is busy. Each login is resent like a NAS
            # would (RETRANSMIT), so one that was shed is served by a resend.
            # Sending goes on until every login is in (not only for one push
            # timeout: on a slow or loaded machine the fill takes longer, and
            # logins never sent would be counted as lost).
            base = (await asyncio.to_thread(daemon.metrics)).value(
                "pushproxy_pushes_requested_total")
            tasks: dict = {}
            fill_limit = started + FILL_LIMIT * s.pending_timeout
            taken = waiting = held = 0
            while time.monotonic() < fill_limit:
                metrics = await asyncio.to_thread(daemon.metrics)
                taken = int(metrics.value("pushproxy_pushes_requested_total") - base)
                waiting = int(metrics.value("pushproxy_pending_approvals"))
                held = max(held, waiting)
                if taken >= len(self.pd):
                    break
                room = min(taken + FILL_BACKLOG - len(tasks), 500)
                for user, password in self.pd[len(tasks):len(tasks) + max(0, room)]:
                    # The window per login is the scenario's, from the moment the
                    # daemon took it in (below): a resend-until-told NAS.
                    tasks[asyncio.ensure_future(client.login(
                        user, password, timeout=FILL_LIMIT * s.pending_timeout
                        + s.pending_timeout + 120, retransmit=RETRANSMIT))] = user
                await asyncio.sleep(0.1)
            admitted = time.monotonic()  # every push opened by now (or the fill gave up)
            out["sent_s"] = round(admitted - started, 2)
            out["admitted"] = taken
            if taken < len(self.pd):
                self.failures.append(f"pending: only {taken} of {len(self.pd)} logins taken "
                                     f"in within {FILL_LIMIT * s.pending_timeout:g} s")
            fill = admitted - started
            await asyncio.sleep(0.5)
            rss1 = daemon.rss()
            gc_fill = await asyncio.to_thread(daemon.metrics)
            out.update({
                "fill_s": round(fill, 2), "held_at_once": held,
                "fill_rate_per_s": round(taken / fill, 1) if fill > 0 else None,
                "rss_before_bytes": rss0, "rss_pending_bytes": rss1,
                "bytes_per_pending_login": round((rss1 - rss0) / max(1, held)),
                "fill_cpu_s": round(daemon.cpu_seconds() - cpu0, 2),
                # The collector's pauses up to the end of the fill (gcwatch, /metrics).
                "gc_at_fill_end": {f"{gen}_{what}": round(gc_fill.value(
                    f"pushproxy_gc_{gen}_{what}"), 3) for gen in ("middle", "full")
                    for what in ("collections", "pause_seconds_total", "pause_max_seconds")}})
            # Other logins, approved at once, while the pending ones wait.
            out["during_pending"] = await self._probe(client, daemon, self.pq, "latency-busy")
            # Resolve: the later half is approved by the device, the first half times out.
            half = s.pending // 2
            approve = [u for u, _ in self.pd[half:]]
            dev = self.devices(daemon, approve, window=64, name="approve-half",
                               per_user_timeout=10)
            answers = await asyncio.to_thread(dev.finish, s.pending_timeout + 60)
            approved_at = time.monotonic() - started
            # Every login was in by `admitted`: each is answered by its approval or
            # by its push timeout after that (+ slack for a busy machine), else lost.
            window = admitted + s.pending_timeout + ANSWER_SLACK - time.monotonic()
            done, unfinished = await asyncio.wait(list(tasks), timeout=max(0.0, window))
            for task in unfinished:
                task.cancel()
            results = [t.result() for t in done]
        finally:
            client.close()
        # Right means: Accept exactly for the logins whose phone's approval the daemon
        # took (200). An approval that came too late (410, or the push had already
        # timed out when the phone looked: "missed") must end in Reject, and is
        # reported: on a starved machine the phones fall behind the push timeout.
        approved = {a["user"] for a in answers["records"] if a["status"] == 200}
        out["approvals_missed"] = len(answers["missed"])
        out["approved_by_device"] = len(approved)
        outcomes = Counter()
        wrong = 0
        lost = len(unfinished)
        outcomes["lost"] = lost
        for r in results:
            outcomes[r.outcome or "lost"] += 1
            if r.outcome is None:
                lost += 1
            elif (r.outcome == "accept") != (r.user in approved):
                wrong += 1
        if not outcomes["lost"]:
            del outcomes["lost"]
        late = sum(1 for a in answers["records"] if a["status"] == 410)
        # Who was not answered: told apart from the daemon's own count of decisions.
        out["unanswered"] = sorted(tasks[t] for t in unfinished)[:200] + [
            r.user for r in results if r.outcome is None][:200]
        # A timed-out login waited its push timeout after it was taken in: the rest of
        # its round trip is the time it was shed (and its LDAP stage).
        intake = sorted(r.rtt - s.pending_timeout for r in results
                        if r.outcome == "reject" and r.rtt is not None)
        if intake:
            out["intake_wait_s"] = {
                "n": len(intake), "p50": round(percentile(intake, 50), 2),
                "p99": round(percentile(intake, 99), 2), "max": round(intake[-1], 2)}
        decided = (await asyncio.to_thread(daemon.metrics)).value("pushproxy_decisions_total")
        out["daemon_decisions"] = int(decided)
        if lost or wrong:
            self.failures.append(f"pending: {lost} logins unanswered within push.timeout + "
                                 f"{ANSWER_SLACK:g} s of the fill, {wrong} wrong outcomes")
        out.update({
            "resolved_s": round(time.monotonic() - started, 1),
            "approvals_done_s": round(approved_at, 1),
            "outcomes": dict(outcomes), "lost": lost, "unexpected_outcome": wrong,
            "late_approvals": late, "device_errors": answers["errors"],
            "errors": lost + wrong + client.bad_replies,
            "retransmits_sent": client.retransmits,
            "rss_after_bytes": daemon.rss()})
        return out

    # -- proxy overhead --

    def overhead(self) -> dict:
        """Sequential logins, policy allow (no push) vs the raw LDAP search + bind."""
        daemon = self.new_daemon(allow_all=True)
        try:
            self.warm(daemon, push=False)
            result = asyncio.run(self._overhead(daemon))
            self.verify(daemon, "overhead", result)
            return result
        finally:
            daemon.stop()

    async def _overhead(self, daemon) -> dict:
        raw = RawLdap(self.slapd)
        proxy_rtt, raw_times, fr_rtt = [], [], []
        client = await radload.RadiusClient("127.0.0.1", daemon.radius_port, SECRET,
                                            sockets=1).open()
        fr_client = None
        if self.freeradius is not None:
            fr_client = await radload.RadiusClient("127.0.0.1", self.freeradius.port, SECRET,
                                                   sockets=1).open()
        before = await asyncio.to_thread(daemon.metrics)
        try:
            for i in range(0, len(self.ov), 50):
                block = self.ov[i:i + 50]
                for user, password in block:
                    raw_times.append(raw.login(user, password))
                for user, password in block:
                    r = await client.login(user, password, timeout=10)
                    if r.outcome == "accept":
                        proxy_rtt.append(r.rtt)
                if fr_client is not None:
                    for user, password in block:
                        r = await fr_client.login(user, password, timeout=10)
                        if r.outcome == "accept":
                            fr_rtt.append(r.rtt)
        finally:
            client.close()
            if fr_client is not None:
                fr_client.close()
            raw.close()
        after = await asyncio.to_thread(daemon.metrics)
        d_count, d_sum = (a - b for a, b in zip(after.histogram("pushproxy_decision_seconds"),
                                                before.histogram("pushproxy_decision_seconds")))
        l_count, l_sum = (a - b for a, b in zip(after.histogram("pushproxy_ldap_seconds"),
                                                before.histogram("pushproxy_ldap_seconds")))
        p50 = lambda v: percentile(v, 50)  # noqa: E731
        p99 = lambda v: percentile(v, 99)  # noqa: E731
        out = {
            "pushproxy_rtt": summary_ms(proxy_rtt), "raw_ldap": summary_ms(raw_times),
            "overhead_p50_ms": _ms(_minus(p50(proxy_rtt), p50(raw_times))),
            "overhead_p99_ms": _ms(_minus(p99(proxy_rtt), p99(raw_times))),
            "metrics_mean_decision_ms": _ms(d_sum / d_count if d_count else None),
            "metrics_mean_ldap_ms": _ms(l_sum / l_count if l_count else None),
        }
        out["metrics_mean_overhead_ms"] = _ms(_minus(
            d_sum / d_count if d_count else None, l_sum / l_count if l_count else None))
        if fr_rtt:
            out["freeradius_rtt"] = summary_ms(fr_rtt)
            out["freeradius_overhead_p50_ms"] = _ms(_minus(p50(fr_rtt), p50(raw_times)))
        return out


class DeviceProcess:
    """`python -m bench.devices` running one job; `finish` stops it and reads its result."""

    def __init__(self, job: Path, result: Path):
        self.result = result
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.devices", str(job),
                                      str(result)], stdout=subprocess.PIPE,
                                     cwd=str(pushproxyd.REPO))
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            self.proc.kill()
            raise RuntimeError(f"device process did not start: {line!r}")

    def finish(self, timeout: float = 60) -> dict:
        """Wait up to ``timeout`` s for the job to end, else stop it; the result."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        try:
            return json.loads(self.result.read_text())
        except (OSError, ValueError):
            return {"records": [], "errors": {"no_result": 1}, "missed": []}

    @staticmethod
    def brief(answers: dict) -> dict:
        """Counts of a device result (answered, errors, users never seen)."""
        return {"answered": len(answers["records"]), "errors": answers["errors"],
                "missed": len(answers["missed"])}


def _latency(results, answers: dict) -> dict:
    """Login round trips, and approve-to-accept: answer sent (device) -> reply in (client)."""
    sent = {a["user"]: a for a in answers["records"] if a["status"] == 200}
    approve_to_accept, at_socket, post_rtt = [], [], []
    for r in results:
        a = sent.get(r.user)
        if r.outcome == "accept" and a is not None and r.received is not None:
            approve_to_accept.append(r.received - a["sent"])
            # the same, ending when the kernel took the Accept in: without the
            # generator's own wait for its event loop (radload.arrival)
            if r.arrived is not None:
                at_socket.append(r.arrived - a["sent"])
            post_rtt.append(a["done"] - a["sent"])
    return {"outcomes": dict(Counter(r.outcome or "lost" for r in results)),
            "login_rtt_ms_in_order": [None if r.rtt is None else round(r.rtt * 1000, 2)
                                      for r in sorted(results, key=lambda r: r.sent)],
            "login_rtt": summary_ms([r.rtt for r in results if r.outcome == "accept"]),
            "approve_to_accept": summary_ms(approve_to_accept),
            "approve_to_accept_at_socket": summary_ms(at_socket),
            "answer_post_rtt": summary_ms(post_rtt),
            "device": DeviceProcess.brief(answers)}


def _cpu_of(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _minus(a, b):
    return None if a is None or b is None else a - b


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)
