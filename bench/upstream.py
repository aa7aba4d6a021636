"""``python -m bench.upstream``: what ``primary: radius`` adds to a login (issue 10).

    python -m bench.upstream                     # 3 runs, sequential and 32 in parallel
    python -m bench.upstream --logins 3000 --parallel 32 --runs 5
    python -m bench --only upstream              # issue 16: throughput beside the direct path

`scenario` (``python -m bench --only upstream``) measures throughput the way
the throughput scenario does: the asyncio generator, the same outstanding
requests, PAP, every throughput user (in a users file of a private FreeRADIUS)
sent directly to FreeRADIUS and through ``pushproxy serve`` with that
FreeRADIUS as the client's upstream (a policy rule ``allow``: no push); the
ratio of the two rates against issue 16's target (>= 0.5), and the CPU budget
per login of the daemon, FreeRADIUS and the generator.

A private FreeRADIUS (users file, PAP and MS-CHAPv1; the test suite's fixture)
answers on loopback. radclient sends the same logins to it directly and
through ``pushproxy serve`` (a ``primary: radius`` client, a policy rule
``allow`` so that no push is involved), and the time per login is printed
for both. Everything runs on 127.0.0.1 in a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from bench import budget as budget_mod
from bench import pushproxyd, radload
from bench.scenarios import BenchFailure
from bench.stats import summary_ms
from tests.integration.freeradius_upstream import UpstreamRadius
from tests.integration.freeradius_upstream import available as upstream_available
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


#: issue 16: logins/s through pushproxy (primary: radius) / FreeRADIUS directly
TARGET = 0.5


class LoadedUpstream(UpstreamRadius):
    """The upstream FreeRADIUS with threads and request limits for a load generator."""

    def server_settings(self) -> dict[str, str]:
        return {"max_requests": "65536", "start_servers": "16", "max_servers": "32",
                "min_spare_servers": "16", "max_spare_servers": "32"}


def _users_file(logins: list[tuple[str, str]]) -> str:
    return "".join(f'{user} Cleartext-Password := "{password}"\n' for user, password in logins)


def _daemon(bench, folder: Path, upstream: str):
    """pushproxy with the bench client as ``primary: radius`` toward ``upstream``."""
    for _ in range(3):
        config = pushproxyd.write_config(folder, bench.slapd, SECRET, allow_all=True)
        (folder / "upstream.secret").write_text(UPSTREAM_SECRET + "\n")
        (folder / "upstream.secret").chmod(0o600)
        text = config["config"].read_text()
        client = "      secret_file: radius.secret\n"
        text = text.replace(client, client + textwrap.indent(textwrap.dedent(f"""\
            primary: radius
            upstream:
              - address: "{upstream}"
                secret_file: upstream.secret
                require_message_authenticator: false  # FreeRADIUS 3.2.1 signs no Accept
            """), "      "), 1)
        config["config"].write_text(text)
        try:
            return pushproxyd.Daemon(config, folder).start()
        except pushproxyd.PortTaken:
            continue
    raise RuntimeError("pushproxy: no free ports after 3 attempts")


def _timed(port: int, secret: str, logins, concurrency: int, processes: dict) -> dict:
    async def go():
        client = await radload.RadiusClient("127.0.0.1", port, secret, sockets=4).open()
        try:
            return await radload.closed_loop(client, list(logins), concurrency, 30.0)
        finally:
            client.close()

    budget = budget_mod.Budget(processes)
    started = time.monotonic()
    results = asyncio.run(go())
    elapsed = time.monotonic() - started
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r.outcome or "lost"] = outcomes.get(r.outcome or "lost", 0) + 1
    return {"logins": len(results), "elapsed_s": round(elapsed, 3),
            "logins_per_s": round(outcomes.get("accept", 0) / elapsed, 1),
            "outcomes": outcomes,
            "latency": summary_ms([r.rtt for r in results if r.rtt is not None]),
            "loadavg_before": os.getloadavg()[0],
            "cpu_budget": budget.finish(len(results), elapsed)}


def scenario(bench, log=print) -> dict:
    """FreeRADIUS directly, then through pushproxy (primary: radius, no push), in one run;
    the ratio of the rates against `TARGET`. A failmode/internal-error decision or a
    login answered other than Accept fails the run (``bench.failures``)."""
    if not upstream_available():
        return {"skipped": "FreeRADIUS not installed"}
    folder = bench.workdir / "upstream"
    (folder / "freeradius").mkdir(parents=True, exist_ok=True)
    upstream = LoadedUpstream(folder / "freeradius", UPSTREAM_SECRET, _users_file(bench.tp))
    upstream.start()
    s = bench.sizes
    out: dict = {"target": f">= {TARGET}"}
    try:
        log("upstream: FreeRADIUS directly")
        out["direct"] = _timed(upstream.port, UPSTREAM_SECRET, bench.tp * s.freeradius_repeat,
                               s.concurrency, {"freeradius": [upstream.pid]})
        bench.daemon_count += 1
        daemon = _daemon(bench, bench.workdir / f"pushproxy-{bench.daemon_count}",
                         upstream.address)
        try:
            # warm: imports done, upstream sockets open (the users file holds only these users)
            warm = _timed(daemon.radius_port, SECRET, bench.tp[-s.warmup:], 8, {})
            if warm["outcomes"] != {"accept": len(bench.tp[-s.warmup:])}:
                raise BenchFailure(f"upstream: the warm-up logins got {warm['outcomes']}, "
                                   f"not Accept (see {daemon.log_path})")
            log("upstream: through pushproxy (primary: radius, policy allow)")
            out["via_pushproxy"] = _timed(daemon.radius_port, SECRET, bench.tp, s.concurrency,
                                          {"daemon": [daemon.pid],
                                           "freeradius": [upstream.pid]})
            bench.verify(daemon, "upstream", out["via_pushproxy"])
        finally:
            daemon.stop()
    finally:
        upstream.stop()
    for side in ("direct", "via_pushproxy"):
        wrong = {k: v for k, v in out[side]["outcomes"].items() if k not in ("accept", "lost")}
        if wrong:
            bench.failures.append(f"upstream ({side}): logins answered {wrong}, not Accept")
    direct, via = out["direct"]["logins_per_s"], out["via_pushproxy"]["logins_per_s"]
    out["ratio"] = round(via / direct, 4) if direct else None
    return out


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
