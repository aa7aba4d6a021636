"""`daemon.workers: 2`: real `pushproxy serve` supervisor + worker processes, slapd, UDP clients.

The workers share the RADIUS port with SO_REUSEPORT: logins from many source
ports are answered by both; a retransmit from the same source port reaches the
worker that answered it and gets the cached reply; a worker killed with SIGKILL
is restarted and logins keep working; SIGHUP reloads every worker; SIGTERM stops
everything with exit code 0; sd_notify READY=1 comes once both workers are up.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest
import requests
from pyrad import packet as rpacket

from pushproxy.radius import codec
from tests.integration.harness import SECRET, ServeProcess
from tests.integration.test_operations import served_config

DICT = codec.load_dictionary()
WORKER = re.compile(r"login\.decision .*worker=(\d)")

POLICY = """\
policy:
  rules:
    - name: lan
      networks: [10.0.0.0/8]
      action: allow
"""


def request(user: str, password: str, ident: int, station: str | None = None) -> bytes:
    """A signed Access-Request (Message-Authenticator included)."""
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=ident, secret=SECRET.encode(),
                             dict=DICT)
    pkt["User-Name"] = user
    pkt["User-Password"] = pkt.PwCrypt(password)
    if station:
        pkt["Calling-Station-Id"] = station
    pkt.add_message_authenticator()
    return pkt.RequestPacket()


def exchange(sock: socket.socket, data: bytes, port: int, wait: float = 10.0) -> bytes | None:
    """Send ``data`` from ``sock``; the reply or None."""
    sock.settimeout(wait)
    sock.sendto(data, ("127.0.0.1", port))
    try:
        return sock.recv(4096)
    except socket.timeout:
        return None


def client() -> socket.socket:
    """A UDP client socket on its own source port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def login(port: int, user="alice", password="alice-pw", station="10.1.2.3",
          ident=1) -> int | None:
    """One login from a fresh source port; the reply's code or None."""
    with client() as sock:
        reply = exchange(sock, request(user, password, ident, station), port)
    return None if reply is None else reply[0]


def decisions(serve: ServeProcess, at_least: int = 0) -> list[int]:
    """The worker index of every login.decision line so far (once ``at_least`` are
    logged: a worker writes the line before it answers, but the test's reader of
    the log may not have taken it from the pipe yet)."""
    if at_least:
        serve.wait_count(WORKER.pattern, at_least, 30)
    return [int(m.group(1)) for m in map(WORKER.search, serve.output().splitlines()) if m]


@pytest.fixture
def workers(slapd, tmp_path):
    path, radius_port, http_port = served_config(tmp_path, slapd, metrics=True)
    text = path.read_text().replace("daemon:\n", "daemon:\n  workers: 2\n") + POLICY
    path.write_text(text)
    metrics_port = int(re.search(r'metrics_listen: "127.0.0.1:(\d+)"', text).group(1))
    sock_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(sock_path)
    notify.settimeout(30)
    serve = ServeProcess(path, env={"NOTIFY_SOCKET": sock_path})
    try:
        yield serve, radius_port, http_port, metrics_port, notify
    finally:
        serve.close()
        notify.close()


def messages(notify: socket.socket, until: str, limit: float = 30.0) -> list[str]:
    """sd_notify messages received until one starts with ``until``."""
    seen, end = [], time.monotonic() + limit
    while time.monotonic() < end:
        seen.append(notify.recv(4096).decode())
        if seen[-1].startswith(until):
            return seen
    raise AssertionError(f"no {until!r} in {seen}")


def drain(notify: socket.socket) -> list[str]:
    """The sd_notify messages already waiting."""
    seen = []
    notify.setblocking(False)
    try:
        while True:
            seen.append(notify.recv(4096).decode())
    except BlockingIOError:
        return seen
    finally:
        notify.settimeout(30)


def test_both_workers_answer_logins_from_many_source_ports_and_ready_waits_for_both(workers):
    serve, port, http_port, metrics_port, notify = workers
    ready = messages(notify, "READY=1")
    assert "2 workers" in ready[-1]
    # READY=1 only after both workers said so (and from the supervisor, not a worker)
    assert len(serve.wait_count(r"daemon\.ready .*worker=\d", 2)) == 2
    serve.wait_for("workers.ready")
    codes = [login(port, ident=i % 256) for i in range(40)]  # allowed by policy: no push
    assert codes == [rpacket.AccessAccept] * 40, serve.output()
    # alice has no device: a login outside the allowed network is rejected
    assert login(port, station="192.0.2.9") == rpacket.AccessReject
    seen = decisions(serve, at_least=41)
    assert len(seen) == 41 and set(seen) == {0, 1}, seen  # 40 source ports: both workers
    # the approval port is shared too, each worker serves its own /metrics on port + I
    assert requests.get(f"http://127.0.0.1:{http_port}/v1/info", timeout=5).ok
    for index in (0, 1):
        body = requests.get(f"http://127.0.0.1:{metrics_port + index}/metrics", timeout=5).text
        assert "pushproxy_" in body
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(30) == 0
    assert "workers.stopped code=0" in serve.output()
    assert "Traceback" not in serve.output()


def test_a_retransmit_from_the_same_source_port_gets_the_cached_reply_from_the_same_worker(
        workers):
    serve, port, *_ = workers
    serve.wait_for("workers.ready", 30)
    sockets = [client() for _ in range(12)]
    try:
        data = [request("alice", "alice-pw", 7, "10.9.9.9") for _ in sockets]
        first = [exchange(s, d, port) for s, d in zip(sockets, data)]
        assert all(reply is not None and reply[0] == rpacket.AccessAccept for reply in first)
        before = decisions(serve, at_least=len(sockets))
        again = [exchange(s, d, port) for s, d in zip(sockets, data)]
    finally:
        for s in sockets:
            s.close()
    assert again == first  # byte for byte: the reply cache of the worker that answered
    assert decisions(serve) == before  # no worker decided any retransmit again
    assert set(before) == {0, 1}, before  # and both workers held some of them
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(30) == 0


def test_a_killed_worker_is_restarted_and_sighup_reloads_every_worker(workers):
    serve, port, http_port, metrics_port, notify = workers
    messages(notify, "READY=1")
    pids = {int(w): int(p) for w, p in re.findall(r"worker\.started worker=(\d+) pid=(\d+)",
                                                  serve.output())}
    assert set(pids) == {0, 1}
    mark = len(serve.lines)
    os.kill(pids[1], signal.SIGKILL)
    serve.wait_for("worker.died worker=1", 10, start=mark)
    assert "signal=9" in serve.wait_for("worker.died", 1, start=mark)
    serve.wait_for("worker.started worker=1", 10, start=mark)
    serve.wait_for("daemon.ready", 30, start=mark)
    # the restarted worker serves again: logins from many ports reach both workers
    before = len(decisions(serve))
    codes = [login(port, ident=i) for i in range(30)]
    assert codes == [rpacket.AccessAccept] * 30, serve.output()
    assert set(decisions(serve)[before:]) == {0, 1}

    # SIGHUP: the supervisor forwards it; every worker reloads (the new policy applies)
    path = serve.proc.args[serve.proc.args.index("--config") + 1]
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("10.0.0.0/8", "172.16.0.0/12"))
    mark = len(serve.lines)
    assert any(m.startswith("STATUS=worker 1 died") for m in drain(notify))
    serve.proc.send_signal(signal.SIGHUP)
    assert messages(notify, "READY=1")[0].startswith("RELOADING=1")
    for index in (0, 1):
        serve.wait_for(f"reload.applied config={path} worker={index}", 10, start=mark)
    codes = [login(port, ident=i) for i in range(20)]  # 10.1.2.3 is no longer allowed
    assert codes == [rpacket.AccessReject] * 20, serve.output()
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(30) == 0
    assert "Traceback" not in serve.output()


def test_workers_that_die_at_start_make_the_supervisor_exit_non_zero(slapd, tmp_path):
    path, radius_port, _ = served_config(tmp_path, slapd)
    text = path.read_text().replace("daemon:\n", "daemon:\n  workers: 2\n")
    path.write_text(text)
    # Another account's socket on the RADIUS port, without SO_REUSEPORT: no worker can bind.
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", radius_port))
    serve = ServeProcess(path)
    try:
        # Five starts of a worker (an interpreter and its imports each, 10 s or more on
        # a loaded machine) and 7.5 s of backoff before the supervisor gives up.
        assert serve.proc.wait(240) == 1
        out = serve.output()
        assert "workers.giving_up" in out and "worker.died" in out
        assert "Traceback" not in out
    finally:
        serve.close()
        blocker.close()


def test_pushes_are_approved_whichever_worker_holds_the_login_or_the_device(slapd, tmp_path):
    """The CLI authenticator approves logins while the long-polls, the answers and the
    RADIUS requests land on either worker (needs the store's cross-process wake-ups)."""
    pytest.importorskip("pushproxy.approval.notify")
    import subprocess
    import sys

    from pushproxy.approval import authenticator as auth
    from tests.integration.test_store_migrate_serve import approve_login

    path, radius_port, http_port = served_config(tmp_path, slapd, push="timeout: 20")
    path.write_text(path.read_text().replace("daemon:\n", "daemon:\n  workers: 2\n"))
    serve = ServeProcess(path)
    try:
        serve.wait_for("workers.ready", 30)
        enroll = subprocess.run([sys.executable, "-m", "pushproxy.cli", "enroll", "alice",
                                 "--no-qr", "--config", str(path)], capture_output=True,
                                text=True, timeout=60)
        assert enroll.returncode == 0, enroll.stderr
        state_dir = str(tmp_path / "alice-device")
        auth.enroll(enroll.stdout.strip().splitlines()[-1], state_dir, "cli-phone")
        # Five: push.limits.max_pushes, which the workers now count together.
        for _ in range(5):
            assert approve_login(serve, radius_port, state_dir) == "Access-Accept"
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(30) == 0
        assert "Traceback" not in serve.output()
    finally:
        serve.close()


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: it holds no socket)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return any(line.startswith("State:") and "Z" in line for line in f)
    except FileNotFoundError:
        return True


def test_workers_stop_when_the_supervisor_is_killed(workers):
    serve, port, *_ = workers
    serve.wait_for("workers.ready", 30)
    pids = [int(p) for p in re.findall(r"worker\.started worker=\d+ pid=(\d+)", serve.output())]
    assert len(pids) == 2
    serve.proc.kill()  # SIGKILL: no chance to stop its workers itself
    serve.proc.wait(10)
    end = time.monotonic() + 20
    while not all(gone(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.2)
    assert all(gone(pid) for pid in pids), serve.output()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
        plain.bind(("127.0.0.1", port))  # nobody holds the RADIUS port any more
