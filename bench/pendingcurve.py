"""``python -m bench --only pending-curve``: what pending logins cost as they grow (issue 16).

One daemon (``push.timeout`` long enough for the whole fill) is filled with
distinct users' logins that nobody answers, paced like the pending scenario
(by the pushes the daemon has opened, every unanswered request resent like
a NAS). At each step of ``--curve`` (default 1,000, 10,000, 20,000, 100,000,
clipped to ``--pending``, the users slapd holds) the fill pauses until
``pushproxy_pending_approvals`` reaches the step, and then:

- the daemon's RSS (``VmRSS`` of its process) is read: (RSS - RSS before the
  fill) / step is the memory per pending login;
- its collector figures are read (``pushproxy_gc_*``: full collections so far,
  their total and longest pause);
- ``probes`` other users log in (4 at a time, each approved at once by its
  long-polling device): their round trips are "other logins" at that step.

Then the later half of the held logins is approved and the first half left
to time out: every login must get its answer (Accept for the approved half,
Reject for the rest) -- "each answered right".

``--curve-baseline REV`` runs the same curve first against the daemon of git
revision REV of this repository (exported with ``git archive`` into the
temporary folder), so before and after come from one run on the same machine.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import tarfile
import time
from collections import Counter
from pathlib import Path

from bench import pushproxyd, radload
from bench.scenarios import FILL_BACKLOG, RETRANSMIT, SECRET

#: The default steps of the curve (pending logins held at once).
DEFAULT_STEPS = (1000, 10000, 20000, 100000)


def steps_of(text: str, available: int) -> list[int]:
    """The curve's steps from ``--curve`` ("1000,10000"), clipped to the users there are."""
    steps = sorted({int(part) for part in text.split(",") if part.strip()})
    clipped = [s for s in steps if 0 < s <= available]
    if not clipped or (steps and steps[-1] > available and clipped[-1] != available):
        clipped.append(available)
    return clipped


def baseline_source(rev: str, folder: Path) -> Path:
    """The tree of git revision ``rev`` of this repository, exported into ``folder``
    (``rev`` naming a folder: that tree as it is)."""
    if Path(rev).is_dir():
        return Path(rev).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "src.tar"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), rev],
                   cwd=str(pushproxyd.REPO), check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    archive.unlink()
    return folder


def run(bench, *, steps: list[int], probes: int, timeout: float, source: Path | None = None,
        label: str = "this tree") -> dict:
    """One curve on a fresh daemon (its code from ``source``, default this tree)."""
    # The shipped daemon.overload.max_pending (100,000) sheds every login past it:
    # at the 100,000 step the other users' logins must still get in.
    daemon = bench.new_daemon(push_timeout=timeout, source=source, overload={
        "max_pending": max(100_000, steps[-1] + 2 * probes + 1000)})
    try:
        bench.warm(daemon)
        result = asyncio.run(_curve(bench, daemon, steps, probes, timeout))
        result.update(label=label, push_timeout_s=timeout)
        bench.verify(daemon, f"pending-curve ({label})", result)
        return result
    finally:
        daemon.stop()


async def _metrics(daemon, tries: int = 6):
    """/metrics, retried: on a loaded machine one scrape can take over its 10 s timeout."""
    for attempt in range(tries):
        try:
            return await asyncio.to_thread(daemon.metrics)
        except OSError:  # (socket.timeout and URLError are OSErrors)
            if attempt == tries - 1:
                raise
            await asyncio.sleep(1.0)


def _gc(metrics) -> dict:
    return {"full_collections": int(metrics.value("pushproxy_gc_full_collections")),
            "full_pause_total_s": round(metrics.value("pushproxy_gc_full_pause_seconds_total"), 4),
            "full_pause_max_s": round(metrics.value("pushproxy_gc_full_pause_max_seconds"), 4)}


async def _curve(bench, daemon, steps: list[int], probes: int, timeout: float) -> dict:
    logins = bench.pd[:steps[-1]]
    probe_users = bench.pq
    client = await radload.RadiusClient("127.0.0.1", daemon.radius_port, SECRET,
                                        sockets=len(logins) // 200 + 8).open()
    out: dict = {"steps": []}
    tasks: list = []
    try:
        await asyncio.sleep(0.5)
        rss0 = daemon.rss()
        out["rss_before_bytes"] = rss0
        started = time.monotonic()
        base = (await _metrics(daemon)).value(
            "pushproxy_pushes_requested_total")
        used_probes = 0
        for step in steps:
            # Send up to this step, paced by the pushes the daemon has opened.
            while len(tasks) < step:
                metrics = await _metrics(daemon)
                taken = metrics.value("pushproxy_pushes_requested_total") - base
                room = min(int(taken) + FILL_BACKLOG - len(tasks), 500, step - len(tasks))
                for user, password in logins[len(tasks):len(tasks) + max(0, room)]:
                    tasks.append(asyncio.ensure_future(client.login(
                        user, password, timeout=timeout + 60, retransmit=RETRANSMIT)))
                await asyncio.sleep(0.1)
            waiting = 0
            while time.monotonic() < started + timeout:
                metrics = await _metrics(daemon)
                waiting = metrics.value("pushproxy_pending_approvals")
                if waiting >= step:
                    break
                await asyncio.sleep(0.5)
            reached = time.monotonic() - started
            await asyncio.sleep(0.5)
            rss = daemon.rss()
            gc_before = _gc(await _metrics(daemon))
            point = {"step": step, "held": int(waiting), "reached_s": round(reached, 1),
                     "rss_bytes": rss,
                     "bytes_per_pending_login": round((rss - rss0) / max(1, step)),
                     "gc": gc_before}
            share = probe_users[used_probes:used_probes + probes]
            used_probes += len(share)
            if share:
                probed = await bench._probe(client, daemon, share, f"curve-probe-{step}")
                probed.pop("login_rtt_ms_in_order", None)
                point["other_logins"] = probed
                gc_after = _gc(await _metrics(daemon))
                point["gc_during_probes"] = {
                    "full_collections": gc_after["full_collections"]
                    - gc_before["full_collections"],
                    "full_pause_s": round(gc_after["full_pause_total_s"]
                                          - gc_before["full_pause_total_s"], 4)}
            out["steps"].append(point)
            bench.log(f"curve: {int(waiting)} held ({step} wanted) after {reached:.0f} s, "
                      f"{point['bytes_per_pending_login']} B each, other logins p99 "
                      f"{point.get('other_logins', {}).get('login_rtt', {}).get('p99_ms')} ms")
        out["fill_s"] = round(time.monotonic() - started, 1)
        # Resolve: the later half approved by its phone, the first half times out.
        half = len(logins) // 2
        approve = [u for u, _ in logins[half:]]
        dev = bench.devices(daemon, approve, window=64, name="curve-approve",
                            per_user_timeout=10, deadline=timeout + 120)
        answers = await asyncio.to_thread(dev.finish, timeout + 120)
        results = await asyncio.gather(*tasks)
    finally:
        client.close()
    approved = set(approve)
    outcomes, wrong, lost = Counter(), 0, 0
    for r in results:
        outcomes[r.outcome or "lost"] += 1
        if r.outcome is None:
            lost += 1
        elif (r.outcome == "accept") != (r.user in approved):
            wrong += 1
    out.update({"logins": len(results), "outcomes": dict(outcomes), "lost": lost,
                "unexpected_outcome": wrong, "errors": lost + wrong + client.bad_replies,
                "late_approvals": sum(1 for a in answers["records"] if a["status"] == 410),
                "device_errors": answers["errors"], "retransmits_sent": client.retransmits,
                "resolved_s": round(time.monotonic() - started, 1),
                "loadavg_after": os.getloadavg()[0]})
    return out


def table(curves: list[dict]) -> str:
    """The curves side by side: memory per pending login and other logins' p99 per step."""
    lines = [f"{'variant':<22} {'held':>8} {'B/login':>9} {'RSS MB':>8} {'other p50':>10} "
             f"{'other p99':>10} {'a2a p99':>8} {'full GCs':>9} {'max GC s':>9}"]
    for curve in curves:
        for point in curve["steps"]:
            rtt = point.get("other_logins", {}).get("login_rtt", {})
            a2a = point.get("other_logins", {}).get("approve_to_accept", {})
            lines.append(f"{curve['label'][:22]:<22} {point['held']:>8,} "
                         f"{point['bytes_per_pending_login']:>9,} "
                         f"{point['rss_bytes'] / 1e6:>8.0f} {rtt.get('p50_ms') or 0:>10.1f} "
                         f"{rtt.get('p99_ms') or 0:>10.1f} {a2a.get('p99_ms') or 0:>8.1f} "
                         f"{point['gc']['full_collections']:>9} "
                         f"{point['gc']['full_pause_max_s']:>9.3f}")
        lines.append(f"{curve['label'][:22]:<22} outcomes {curve['outcomes']}, errors "
                     f"{curve['errors']}, resolved after {curve['resolved_s']} s")
    return "\n".join(lines)
