"""RadSec beside UDP: the same asyncio load generator over UDP and over TLS, one daemon.

    python -m bench.radsec [--seconds 5] [--concurrency 64] [--rounds 2]

Starts `pushproxy serve` on loopback with a UDP listener and a RadSec listener
(a throwaway PKI from tests/radsec_pki.py), then alternates closed-loop runs of
Status-Server requests (the RADIUS path without the directory or a push: codec,
retransmit table, reply signing, and the transport) over UDP and over TLS
connections (``--connections``, requests pipelined on each). Status-Server
isolates what RadSec adds: TLS records, framing, the per-connection bookkeeping.
Prints requests/s per round and the TLS/UDP ratio of the medians; figures from a
shared machine are only comparable within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

UDP_SECRET = b"bench-udp-secret-0123456789"


def status_server(ident: int, secret: bytes) -> bytes:
    """A signed Status-Server (Message-Authenticator over the packet, RFC 5997)."""
    authenticator = os.urandom(16)
    header = struct.pack("!BBH", 12, ident, 20 + 18) + authenticator
    unsigned = header + b"\x50\x12" + bytes(16)
    return unsigned[:-16] + hmac.new(secret, unsigned, hashlib.md5).digest()


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self):
        self.waiting: dict[int, asyncio.Future] = {}

    def datagram_received(self, data, addr):
        future = self.waiting.pop(data[1], None)
        if future is not None and not future.done():
            future.set_result(data[0])


async def udp_run(port: int, seconds: float, concurrency: int) -> float:
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        _Udp, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", port))
    done, end, free = 0, time.monotonic() + seconds, list(range(256))

    async def worker():
        nonlocal done
        while time.monotonic() < end:
            ident = free.pop()
            future = loop.create_future()
            proto.waiting[ident] = future
            transport.sendto(status_server(ident, UDP_SECRET))
            try:
                if await asyncio.wait_for(future, 5) == 2:
                    done += 1
            finally:
                proto.waiting.pop(ident, None)
                free.insert(0, ident)

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, 200))))
    transport.close()
    return done / (time.monotonic() - start)


async def tls_run(port: int, ctx: ssl.SSLContext, seconds: float, concurrency: int,
                  connections: int) -> float:
    done, end = 0, time.monotonic() + seconds
    start = time.monotonic()

    async def connection(share: int):
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname="pushproxy.test")
        waiting: dict[int, asyncio.Future] = {}
        free = list(range(256))

        async def read():
            while True:
                head = await reader.readexactly(4)
                body = await reader.readexactly(struct.unpack("!H", head[2:4])[0] - 4)
                future = waiting.pop(head[1], None)
                if future is not None and not future.done():
                    future.set_result(head[0])

        reading = asyncio.ensure_future(read())

        async def worker():
            nonlocal done
            while time.monotonic() < end:
                ident = free.pop()
                future = asyncio.get_running_loop().create_future()
                waiting[ident] = future
                writer.write(status_server(ident, b"radsec"))
                try:
                    if await asyncio.wait_for(future, 5) == 2:
                        done += 1
                finally:
                    waiting.pop(ident, None)
                    free.insert(0, ident)

        await asyncio.gather(*(worker() for _ in range(share)))
        reading.cancel()
        writer.close()

    share = max(1, concurrency // connections)
    await asyncio.gather(*(connection(share) for _ in range(connections)))
    return done / (time.monotonic() - start)


def main(argv=None) -> int:
    """Run the comparison; prints JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    from tests.radsec_pki import TestCA

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        ca = TestCA(tmp)
        server = ca.issue("server", cn="pushproxy.test", dns=["pushproxy.test"], server=True)
        client = ca.issue("client", cn="bench", dns=["bench.test"])
        (tmp / "udp.secret").write_text(UDP_SECRET.decode() + "\n")
        (tmp / "udp.secret").chmod(0o600)
        udp_port, tls_port = free_port(socket.SOCK_DGRAM), free_port()
        (tmp / "config.yaml").write_text(textwrap.dedent(f"""\
            radius:
              listen: ["127.0.0.1:{udp_port}"]
              clients: [{{name: bench, address: 127.0.0.1, secret_file: udp.secret}}]
              radsec:
                listen: ["127.0.0.1:{tls_port}"]
                cert_file: {server.cert}
                key_file: {server.key}
                ca_file: {ca.path}
                clients: [{{name: bench-tls, match: {{dns: bench.test}}}}]
            ldap:
              servers: ["ldap://127.0.0.1:1"]
              bind_template: "uid={{username}},dc=x"
              user_base: "dc=x"
            approval:
              listen: "127.0.0.1:{free_port()}"
              public_url: "http://127.0.0.1"
              database: ":memory:"
            log: {{level: warning}}
            """))
        proc = subprocess.Popen([sys.executable, "-m", "pushproxy.cli", "serve", "--config",
                                 str(tmp / "config.yaml")], cwd=root,
                                env=dict(os.environ, PYTHONPATH=str(root)),
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", tls_port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(ca.path)
            ctx.load_cert_chain(client.cert, client.key)
            udp, tls = [], []
            for _ in range(args.rounds):
                udp.append(asyncio.run(udp_run(udp_port, args.seconds, args.concurrency)))
                tls.append(asyncio.run(tls_run(tls_port, ctx, args.seconds, args.concurrency,
                                               args.connections)))
        finally:
            proc.terminate()
            proc.wait(20)
    result = {"udp_per_s": [round(x) for x in udp], "radsec_per_s": [round(x) for x in tls],
              "ratio_radsec_to_udp": round(statistics.median(tls) / statistics.median(udp), 2),
              "load_average": os.getloadavg()[0], "seconds": args.seconds,
              "concurrency": args.concurrency, "connections": args.connections}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
