"""CPU per push login on the device side of the approval API, in process.

``python -m bench.apicost [--logins N] [--devices D] [--repeat R]`` drives the
real Site (`build_site`: ApiRequest, DeadlineChannel, the resources), the real
`ApprovalService` and a `SQLiteStore(":memory:")` (inline, no store thread)
with really signed requests, one keep-alive connection per device over a
`StringTransport` (no sockets). Timers go to the real reactor, which is never
run (a `task.Clock` sorts all its calls on every callLater: it would dominate);
nothing falls due within a run (the shortest armed deadline is 10 s).
Per login, as a phone and the engine do it:

1. ``poll``: the device's signed ``GET /v1/device/pending?wait=25`` arrives and
   parks (authentication, nonce, long-poll);
2. ``open``: the engine's ``request_approval`` opens the transaction, which
   answers the parked long-poll (the JSON answer is written);
3. ``answer``: the signed ``POST /v1/device/answer`` arrives; the login's
   Deferred fires with APPROVED and the device gets its 200.

Only the server's side is timed (``time.thread_time``): the phone's signing
and parsing happen between the timed sections.

``--store-thread``: the store runs on the daemon's store thread (`ThreadRunner`)
instead of inline, and each section lasts until every store call it made has
been delivered back (`_Turns` plays the reactor's part: the end-of-turn wake-up
and the deliveries from the store thread). The sections are then timed with
``time.process_time`` (both threads), and callgrind counts both: what the
hand-offs cost shows. Logging is set up as the
daemon's (info level, text lines) into /dev/null. The figures are CPU
microseconds per login, per section and total: the median over every login
of ``--repeat`` runs (a busy machine's bursts hit some logins, not the
median), and each run's mean; compare two trees back to back on one machine
(``PYTHONPATH=tree``).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import queue
import statistics
import time

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import address
from twisted.internet.testing import StringTransport

from pushproxy import logs
from pushproxy.connlimit import ConnectionBudget
from pushproxy.approval import crypto
from pushproxy.approval.api import build_site
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.runner import ThreadRunner
from pushproxy.approval.service import ApprovalService
from pushproxy.approval.store import SQLiteStore
from pushproxy.approval.webpush import VapidKeys
from pushproxy.decision import PushStatus
from pushproxy.metrics import Counters
from pushproxy.push import ApprovalRequest

WAIT = 25


class Phone:
    """One enrolled device on one keep-alive connection into the site."""

    def __init__(self, site, n: int, device_id: str, key):
        self.device_id, self.key = device_id, key
        self.channel = site.buildProtocol(address.IPv4Address("TCP", "127.0.0.1", 40000 + n))
        self.transport = StringTransport(
            peerAddress=address.IPv4Address("TCP", "127.0.0.1", 40000 + n),
            hostAddress=address.IPv4Address("TCP", "127.0.0.1", 8443))
        self.channel.makeConnection(self.transport)

    def request(self, method: str, target: str, body: bytes = b"") -> bytes:
        """The raw bytes of one signed request (untimed: the phone's work)."""
        headers = crypto.device_headers(self.key, self.device_id, method, target, body)
        head = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1:8443",
                "Accept: application/json", f"Content-Length: {len(body)}"]
        if body:
            head.append("Content-Type: application/json")
        head += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body

    def response(self) -> tuple[int, dict]:
        """Status and JSON body of the one answer written since the last call."""
        raw = self.transport.value()
        self.transport.clear()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), json.loads(body)


class _Turns:
    """The reactor as the store thread's runner sees it: deliveries from the store
    thread (`callFromThread`) and end-of-turn calls (``callLater(0, ...)``) are run
    by `settle`; every other timer goes to the real reactor, which never runs."""

    def __init__(self, clock, runner_of=lambda: None):
        self.clock = clock
        self.runner_of = runner_of
        self.calls: queue.SimpleQueue = queue.SimpleQueue()

    def seconds(self) -> float:
        return self.clock.seconds()

    def callLater(self, delay, f, *args, **kwargs):
        if delay == 0:
            self.calls.put((f, args))
            return None
        return self.clock.callLater(delay, f, *args, **kwargs)

    def callFromThread(self, f, *args):
        self.calls.put((f, args))

    def settle(self) -> None:
        """Run what comes back until the store thread has nothing left for us. Blocks
        without polling (so callgrind's counts do not depend on wall time): while a
        call is queued, running or finished but not delivered, a delivery or a
        wake-up is on its way into ``calls``."""
        runner = self.runner_of()
        while True:
            with runner._wake:
                idle = runner.depth() == 0 and not runner._done
            if idle and self.calls.empty():
                return
            f, args = self.calls.get()
            f(*args)


def _world(devices: int, store_thread: bool = False):
    from twisted.internet import reactor as clock

    if store_thread:
        turns = _Turns(clock)
        runner = ThreadRunner(turns, lambda: SQLiteStore(":memory:"))
        turns.runner_of = lambda: runner
        runner.start()
        turns.settle()
        store = runner.store
        service = ApprovalService(store=AsyncStore(runner), reactor=clock, counters=Counters(),
                                  vapid_public_key=VapidKeys.generate().public_key_b64url)
    else:
        turns = None
        store = SQLiteStore(":memory:")
        service = ApprovalService(store=AsyncStore.inline(store), reactor=clock,
                                  counters=Counters(),
                                  vapid_public_key=VapidKeys.generate().public_key_b64url)
    site = build_site(service, max_body=16384, reactor=clock, app=None)
    # as the daemon's listener (pushproxy.wiring): channels report to a budget
    site.budget = ConnectionBudget("approval", total=4096, per_source=0)
    key = ec.generate_private_key(ec.SECP256R1())
    public = crypto.public_key_text(key.public_key())
    phones = []
    for n in range(devices):
        token = f"token-{n}-{os.urandom(8).hex()}"
        got = []
        service.store.create_enrollment(f"user{n}", crypto.token_hash(token), clock.seconds(),
                                        clock.seconds() + 600).addBoth(got.append)
        if turns is not None:
            turns.settle()
        signature = crypto.sign(key, crypto.enroll_text(token, public, f"phone{n}"))
        service.enroll(token, public, f"phone{n}", None, signature).addBoth(got.append)
        if turns is not None:
            turns.settle()
        device = got[1]
        assert device.username == f"user{n}", device
        phones.append(Phone(site, n, device.id, key))
    return clock, service, phones, turns


def run(logins: int, devices: int, store_thread: bool = False) -> dict[str, list[float]]:
    """CPU microseconds of each login, per section and in total."""
    clock, service, phones, turns = _world(devices, store_thread)
    settle = turns.settle if turns is not None else (lambda: None)
    cpu = time.process_time if turns is not None else time.thread_time
    spent: dict[str, list[float]] = {"poll": [], "open": [], "answer": [], "total": []}
    gc.collect()
    for i in range(logins):
        phone = phones[i % devices]
        user = f"user{i % devices}"
        target = f"/v1/device/pending?wait={WAIT}"
        data = phone.request("GET", target)
        t0 = cpu()
        phone.channel.dataReceived(data)
        settle()
        t1 = cpu()
        assert not phone.transport.value(), "the long-poll answered before a login"
        now = clock.seconds()
        request = ApprovalRequest(txid=f"tx{i}", username=user, application="vpn",
                                  client_ip="198.51.100.7", nas="gw1", created=now,
                                  expires=now + 60)
        t2 = cpu()
        login = service.request_approval(request)
        settle()
        t3 = cpu()
        status, body = phone.response()
        assert status == 200 and len(body["requests"]) == 1, (status, body)
        entry = body["requests"][0]
        text = crypto.answer_text(entry["txid"], entry["nonce"], "approve", entry["username"],
                                  phone.device_id)
        answer = json.dumps({"txid": entry["txid"], "decision": "approve",
                             "signature": crypto.sign(phone.key, text)}).encode()
        data = phone.request("POST", "/v1/device/answer", answer)
        results = []
        login.addBoth(results.append)
        t4 = cpu()
        phone.channel.dataReceived(data)
        settle()
        t5 = cpu()
        status, body = phone.response()
        assert status == 200 and body == {"status": "recorded"}, (status, body)
        assert results and results[0].status is PushStatus.APPROVED, results
        spent["poll"].append((t1 - t0) * 1e6)
        spent["open"].append((t3 - t2) * 1e6)
        spent["answer"].append((t5 - t4) * 1e6)
        spent["total"].append((t1 - t0 + t3 - t2 + t5 - t4) * 1e6)
        if i % 64 == 63:
            clock.runUntilCurrent()  # as each reactor turn does: drops cancelled timers
    if turns is not None:
        settle()
        turns.runner_of().stop()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=3000)
    parser.add_argument("--devices", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--store-thread", action="store_true",
                        help="the store on its own thread, as in the daemon")
    args = parser.parse_args()
    with open(os.devnull, "w") as sink:
        logs.setup("info", sink)
        run(min(args.logins, 300), args.devices, args.store_thread)  # warm-up
        runs = [run(args.logins, args.devices, args.store_thread) for _ in range(args.repeat)]
    logging.shutdown()
    mean_of_runs = [statistics.fmean(r["total"]) for r in runs]
    every = {k: [x for r in runs for x in r[k]] for k in runs[0]}
    print(json.dumps({
        "logins": args.logins, "devices": args.devices, "repeat": args.repeat,
        "store_thread": args.store_thread,
        # each login's CPU, median over every login of every run: robust to the
        # bursts of a busy machine (and blind to rare costs, a GC pass)
        "median_us": {k: round(statistics.median(v), 1) for k, v in every.items()},
        # mean per login, by run: what a busy machine adds shows here
        "mean_us_by_run": [round(m, 1) for m in mean_of_runs],
    }))


if __name__ == "__main__":
    main()
