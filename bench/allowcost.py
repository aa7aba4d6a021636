"""CPU per policy-allowed login in the daemon's own objects, in process.

``python -m bench.allowcost [--logins N] [--window W] [--users U] [--profile FILE]``
starts a private slapd (``loglevel 0``, U users in vpn-users, as the
benchmark's), writes the benchmark's allow-path config (`bench.pushproxyd.
write_config` with ``allow_all``), builds the daemon as ``serve`` does
(`pushproxy.wiring.build_daemon`) and feeds signed Access-Requests (the load
generator's encoding, `bench.radload.encode_request`) straight into its
`RadiusProtocol.datagramReceived`, W outstanding, on the real reactor: the
real client table, retransmit table, decode and Message-Authenticator check,
admission, engine, the reactor-native LDAP client against slapd (search as
the service account, bind as the user), policy, the audit file, the log
line (info level, text, into /dev/null) and the encoded Access-Accept. No
UDP socket: a reply is taken from the protocol's ``transport.write``, and
the next request goes in on the next reactor turn, as a read would.

Every reply must be an Access-Accept for its request with a valid Response
Authenticator, else the run fails. Printed (JSON): the process's CPU per
login over the timed logins (``time.process_time``, this process only: slapd
is not in it), and with ``--profile`` a cProfile of the timed logins (calls
per login are exact; time shares are cProfile's, which inflates small calls).

For an instruction count that does not depend on the machine's load, run it
under callgrind twice and subtract (start-up, slapd's seed and the warm-up
cancel out)::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m bench.allowcost --logins 20    # then --logins 220
    # (220 - 20) logins: (Ir(220) - Ir(20)) / 200 instructions per login

Compare two trees back to back on one machine with ``PYTHONPATH=tree``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import json
import logging
import os
import pstats
import shutil
import tempfile
import time
from pathlib import Path

SECRET = "bench-secret"
WARMUP = 40


class _Replies:
    """The protocol's transport: takes each reply and hands it to the driver."""

    def __init__(self, driver: "Driver"):
        self.driver = driver

    def write(self, data: bytes, addr) -> None:
        self.driver.replied(data, addr)


class Driver:
    """Feeds prepared Access-Requests into one RadiusProtocol, ``window`` outstanding."""

    def __init__(self, reactor, proto, requests: list[tuple[bytes, bytes]], window: int):
        self.reactor = reactor
        self.proto = proto
        self.requests = requests  # (datagram, its request authenticator)
        self.window = window
        self.next = 0
        self.outstanding: dict[tuple[int, int], bytes] = {}  # (port, id) -> authenticator
        self.answered = 0
        self.failures: list[str] = []
        self.feeding = None
        self.finished = None

    def start(self, finished) -> None:
        self.finished = finished
        self._feed()

    def _feed(self) -> None:
        self.feeding = None
        while self.next < len(self.requests) and len(self.outstanding) < self.window:
            data, authenticator = self.requests[self.next]
            port = 20000 + self.next // 256
            self.outstanding[(port, data[1])] = authenticator
            self.next += 1
            self.proto.datagramReceived(data, ("127.0.0.1", port))

    def replied(self, data: bytes, addr) -> None:
        authenticator = self.outstanding.pop((addr[1], data[1]), None)
        if authenticator is None:
            self.failures.append(f"a reply to no outstanding request: {addr} id {data[1]}")
        elif data[0] != 2:
            self.failures.append(f"code {data[0]} for id {data[1]}, not an Access-Accept")
        elif hashlib.md5(data[:4] + authenticator + data[20:] + SECRET.encode()).digest() \
                != data[4:20]:
            self.failures.append(f"a bad Response Authenticator for id {data[1]}")
        self.answered += 1
        if self.answered == len(self.requests):
            self.finished()
        elif self.feeding is None:
            self.feeding = self.reactor.callLater(0, self._feed)  # the next reactor turn


def _requests(users: list[tuple[str, str]], count: int, first: int) -> list[tuple[bytes, bytes]]:
    from bench import radload

    out = []
    for n in range(first, first + count):
        user, password = users[n % len(users)]
        authenticator = os.urandom(16)
        out.append((radload.encode_request(n % 256, authenticator, SECRET.encode(), user,
                                           password, f"198.51.100.{n % 250 + 1}", "bench"),
                    authenticator))
    return out


def run(logins: int, *, window: int = 32, users: int = 200, profile: str | None = None,
        workdir: Path | None = None) -> dict:
    """Start slapd, build the daemon, run ``WARMUP`` then ``logins`` logins; the figures."""
    from twisted.internet import defer, reactor

    from bench import pushproxyd
    from bench.scenarios import users as make_users
    from pushproxy import logs
    from pushproxy.config import load_config
    from pushproxy.wiring import build_daemon
    from tests.integration.slapd import Slapd

    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="allowcost-")) if own else workdir
    accounts = make_users("ac", users)
    slapd = Slapd(extra_users=accounts, extra_users_groups=["vpn-users"], loglevel="0",
                  base_dir=str(workdir))
    sink = open(os.devnull, "w")
    result: dict = {}
    try:
        slapd.start()
        config = pushproxyd.write_config(workdir / "daemon", slapd, SECRET, allow_all=True)
        logs.setup("info", sink)
        daemon = build_daemon(load_config(config["config"]), reactor)
        proto = daemon.protocol()
        warm = _requests(accounts, WARMUP, 0)
        timed = _requests(accounts, logins, WARMUP)

        def drive(requests) -> defer.Deferred:
            done = defer.Deferred()
            driver = Driver(reactor, proto, requests, window)
            proto.transport = _Replies(driver)
            driver.start(lambda: done.callback(driver))
            return done

        async def main() -> None:
            daemon.directory.start()
            first = await drive(warm)
            gc.collect()
            profiler = cProfile.Profile() if profile else None
            cpu = time.process_time()
            if profiler:
                profiler.enable()
            driver = await drive(timed)
            if profiler:
                profiler.disable()
            spent = time.process_time() - cpu
            failures = first.failures + driver.failures
            result.update(logins=logins, window=window, users=users,
                          cpu_ms_per_login=round(spent * 1000 / logins, 4),
                          failures=failures[:10], failed=len(failures),
                          accepted=driver.answered - len(driver.failures),
                          # warm-up and timed logins: each one audited once
                          audit_events=daemon.counters.get("audit_events"),
                          allowed=daemon.counters.get("decisions", client="bench",
                                                      outcome="accept", reason="policy_allow"))
            if profiler:
                profiler.dump_stats(profile)

        def stop(outcome):
            if hasattr(daemon.directory, "stop"):
                daemon.directory.stop()
            reactor.callLater(0, reactor.stop)
            return outcome

        reactor.callWhenRunning(lambda: defer.ensureDeferred(main()).addBoth(stop)
                                .addErrback(lambda f: result.update(error=f.getTraceback())))
        reactor.run()
    finally:
        logging.shutdown()
        sink.close()
        slapd.stop()
        if own:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=2000)
    parser.add_argument("--window", type=int, default=32, help="requests outstanding")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--profile", help="write a cProfile of the timed logins here")
    parser.add_argument("--top", type=int, default=0,
                        help="with --profile: print this many functions by own time")
    args = parser.parse_args()
    result = run(args.logins, window=args.window, users=args.users, profile=args.profile)
    print(json.dumps(result))
    if args.profile and args.top:
        pstats.Stats(args.profile).sort_stats("tottime").print_stats(args.top)
    if result.get("error") or result.get("failed") or result.get("accepted") != args.logins:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
