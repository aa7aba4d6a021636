"""``python -m bench.pendingmem N``: what one pending login holds, in process (issue 16).

N logins (distinct users, each with one device) go through the real RADIUS
front end, engine and approval service (SQLite in memory, store calls
inline, the directory answering at once) and stay pending. Printed: bytes
per pending login (tracemalloc), objects the collector tracks per pending
login, and how long one full collection takes with them held (median of 5).
A developer's microscope beside ``--only pending-curve``, which reads the
daemon's RSS: this one names the lines that allocate (``-v``).

``--threshold A,B,C`` runs the fill under ``gc.set_threshold(A, B, C)``
(``default`` keeps CPython's; ``daemon`` takes the daemon's own, see
`pushproxy.gcwatch.tune`) and prints the collections the fill triggered
(count, total and longest pause per generation): run it once each way to
compare what a threshold costs and saves (docs/benchmarks.md, issue 22).
``--freeze`` also runs the daemon's `pushproxy.gcwatch.Freezer`, ticked every
``--tick`` logins (default 400: about what a daemon takes in per second, its
tick's period), and prints what it froze: run with and without to see what
freezing the survivors of slow full collections saves.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import sys
import time
import tracemalloc

from pyrad import packet as rpacket
from twisted.internet import defer
from twisted.internet import reactor

from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.service import ApprovalService
from pushproxy.approval.store import Device, SQLiteStore
from pushproxy.audit import AuditLog
from pushproxy.config import FailMode, NoDeviceMode, PushConfig, RadiusClient
from pushproxy.decision import PrimaryResult, PrimaryStatus
from pushproxy.engine import Engine
from pushproxy.gcwatch import Freezer, GcWatch, tune
from pushproxy.metrics import Counters
from pushproxy.radius import codec
from pushproxy.radius.retransmit import RetransmitTable
from pushproxy.radius.server import ClientTable, RadiusProtocol

SECRET = b"a-long-shared-secret"


class _Transport:
    def write(self, data, addr):
        pass


class _Directory:
    def authenticate(self, username, password):
        return defer.succeed(PrimaryResult(
            PrimaryStatus.OK, dn=f"uid={username},ou=people,dc=example", server="ldap://x",
            groups=frozenset({"cn=vpn-users,dc=example"}), account=username))


def main(argv: list[str]) -> int:
    count = int(argv[0]) if argv and argv[0].isdigit() else 2000
    verbose = "-v" in argv
    threshold = argv[argv.index("--threshold") + 1] if "--threshold" in argv else "default"
    dictionary = codec.load_dictionary()
    counters = Counters()
    store = SQLiteStore(":memory:")
    now = reactor.seconds()  # the reactor is never run: its timers only get queued
    for i in range(count + 1):
        store.create_enrollment(f"u{i:06d}", f"h{i}", now, now + 900)
        store.redeem_enrollment(f"h{i}", now, Device(f"d{i}", f"u{i:06d}", "p", "K", None, now,
                                                     None, None))
    service = ApprovalService(store=AsyncStore.inline(store), reactor=reactor, counters=counters,
                              vapid_public_key="k")
    engine = Engine(clock=reactor, directory=_Directory(), provider=service,
                    push=PushConfig(timeout=600, failmode=FailMode.SECURE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(os.devnull, counters), counters=counters)
    proto = RadiusProtocol(
        clients=ClientTable((RadiusClient("vpn", ipaddress.ip_network("127.0.0.0/8"), SECRET,
                                          True, None, None),)),
        engine=engine, dictionary=dictionary, table=RetransmitTable(30), clock=reactor,
        counters=counters, default_no_device=NoDeviceMode.REJECT)
    proto.transport = _Transport()

    def packet(i: int) -> bytes:
        pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=i % 256, secret=SECRET,
                                 dict=dictionary)
        pkt["User-Name"] = f"u{i:06d}"
        pkt["User-Password"] = pkt.PwCrypt(f"pw{i}")
        pkt["Calling-Station-Id"] = f"10.0.{i // 250 % 250}.{i % 250}"
        pkt["NAS-Identifier"] = "nas1"
        pkt["NAS-Port"] = i
        pkt.add_message_authenticator()
        return pkt.RequestPacket()

    raws = [packet(i) for i in range(count + 1)]
    proto.datagramReceived(raws[count], ("127.0.0.1", 1))  # warm: imports, first objects
    gc.collect()
    gc.freeze()
    frozen_at_start = gc.get_freeze_count()
    if threshold == "daemon":
        tune()
    elif threshold != "default":
        gc.set_threshold(*(int(x) for x in threshold.split(",")))
    watch = GcWatch().install()
    freezer = Freezer(lambda: engine.pending, watch=watch) if "--freeze" in argv else None
    tick = int(argv[argv.index("--tick") + 1]) if "--tick" in argv else 400
    tracemalloc.start(1)
    before, objects = tracemalloc.take_snapshot(), len(gc.get_objects())
    started = time.perf_counter()
    for i in range(count):
        proto.datagramReceived(raws[i], ("127.0.0.1", 2000 + i))
        if freezer is not None and i % tick == tick - 1:
            freezer.tick()
    fill = time.perf_counter() - started
    watch.uninstall()
    frozen = gc.get_freeze_count() - frozen_at_start
    gc.collect()
    # Frozen objects are not in gc.get_objects(): count what --freeze moved there too.
    after = tracemalloc.take_snapshot()
    objects = len(gc.get_objects()) + gc.get_freeze_count() - frozen_at_start - objects
    tracemalloc.stop()
    held = engine.pending - 1
    diff = after.compare_to(before, "lineno")
    print(f"pending logins: {held}")
    print(f"bytes per pending login (tracemalloc): {sum(d.size_diff for d in diff) / count:,.0f}")
    print(f"tracked objects per pending login: {objects / count:.1f}")
    pauses = []
    for _ in range(5):
        started = time.perf_counter()
        gc.collect()
        pauses.append(time.perf_counter() - started)
    print(f"one full collection with them held: {sorted(pauses)[2] * 1000:.1f} ms"
          + (" (what the freezer left unfrozen)" if freezer is not None else ""))
    print(f"the fill under gc thresholds {gc.get_threshold()} ({threshold}): {fill:.2f} s "
          "(with tracemalloc)")
    if freezer is not None:
        print(f"  froze the survivors of {freezer.freezes} slow full collections "
              f"({frozen:,} objects frozen at the end)")
    for gen, name in enumerate(("young", "middle", "full")):
        print(f"  {name:6} collections {watch.count[gen]:5}, pauses total "
              f"{watch.total[gen] * 1000:8.1f} ms, longest {watch.longest[gen] * 1000:7.1f} ms")
    if verbose:
        for d in diff[:25]:
            print(f"{d.size_diff / count:8.0f} B {d.count_diff / count:6.1f} blocks  {d.traceback[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
