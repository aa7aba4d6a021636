"""``python -m bench.passcode_bruteforce``: a TOTP brute force against a real daemon.

    python -m bench.passcode_bruteforce                 # 100,000 guesses
    python -m bench.passcode_bruteforce -n 20000 -c 32

The attack of issue 14, finding 1: the attacker has alice's password and
sends ``alice-pw,NNNNNN`` for NNNNNN = 000000, 000001, ... as fast as the
daemon answers, each from a different Calling-Station-Id (so only the
per-user limits can stop it). Starts a private slapd (loglevel 0) and
``pushproxy serve`` (the benchmark's config: default passcode limits), with
one device for alice whose TOTP secret is known here, then prints how many
Accepts came back (the acceptance figure: 0), the decisions by reason, where
in the sequence the pause and the lock came, how often the RIGHT current
code was among the refused guesses, and the time taken.

Not part of the test suite (minutes, and both cores); loopback only;
everything it starts is stopped at the end. Figures: docs/security.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import tempfile
import time
from pathlib import Path

from bench.pushproxyd import Daemon, write_config
from bench.radload import RadiusClient
from pushproxy import passcodes
from pushproxy.approval.store import Device, SQLiteStore

SECRET = "bench-bruteforce-secret-0123"
TOTP_SECRET = passcodes.new_totp_secret()


def seed_alice(database: Path) -> None:
    """One enrolled device for alice, with a TOTP secret this script knows."""
    store = SQLiteStore(str(database))
    try:
        now = time.time()
        store.create_enrollment("alice", "bench-token", now, now + 60)
        store.redeem_enrollment("bench-token", now, Device(
            "benchdevice0001", "alice", "phone", "unused-key", None, now, None, None,
            totp_secret=TOTP_SECRET))
    finally:
        store.close()


async def attack(port: int, guesses: int, concurrency: int) -> tuple[list, int]:
    """Send the guesses; (results in send order, how many were the right code when sent)."""
    client = await RadiusClient("127.0.0.1", port, SECRET, sockets=4).open()
    right_sent = 0
    results: list = [None] * guesses
    next_index = 0

    async def worker():
        nonlocal next_index, right_sent
        while next_index < guesses:
            i = next_index
            next_index += 1
            code = f"{i % 10 ** 6:06d}"
            now = time.time()
            if code in {passcodes.totp(TOTP_SECRET, passcodes.totp_step(now) + d)
                        for d in (-1, 0, 1)}:
                right_sent += 1
            station = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
            results[i] = await client.login("alice", f"alice-pw,{code}", station=station,
                                            timeout=10)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        client.close()
    return results, right_sent


def main(argv=None) -> int:
    """Run the attack once and print the figures."""
    from tests.integration.slapd import Slapd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="guesses to send")
    parser.add_argument("-c", type=int, default=64, help="requests outstanding at once")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-bruteforce-") as tmp, \
            Slapd(loglevel="0", base_dir=tmp) as slapd:
        folder = Path(tmp) / "daemon"
        config = write_config(folder, slapd, SECRET)
        seed_alice(config["database"])
        daemon = Daemon(config, folder).start()
        try:
            started = time.monotonic()
            results, right_sent = asyncio.run(attack(config["radius"], args.n, args.c))
            elapsed = time.monotonic() - started
            cpu = daemon.cpu_seconds()
        finally:
            daemon.stop()
        outcomes = collections.Counter(r.outcome for r in results)
        events = [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()]
        reasons = collections.Counter(e["reason"] for e in events)

        def first(reason):
            return next((i + 1 for i, e in enumerate(events) if e["reason"] == reason), None)

        print(f"guesses sent:           {args.n} (concurrency {args.c})")
        print(f"time:                   {elapsed:.1f} s ({args.n / elapsed:.0f} guesses/s), "
              f"daemon CPU {cpu:.1f} s")
        print(f"replies:                {dict(outcomes)}")
        print(f"Access-Accept:          {outcomes.get('accept', 0)}")
        print(f"decisions by reason:    {dict(reasons)}")
        checked = reasons.get("bad_passcode", 0) + reasons.get("passcode_totp", 0)
        print(f"codes checked at all:   {checked} (the rest were refused unchecked)")
        # With many requests in flight the audit order is the order of answers,
        # not of arrival: the first pause refusal may be logged before the 5th failure.
        print(f"first pause refusal at decision {first('passcodes_paused_after_failures')}, "
              f"first lock refusal at decision {first('user_locked_after_passcode_guessing')}")
        print(f"right code among guesses: {right_sent} (all refused: the lock comes first)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
