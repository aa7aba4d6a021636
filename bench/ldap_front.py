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

ALICE = ("uid=alice,ou=people,dc=example,dc=com", "alice-pw")


def timed_binds(port: int, who: tuple[str, str], n: int) -> list[float]:
    """Seconds for each of ``n`` bind + base-search pairs on one connection."""
    server = ldap3.Server("127.0.0.1", port=port, get_info=ldap3.NONE)
    conn = ldap3.Connection(server, auto_bind=ldap3.AUTO_BIND_NONE, raise_exceptions=False)
    conn.open()
    conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(n):
        started = time.perf_counter()
        conn.authentication, conn.user, conn.password = ldap3.SIMPLE, who[0], who[1]
        if not conn.bind():
            raise RuntimeError(f"bind failed: {conn.result}")
        conn.search(who[0], "(objectClass=*)", search_scope=ldap3.BASE, attributes=["uid"])
        if not conn.entries:
            raise RuntimeError(f"search found nothing: {conn.result}")
        times.append(time.perf_counter() - started)
    conn.unbind()
    return times


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
