"""`pushproxy serve` killed with SIGKILL in the middle of logins, and started again.

Nothing the daemon committed may be lost: every enrolled device is still there
(`pushproxy devices list`), the SQLite file passes ``integrity_check``, the
transactions the killed process left pending are retired at start (a phone is
never shown a request no login waits for), and the restarted daemon serves
logins at once. Logins in flight when the process died get no answer from it --
no process can answer after SIGKILL; the NAS retries or fails over -- and none
of them was ever answered Accept without an approval.
"""

from __future__ import annotations

import concurrent.futures
import signal
import sqlite3
import subprocess
import sys
import threading
import time

from pushproxy.approval import authenticator as auth
from tests.integration.test_operations import enroll_device, served_config
from tests.resilience import rig

PUSH = "timeout: 20\n" + rig.LIMITS


def approver(state: str, stop: threading.Event, approved: list) -> None:
    """alice's phone: approves everything it sees until ``stop``."""
    while not stop.is_set():
        try:
            for entry in auth.pending(state, wait=1):
                auth.answer(state, entry["txid"], "approve")
                approved.append(entry["txid"])
        except Exception:  # the daemon is being killed: keep polling
            time.sleep(0.1)


def devices_list(config) -> str:
    done = subprocess.run([sys.executable, "-m", "pushproxy.cli", "devices", "list",
                           "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def device_ids(listing: str) -> list[tuple[str, str]]:
    """(device id, user) of each row of `devices list` (last_seen may change)."""
    rows = [line.split() for line in listing.splitlines()[1:] if line.strip()]
    return sorted((row[0], row[1]) for row in rows)


def test_sigkill_under_load_loses_no_device_retires_pending_and_serves_again(
        slapd, tmp_path, resilience):
    path, radius_port, http_port = served_config(tmp_path, slapd, push=PUSH)
    server = f"127.0.0.1:{radius_port}"
    serve = rig.Serve(path, tmp_path / "serve.log")
    stop = threading.Event()
    try:
        alice = enroll_device(path, tmp_path, "alice")
        enroll_device(path, tmp_path, "bob")  # bob's phone never answers
        listed_before = devices_list(path)
        approved: list = []
        phone = threading.Thread(target=approver, args=(alice, stop, approved), daemon=True)
        phone.start()
        logins = [("alice" if i % 2 else "bob", "alice-pw" if i % 2 else "bob-pw", f"k-{i}")
                  for i in range(40)]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            load = pool.submit(rig.burst_sync, server, logins, timeout=5, spacing=0.05)
            time.sleep(1.2)
            serve.proc.send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            serve.proc.wait(10)
            results = load.result(timeout=60)
        stop.set()
        phone.join(10)
        db = str(tmp_path / "pushproxy.db")
        with sqlite3.connect(db) as conn:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
            pending_left = conn.execute(
                "SELECT count(*) FROM transactions WHERE state = 'pending'").fetchone()[0]
        restarting = time.monotonic()
        restart = rig.Serve(path, tmp_path / "serve.log")
        serve = restart
        ready_in = time.monotonic() - restarting
        stale_line = next((line for line in restart.text().splitlines()
                           if "approval.cancelled_stale" in line), "")
        listed_after = devices_list(path)
        seen_after = auth.pending(alice)
        stop.clear()
        approved_after: list = []
        phone = threading.Thread(target=approver, args=(alice, stop, approved_after), daemon=True)
        phone.start()
        (again,) = rig.burst_sync(server, [("alice", "alice-pw", "after")], timeout=15)
        stop.set()
        before, after = device_ids(listed_before), device_ids(listed_after)
        accepted = sum(1 for r in results if r.outcome == "accept")
        sent_before = [r for r in results if r.sent < killed_at]
        sent_after = [r for r in results if r.sent >= killed_at]
        resilience.record(
            fault="SIGKILL of `pushproxy serve` during 40 logins at 20/s (alice's phone "
                  "approves, bob's is silent), then a restart",
            expected="no Accept without an approval; after restart: every device listed, "
                     "integrity_check ok, the killed run's pending transactions retired, "
                     "a login Accepts again",
            measured=f"sent before the kill: {len(sent_before)}, outcomes "
                     f"{rig.outcomes(sent_before)} (approvals {len(approved)}); sent after: "
                     f"{len(sent_after)}, outcomes {rig.outcomes(sent_after)}; {pending_left} transactions left pending; "
                     f"integrity_check {integrity}; restart ready in "
                     f"{ready_in:.1f} s; log `{stale_line.split('approval.')[-1]}`;"
                     f" devices before/after {before}/{after}; phone sees {len(seen_after)} stale "
                     f"requests; login after restart: {again.outcome}")
        assert accepted <= len(approved)
        assert all(r.outcome != "accept" for r in results if r.user == "bob")
        assert integrity == "ok"
        assert pending_left > 0 and f"count={pending_left}" in stale_line
        assert before == after and sorted(user for _, user in after) == ["alice", "bob"]
        assert seen_after == []
        assert again.outcome == "accept"
    finally:
        stop.set()
        serve.close()
