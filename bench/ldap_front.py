"""``python -m bench.ldap_front``: what the LDAP front end costs per bind, against slapd directly.

    python -m bench.ldap_front            # 300 bind+search pairs per line
    python -m bench.ldap_front -n 1000

Starts a private slapd (loglevel 0) and ``pushproxy serve`` with an
``ldap_front:`` section (plain LDAP, ``no_device: allow`` so that a user's
bind runs the whole engine path without a phone), then times, on one
persistent connection each (ldap3, TCP_NODELAY), N simple binds each followed
by a base search of the bound entry:

- directly against slapd, as the service account and as a user;
- through pushproxy: a service bind (passed through), a user bind with the
  bind cache on (after the first: upstream bind, no engine) and off (upstream
  bind, entry read, engine with a device lookup in the store, every time).

Prints medians and 95th percentiles. Loopback only; everything it starts is
stopped at the end. Figures: docs/ldap-front.md.

`scenario` (``python -m bench --only ldap-front``, issue 16) runs the same
lines against the benchmark's slapd, all connections open at once and the
lines interleaved in blocks of 50 (so that background load falls on every
line alike), and reports the front end's overhead: p50 through pushproxy
minus p50 directly, for the user with the engine every time (issue 16's target:
<= 1 ms), with the bind cache, and for the service account.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import tempfile
import time
from pathlib import Path

import ldap3

from bench.pushproxyd import Daemon, free_port, write_config
from bench.stats import percentile, summary_ms

ALICE = ("uid=alice,ou=people,dc=example,dc=com", "alice-pw")


#: issue 16: the front end's overhead, p50 through pushproxy - p50 directly, in ms
TARGET_MS = 1.0


class BindLine:
    """One persistent connection (ldap3, TCP_NODELAY) binding as ``who`` then reading
    the bound entry, timed pair by pair."""

    def __init__(self, port: int, who: tuple[str, str]):
        self.who = who
        server = ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE)
        self.conn = ldap3.Connection(server, auto_bind=ldap3.AUTO_BIND_NONE,
                                     raise_exceptions=False)
        self.conn.open()
        self.conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.times: list[float] = []

    def run(self, n: int) -> list[float]:
        """``n`` more bind + base-search pairs; raises RuntimeError when one fails."""
        conn, who = self.conn, self.who
        for _ in range(n):
            started = time.perf_counter()
            conn.authentication, conn.user, conn.password = ldap3.SIMPLE, who[0], who[1]
            if not conn.bind():
                raise RuntimeError(f"bind failed: {conn.result}")
            conn.search(who[0], "(objectClass=*)", search_scope=ldap3.BASE,
                        attributes=["uid"])
            if not conn.entries:
                raise RuntimeError(f"search found nothing: {conn.result}")
            self.times.append(time.perf_counter() - started)
        return self.times

    def close(self) -> None:
        self.conn.unbind()


def timed_binds(port: int, who: tuple[str, str], n: int) -> list[float]:
    """Seconds for each of ``n`` bind + base-search pairs on one connection."""
    line = BindLine(port, who)
    try:
        return line.run(n)
    finally:
        line.close()


def line(label: str, times: list[float]) -> str:
    """One result line: median and p95 in milliseconds."""
    ordered = sorted(times)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"{label:52s} median {statistics.median(ordered) * 1e3:6.2f} ms   p95 {p95 * 1e3:6.2f} ms"


def front_daemon(folder: Path, slapd, cache_seconds: int) -> tuple[Daemon, int]:
    """``pushproxy serve`` with an LDAP front end on a free port."""
    config = write_config(folder, slapd, "bench-secret-0123456")
    port = free_port()
    text = config["config"].read_text() + (
        "ldap_front:\n"
        f'  listen: ["127.0.0.1:{port}"]\n'
        "  require_tls: false\n"
        "  no_device: allow\n"
        f'  service_dns: ["{slapd.service_dn}"]\n'
        f"  bind_cache_seconds: {cache_seconds}\n")
    config["config"].write_text(text)
    return Daemon(config, folder).start(), port


def scenario(bench, log=print) -> dict:
    """The lines of `main` against ``bench.slapd``, interleaved in blocks of 50,
    ``bench.sizes.overhead`` pairs each; overheads against `TARGET_MS`. A failed bind
    or a failmode/internal-error decision fails the run (``bench.failures``)."""
    slapd = bench.slapd
    service = (slapd.service_dn, slapd.service_password)
    user = (slapd.user_dn("alice"), "alice-pw")
    daemons = []
    lines: dict[str, BindLine] = {}
    out: dict = {"target": f"<= {TARGET_MS} ms"}
    try:
        for cache in (30, 0):
            bench.daemon_count += 1
            daemons.append(front_daemon(bench.workdir / f"pushproxy-{bench.daemon_count}",
                                        slapd, cache))
        (cached, cached_port), (_, engine_port) = daemons
        lines = {"direct_user": BindLine(slapd.port, user),
                 "direct_service": BindLine(slapd.port, service),
                 "front_service": BindLine(cached_port, service),
                 "front_user_cached": BindLine(cached_port, user),
                 "front_user_engine": BindLine(engine_port, user)}
        for line in lines.values():
            line.run(min(10, bench.sizes.warmup))  # warm; the first cached bind fills it
            line.times.clear()
        log(f"ldap-front: {bench.sizes.overhead} bind+search pairs per line, interleaved")
        for done in range(0, bench.sizes.overhead, 50):
            for line in lines.values():
                line.run(min(50, bench.sizes.overhead - done))
    except RuntimeError as exc:
        bench.failures.append(f"ldap-front: {exc}")
    finally:
        for line in lines.values():
            line.close()
        for daemon, _ in daemons:
            out.setdefault("failmode_decisions", {})
            result: dict = {}
            bench.verify(daemon, "ldap-front", result)
            out["failmode_decisions"].update(result["failmode_decisions"])
            daemon.stop()
    for name, line in lines.items():
        out[name] = summary_ms(line.times)

    def overhead(front, direct):
        a, b = percentile(lines[front].times, 50), percentile(lines[direct].times, 50)
        return None if a is None or b is None else round((a - b) * 1000, 3)

    if lines:
        out["overhead_p50_ms"] = overhead("front_user_engine", "direct_user")
        out["overhead_cached_p50_ms"] = overhead("front_user_cached", "direct_user")
        out["overhead_service_p50_ms"] = overhead("front_service", "direct_service")
    return out


def main(argv=None) -> int:
    """Run every line and print the table."""
    from tests.integration.slapd import Slapd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="bind+search pairs per line")
    args = parser.parse_args(argv)
    service = ("cn=svc-pushproxy,ou=services,dc=example,dc=com", "svc-secret")
    with tempfile.TemporaryDirectory(prefix="bench-ldap-front-") as tmp, \
            Slapd(loglevel="0", base_dir=tmp) as slapd:
        print(line("slapd directly, service account", timed_binds(slapd.port, service, args.n)))
        print(line("slapd directly, user", timed_binds(slapd.port, ALICE, args.n)))
        for cache in (30, 0):
            daemon, port = front_daemon(Path(tmp) / f"cache{cache}", slapd, cache)
            try:
                if cache:
                    print(line("pushproxy, service account (passed through)",
                               timed_binds(port, service, args.n)))
                    label = "pushproxy, user (bind cache hit)"
                else:
                    label = "pushproxy, user (engine every time, cache off)"
                print(line(label, timed_binds(port, ALICE, args.n)))
            finally:
                daemon.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
