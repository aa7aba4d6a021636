"""``python -m bench.upstream``: what ``primary: radius`` adds to a login (issue 10).

    python -m bench.upstream                     # 3 runs, sequential and 32 in parallel
    python -m bench.upstream --logins 3000 --parallel 32 --runs 5

A private FreeRADIUS (users file, PAP and MS-CHAPv1; the test suite's fixture)
answers on loopback. radclient sends the same logins to it directly and
through ``pushproxy serve`` (a ``primary: radius`` client, a policy rule
``allow`` so that no push is involved), and the time per login is printed
for both. Everything runs on 127.0.0.1 in a temporary folder.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from tests.integration.freeradius_upstream import UpstreamRadius
from tests.integration.slapd import free_port

SECRET, UPSTREAM_SECRET = "bench-downstream-secret", "bench-upstream-secret"
REQUESTS = {
    "pap": 'User-Name = "alice"\nUser-Password = "alice-up"\nMessage-Authenticator = 0x00\n',
    "mschap": 'User-Name = "alice"\nMS-CHAP-Password = "alice-up"\n'
              'Message-Authenticator = 0x00\n',
}


def config(folder: Path, port: int, upstream: str) -> Path:
    """A pushproxy config with one primary: radius client and no push."""
    (folder / "radius.secret").write_text(SECRET + "\n")
    (folder / "upstream.secret").write_text(UPSTREAM_SECRET + "\n")
    path = folder / "config.yaml"
    path.write_text(textwrap.dedent(f"""\
        radius:
          listen: ["127.0.0.1:{port}"]
          clients:
            - name: vpn
              address: 127.0.0.1
              secret_file: radius.secret
              primary: radius
              upstream:
                - address: "{upstream}"
                  secret_file: upstream.secret
                  require_message_authenticator: false  # FreeRADIUS 3.2.1 signs no Accept
        ldap:
          servers: ["ldap://127.0.0.1:9"]
          bind_template: "uid={{username}},dc=bench"
          user_base: "dc=bench"
        approval:
          listen: "127.0.0.1:0"
          public_url: "http://127.0.0.1"
          database: ":memory:"
        audit:
          path: audit.jsonl
        policy:
          rules:
            - name: no-push
              clients: [vpn]
              action: allow
        log:
          level: warning
        """))
    return path


def per_login_ms(address: str, secret: str, kind: str, logins: int, parallel: int) -> float:
    """Milliseconds per login for ``logins`` requests, ``parallel`` in flight; all accepted."""
    started = time.monotonic()
    out = subprocess.run(["radclient", "-q", "-s", "-p", str(parallel), "-r", "1", "-t", "5",
                          "-f", "/dev/stdin", address, "auth", secret],
                         input=(REQUESTS[kind] + "\n") * logins, text=True, capture_output=True,
                         timeout=600)
    elapsed = time.monotonic() - started
    accepted = [line for line in out.stdout.splitlines() if "Accepted" in line]
    if not accepted or int(accepted[0].split(":")[1]) != logins:
        raise RuntimeError(f"not every login was accepted:\n{out.stdout}{out.stderr}")
    return elapsed / logins * 1000


def wait_udp(port: int, deadline: float = 20.0) -> None:
    """Until something holds UDP 127.0.0.1:port."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return
        time.sleep(0.1)
    raise RuntimeError("pushproxy did not start")


def main(argv=None) -> int:
    """Run the comparison and print one line per kind and parallelism."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=32)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pushproxy-upstream-bench-") as tmp:
        folder = Path(tmp)
        upstream = UpstreamRadius(folder / "freeradius", UPSTREAM_SECRET,
                                  'alice Cleartext-Password := "alice-up"\n\tClass = "c"\n')
        (folder / "freeradius").mkdir()
        upstream.start()
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "pushproxy.cli", "serve", "--config",
                                 str(config(folder, port, upstream.address))],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=dict(os.environ, PYTHONPATH=os.getcwd()))
        try:
            wait_udp(port)
            for parallel in (1, args.parallel):
                logins = args.logins if parallel > 1 else min(args.logins, 500)
                for kind in REQUESTS:
                    direct, proxied = [], []
                    for _ in range(args.runs):
                        direct.append(per_login_ms(upstream.address, UPSTREAM_SECRET, kind,
                                                   logins, parallel))
                        proxied.append(per_login_ms(f"127.0.0.1:{port}", SECRET, kind, logins,
                                                    parallel))
                    d, p = statistics.median(direct), statistics.median(proxied)
                    print(f"{kind:6} parallel {parallel:3}: direct {d:.3f} ms/login "
                          f"({1000 / d:,.0f}/s), via pushproxy {p:.3f} ms/login "
                          f"({1000 / p:,.0f}/s), added {p - d:.3f} ms (median of {args.runs})")
        finally:
            proc.terminate()
            proc.wait(10)
            upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
