"""The burst scenario (issue 22): logins sent at once, as fast as the generator can.

A Monday-morning storm must never be read as "the push layer is down": the
daemon sheds what it cannot take (no answer, so the NAS resends), finishes
what it admitted, and never decides a login by ``push.failmode``. Run once
with ``failmode: secure`` and once with ``safe`` (where a confused daemon
would Accept without a second factor). Every user's phone approves; the
generator resends each request like a NAS (`scenarios.RETRANSMIT`).

The run fails loudly (exit 1, `Bench.failures`) on any failmode or
internal-error decision and on any Accept without an approval from the
user's device.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from bench import radload
from bench.scrapewatch import ScrapeWatch
from bench.stats import summary_ms


def run(bench, failmode: str, overload: dict | None = None) -> dict:
    """One burst of ``bench.sizes.burst`` logins against a fresh daemon."""
    s = bench.sizes
    daemon = bench.new_daemon(push_timeout=s.burst_timeout, failmode=failmode,
                              overload=overload)
    try:
        bench.warm(daemon)
        watch = ScrapeWatch(daemon.config["metrics"]).start()
        try:
            out = asyncio.run(_burst(bench, daemon, failmode))
        finally:
            watched = watch.stop()
        out["metrics_watch"] = watched
        metrics = daemon.metrics()
        out["shed"] = {labels["reason"]: int(v) for n, labels, v in metrics.samples
                       if n == "pushproxy_radius_overloaded_total" and v}
        out["shed_total"] = sum(out["shed"].values())
        out["decisions"] = {labels["reason"]: int(v) for n, labels, v in metrics.samples
                            if n == "pushproxy_decisions_total" and v}
        out["metrics_slowest_scrape_s"] = round(daemon.slowest_scrape, 3)
        bench.verify(daemon, f"burst ({failmode})", out)
        if out["accept_without_approval"]:
            bench.failures.append(f"burst ({failmode}): {out['accept_without_approval']} "
                                  "Accepts without an approval from the user's device")
        return out
    finally:
        daemon.stop()


async def _burst(bench, daemon, failmode: str) -> dict:
    s = bench.sizes
    logins = bench.bu
    dev = bench.devices(daemon, [u for u, _ in logins], window=s.window,
                        name=f"burst-{failmode}", per_user_timeout=s.burst_timeout + 30,
                        deadline=s.burst_timeout * 3 + 60)
    client = await radload.RadiusClient("127.0.0.1", daemon.radius_port, bench_secret(),
                                        sockets=len(logins) // 256 + 2).open()
    from bench.scenarios import RETRANSMIT

    try:
        await asyncio.sleep(0.3)  # the phones' long-polls are open
        started = time.monotonic()
        # Every request goes out in the first turn of the loop: no pacing at all.
        tasks = [asyncio.ensure_future(client.login(
            user, password, station=f"198.51.100.{i % 250 + 1}",
            timeout=s.burst_timeout + 30, retransmit=RETRANSMIT))
            for i, (user, password) in enumerate(logins)]
        results = await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started
    finally:
        client.close()
    answers = await asyncio.to_thread(dev.finish, 60)
    approved = {a["user"] for a in answers["records"] if a["status"] == 200}
    outcomes = Counter(r.outcome or "lost" for r in results)
    resent = [r for r in results if r.retransmits]
    return {
        "failmode": failmode, "logins": len(results), "elapsed_s": round(elapsed, 2),
        "outcomes": dict(outcomes),
        "accept_without_approval": sum(1 for r in results
                                       if r.outcome == "accept" and r.user not in approved),
        "approved_by_device": len(approved),
        "retransmits_sent": client.retransmits,
        "served_after_resend": sum(1 for r in resent if r.outcome is not None),
        "lost": outcomes.get("lost", 0),
        "login_rtt": summary_ms([r.rtt for r in results if r.rtt is not None]),
        "device": {"answered": len(answers["records"]), "errors": answers["errors"],
                   "missed": len(answers["missed"])},
    }


def bench_secret() -> str:
    """The RADIUS secret the benchmark's daemons use."""
    from bench.scenarios import SECRET

    return SECRET
