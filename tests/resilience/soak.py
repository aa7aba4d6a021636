"""Soak: steady mixed load against `pushproxy serve`; every login answered, RSS and fds flat.

    python -m tests.resilience.soak --minutes 10 --rate 20 --out docs/resilience-soak.json

starts its own slapd (with the soak users), seeds one device per user into a
fresh SQLite store, runs the daemon as an admin does (``pushproxy serve``, a
process of its own), and sends logins open-loop at ``rate`` per second, in
turn of four kinds:

- ``approve``: the user's phone (a long-poll through the real approval API,
  signed like the command-line authenticator) approves: Access-Accept;
- ``deny``: the phone denies: Access-Reject;
- ``timeout``: the phone never answers: Access-Reject at ``push.timeout``;
- ``wrong_password``: Access-Reject from the directory, no push.

A user is never sent a second login while one is in flight (that would join
the first). Every ``sample`` seconds the daemon's RSS (VmRSS) and open file
descriptors (/proc/PID/fd) are recorded; the slopes are least-squares fits
over the samples after ``warmup`` seconds, in KiB/min and fds/min. The result
(JSON) says how many logins were sent, answered, answered as expected, and
the slopes; `tests.resilience.report` renders it into docs/resilience.md.

The same code runs for 20 seconds in the test suite (test_soak_short.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench.devices import HttpConnection
from bench.pushproxyd import Daemon, free_port, new_device_key, seed_devices
from bench.radload import RadiusClient
from pushproxy.approval import crypto

SECRET = "soak-secret-0123456789"
KINDS = ("approve", "deny", "timeout", "wrong_password")
EXPECTED = {"approve": "accept", "deny": "reject", "timeout": "reject",
            "wrong_password": "reject"}
PUSH_TIMEOUT = 5.0  # the smallest push.timeout the config accepts


def slope_per_minute(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) samples, in value per minute."""
    if len(samples) < 2:
        return None
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in samples)
    return cov / var * 60.0


def pool_sizes(rate: float) -> dict[str, int]:
    """Users per kind: enough that a free one is always there at this rate."""
    per_kind = max(rate / len(KINDS), 1.0)
    return {"approve": int(per_kind * 2) + 8, "deny": int(per_kind * 2) + 8,
            "timeout": int(per_kind * (PUSH_TIMEOUT + 2)) + 8,
            "wrong_password": int(per_kind * 2) + 8}


def write_config(folder: Path, slapd) -> dict:
    """The daemon's config.yaml: built-in approval service, metrics, audit file."""
    (folder / "radius.secret").write_text(SECRET + "\n")
    (folder / "ldap.secret").write_text(slapd.service_password + "\n")
    for name in ("radius.secret", "ldap.secret"):  # serve refuses secrets others can read
        (folder / name).chmod(0o600)
    ports = {"radius": free_port(socket.SOCK_DGRAM), "approval": free_port(),
             "metrics": free_port()}
    (folder / "config.yaml").write_text(textwrap.dedent(f"""\
        radius:
          listen: ["127.0.0.1:{ports['radius']}"]
          clients:
            - name: soak
              address: 127.0.0.1
              secret_file: radius.secret
        ldap:
          servers: ["{slapd.url}"]
          bind_dn: "{slapd.service_dn}"
          bind_password_file: ldap.secret
          user_base: "{slapd.people_dn}"
          user_filter: "(&(objectClass=inetOrgPerson)(uid={{username}}))"
          required_groups: ["{slapd.group_dn('vpn-users')}"]
        push:
          timeout: {PUSH_TIMEOUT:g}
          # the soak denies on purpose, thousands of times: no pause, no rate limit
          limits: {{max_pushes: 1000, window: 1, max_denials: 1000, denial_window: 1}}
        audit:
          path: audit.jsonl
        daemon:
          stop_grace: 0
          metrics_listen: "127.0.0.1:{ports['metrics']}"
        approval:
          listen: "127.0.0.1:{ports['approval']}"
          public_url: "http://127.0.0.1:{ports['approval']}"
          database: pushproxy.db
        """))
    return {"config": folder / "config.yaml", "database": folder / "pushproxy.db", **ports}


class Phones:
    """One long-polling phone per approve/deny user, answering through the approval API."""

    def __init__(self, port: int, key, ids: dict[str, str], decisions: dict[str, str]):
        self.port, self.key, self.ids, self.decisions = port, key, ids, decisions
        self.answered = 0
        self.errors: dict[str, int] = {}
        self.stopping = False
        self.tasks: list[asyncio.Task] = []

    def _signed(self, user: str, method: str, target: str, body: bytes) -> dict[str, str]:
        headers = crypto.device_headers(self.key, self.ids[user], method, target, body)
        headers["Accept"] = "application/json"
        if body:
            headers["Content-Type"] = "application/json"
        return headers

    def _error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def phone(self, user: str) -> None:
        conn = HttpConnection("127.0.0.1", self.port)
        target = "/v1/device/pending?wait=20"
        decision = self.decisions[user]
        try:
            while not self.stopping:
                try:
                    status, body = await conn.request("GET", target,
                                                      self._signed(user, "GET", target, b""))
                    if status != 200:
                        self._error(f"poll:http_{status}")
                        await asyncio.sleep(0.2)
                        continue
                    for entry in json.loads(body)["requests"]:
                        text = crypto.answer_text(entry["txid"], entry["nonce"], decision,
                                                  entry["username"], self.ids[user])
                        data = json.dumps({"txid": entry["txid"], "decision": decision,
                                           "signature": crypto.sign(self.key, text)}).encode()
                        status, _ = await conn.request(
                            "POST", "/v1/device/answer",
                            self._signed(user, "POST", "/v1/device/answer", data), data)
                        if status == 200:
                            self.answered += 1
                        else:
                            self._error(f"answer:http_{status}")
                except (OSError, asyncio.IncompleteReadError) as exc:
                    self._error(type(exc).__name__)
                    conn.close()
                    await asyncio.sleep(0.2)
        finally:
            conn.close()

    def start(self) -> None:
        """Start every phone."""
        self.tasks = [asyncio.ensure_future(self.phone(u)) for u in self.decisions]

    async def stop(self) -> None:
        """Cancel every phone (they are in a long-poll)."""
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def fd_count(pid: int) -> int:
    """Open file descriptors of ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def thread_count(pid: int) -> int:
    """Threads of ``pid``."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Threads:"))


async def drive(daemon: Daemon, pools: dict[str, list[str]], passwords: dict[str, str], *,
                seconds: float, rate: float, sample: float, progress=None) -> dict:
    """Send the mixed load for ``seconds``; sample RSS and fds; wait for every answer."""
    client = await RadiusClient("127.0.0.1", daemon.radius_port, SECRET, sockets=2,
                                nas="soak").open()
    free = {kind: list(users) for kind, users in pools.items()}
    counts = {kind: {"sent": 0, "accept": 0, "reject": 0, "challenge": 0, "unanswered": 0,
                     "unexpected": 0, "skipped": 0} for kind in KINDS}
    latencies: dict[str, list[float]] = {kind: [] for kind in KINDS}
    samples: list[dict] = []
    inflight: set[asyncio.Task] = set()
    started = time.monotonic()

    async def one(kind: str, user: str) -> None:
        password = "wrong-password" if kind == "wrong_password" else passwords[user]
        try:
            result = await client.login(user, password, station=f"soak-{kind}",
                                        timeout=PUSH_TIMEOUT + 15)
        finally:
            free[kind].append(user)
        if result.outcome is None:
            counts[kind]["unanswered"] += 1
            return
        counts[kind][result.outcome] = counts[kind].get(result.outcome, 0) + 1
        latencies[kind].append(result.rtt)
        if result.outcome != EXPECTED[kind]:
            counts[kind]["unexpected"] += 1

    def take_sample() -> None:
        samples.append({"t": round(time.monotonic() - started, 2), "rss_kib": daemon.rss() // 1024,
                        "fds": fd_count(daemon.pid), "threads": thread_count(daemon.pid),
                        "inflight": len(inflight)})
        if progress:
            progress(samples[-1], counts)

    take_sample()
    next_sample = started + sample
    i = 0
    while True:
        now = time.monotonic()
        if now - started >= seconds:
            break
        due = started + i / rate
        if due > now:
            await asyncio.sleep(min(due, next_sample) - now)
        if time.monotonic() >= next_sample:
            take_sample()
            next_sample += sample
        if time.monotonic() < due:
            continue
        kind = KINDS[i % len(KINDS)]
        i += 1
        if not free[kind]:
            counts[kind]["skipped"] += 1  # every user of this kind still in flight
            continue
        counts[kind]["sent"] += 1
        task = asyncio.ensure_future(one(kind, free[kind].pop()))
        inflight.add(task)
        task.add_done_callback(inflight.discard)
    sent_for = time.monotonic() - started
    await asyncio.gather(*list(inflight))
    take_sample()
    client.close()
    return {"counts": counts, "latencies": latencies, "samples": samples,
            "sent_for_s": round(sent_for, 1), "bad_replies": client.bad_replies}


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of ``values``, nearest rank."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(run: dict, *, warmup: float) -> dict:
    """Totals, latency percentiles and RSS/fd slopes of a `drive` result."""
    counts = run["counts"]
    total = {key: sum(c[key] for c in counts.values())
             for key in ("sent", "accept", "reject", "unanswered", "unexpected", "skipped")}
    steady = [s for s in run["samples"] if s["t"] >= warmup] or run["samples"]
    rss = [(s["t"], s["rss_kib"]) for s in steady]
    fds = [(s["t"], s["fds"]) for s in steady]
    return {
        "total": total,
        "by_kind": counts,
        "latency_s": {kind: {"p50": percentile(v, 0.5), "p99": percentile(v, 0.99),
                             "max": max(v) if v else None}
                      for kind, v in run["latencies"].items()},
        "rss_kib": {"first": steady[0]["rss_kib"], "last": steady[-1]["rss_kib"],
                    "min": min(v for _, v in rss), "max": max(v for _, v in rss),
                    "slope_kib_per_min": slope_per_minute(rss)},
        "fds": {"first": steady[0]["fds"], "last": steady[-1]["fds"],
                "min": min(v for _, v in fds), "max": max(v for _, v in fds),
                "slope_per_min": slope_per_minute(fds)},
        "threads": {"min": min(s["threads"] for s in steady),
                    "max": max(s["threads"] for s in steady)},
        "samples_used": len(steady),
    }


def soak(workdir: Path, *, seconds: float, rate: float, sample: float = 5.0,
         warmup: float = 60.0, progress=None) -> dict:
    """The whole soak in ``workdir``: slapd, store, daemon, load; returns the result."""
    from tests.integration.slapd import Slapd

    pools, index = {}, 0
    for kind, size in pool_sizes(rate).items():
        pools[kind] = [f"soak{index + n:04d}" for n in range(size)]
        index += size
    passwords = {u: f"pw-{u}" for users in pools.values() for u in users}
    slapd = Slapd(extra_users=passwords.items(), extra_users_groups=["vpn-users"],
                  loglevel="0", base_dir=str(workdir))
    slapd.start()
    daemon = None
    try:
        config = write_config(workdir, slapd)
        key, _ = new_device_key()
        ids = seed_devices(config["database"], list(passwords), key)
        daemon = Daemon(config, workdir).start()
        decisions = {u: "approve" for u in pools["approve"]}
        decisions.update({u: "deny" for u in pools["deny"]})

        async def main():
            phones = Phones(daemon.approval_port, key, ids, decisions)
            phones.start()
            await asyncio.sleep(1.0)  # the phones are waiting before the first login
            try:
                run = await drive(daemon, pools, passwords, seconds=seconds, rate=rate,
                                  sample=sample, progress=progress)
            finally:
                await phones.stop()
            run["phones"] = {"answered": phones.answered, "errors": phones.errors}
            return run

        run = asyncio.run(main())
        metrics = daemon.metrics()
        result = summarize(run, warmup=warmup)
        result.update({
            "seconds": seconds, "rate": rate, "sample_s": sample, "warmup_s": warmup,
            "sent_for_s": run["sent_for_s"], "bad_replies": run["bad_replies"],
            "phones": run["phones"], "samples": run["samples"],
            "daemon": {
                "internal_errors": metrics.value("pushproxy_internal_errors_total"),
                "push_provider_errors": metrics.value("pushproxy_push_provider_errors_total"),
                "audit_write_errors": metrics.value("pushproxy_audit_write_errors_total"),
                "decisions": {reason: metrics.value("pushproxy_decisions_total", reason=reason)
                              for reason in ("push_approved", "push_denied", "push_timeout",
                                             "bad_credentials")},
            },
        })
    finally:
        if daemon is not None:
            daemon.stop()
        slapd.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.resilience.soak",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20.0, help="logins per second")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="seconds of samples left out of the slopes")
    parser.add_argument("--out", default="docs/resilience-soak.json")
    parser.add_argument("--workdir", default=None, help="default: a fresh temporary folder")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pushproxy-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def progress(sample, counts):
        sent = sum(c["sent"] for c in counts.values())
        print(f"t={sample['t']:7.1f}s sent={sent} rss={sample['rss_kib']} KiB "
              f"fds={sample['fds']} inflight={sample['inflight']}", flush=True)

    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result = soak(workdir, seconds=args.minutes * 60, rate=args.rate, sample=args.sample,
                  warmup=args.warmup, progress=progress)
    result["started"] = started
    result["command"] = "python -m tests.resilience.soak " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    total = result["total"]
    print(json.dumps({k: result[k] for k in ("total", "rss_kib", "fds")}, indent=1))
    return 0 if total["unanswered"] == 0 and total["unexpected"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
