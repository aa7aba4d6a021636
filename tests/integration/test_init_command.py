"""`pushproxy init` from flags, then `serve`, then a login approved on a phone (issue 17).

A fresh admin without editing a file by hand: init writes the config and the
secret files, serve starts on it against the test slapd, `enroll` makes a link,
the CLI authenticator redeems it and approves a real radclient login.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import stat
import subprocess
import sys
import time

from tests.integration.harness import ServeProcess
from tests.integration.radclient import radclient_sync


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Seconds a loaded machine may need: on a 2-core machine at a load average of 12,
# each CLI process took 10-15 s (interpreter, imports, key generation) and serve
# 15 s to be ready. Only a failure waits this long.
SLOW = 120
PUSH_TIMEOUT = 60  # what init writes: the login is answered (Accept or Reject) by then


def cli(*args, env=None, timeout=SLOW) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env=dict(os.environ, **(env or {})))


def init_args(folder, slapd, radius_port, http_port):
    return ["init", "--dir", str(folder), "--ldap-url", slapd.url,
            "--base-dn", slapd.people_dn, "--bind-dn", slapd.service_dn,
            "--bind-password-env", "SVC_PW", "--gateway", "127.0.0.1",
            "--public-url", f"http://127.0.0.1:{http_port}",
            "--radius-listen", f"127.0.0.1:{radius_port}",
            "--approval-listen", f"127.0.0.1:{http_port}",
            "--database", str(folder / "pushproxy.db"),
            "--audit-path", str(folder / "audit.jsonl")]


def test_init_then_serve_then_a_login_approved_by_the_cli_authenticator(slapd, tmp_path):
    folder = tmp_path / "etc"
    radius_port, http_port = free_port(socket.SOCK_DGRAM), free_port()
    made = cli(*init_args(folder, slapd, radius_port, http_port),
               env={"SVC_PW": slapd.service_password})
    assert made.returncode == 0, made.stdout + made.stderr
    config = folder / "config.yaml"
    for name in ("vpn-gw-1.secret", "ldap-bind.secret"):
        assert stat.S_IMODE((folder / "secrets" / name).stat().st_mode) == 0o600
    assert slapd.service_password not in config.read_text()
    steps = made.stdout[made.stdout.index("Next:"):]
    assert f"pushproxy test-connection --config {config}" in steps
    assert f"pushproxy serve --config {config}" in steps
    assert f"pushproxy enroll USER --config {config}" in steps
    secret = (folder / "secrets" / "vpn-gw-1.secret").read_text().strip()
    assert len(secret) >= 24 and secret in made.stdout

    started = time.monotonic()
    marks: list[str] = []  # when each step ended: said when a step times out

    def mark(step: str) -> None:
        marks.append(f"{step} {time.monotonic() - started:.1f}s")

    checked = cli("check-config", str(config))
    assert checked.returncode == 0 and "warning" not in checked.stdout, checked.stdout
    serve = ServeProcess(config)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        serve.wait_for("daemon.ready", deadline=SLOW)
        mark("ready")
        link = cli("enroll", "alice", "--no-qr", "--config", str(config))
        assert link.returncode == 0, link.stderr
        mark("link")
        state = str(tmp_path / "alice-phone")
        enrolled = cli("authenticator", "enroll", link.stdout.strip().splitlines()[-1],
                       "--state", state, "--name", "alice-phone")
        assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
        mark("enrolled")
        # radclient waits past the push timeout: whatever happens, the login's own
        # answer is known when the phone saw nothing.
        login = pool.submit(radclient_sync, f"127.0.0.1:{radius_port}", secret,
                            [("User-Name", "alice"), ("User-Password", "alice-pw"),
                             ("Message-Authenticator", "0x00")], timeout=PUSH_TIMEOUT + 30)
        try:
            # the watch gives up on its own before the push times out, saying so
            approved = cli("authenticator", "watch", "--state", state, "--auto", "approve",
                           "--count", "1", "--timeout", str(PUSH_TIMEOUT - 5))
            phone = approved.stdout + approved.stderr
        except subprocess.TimeoutExpired as exc:
            approved, phone = None, f"{exc.stdout!r} {exc.stderr!r}"
        mark("watched")
        if approved is None or approved.returncode != 0:
            # say why: the login's own answer, what the phone printed, when each step
            # ended, and the daemon's log
            try:
                answer = login.result(PUSH_TIMEOUT + 40)
            except concurrent.futures.TimeoutError:
                answer = "no answer"
            raise AssertionError(f"the phone approved no request; login: {answer}; "
                                 f"phone: {phone}; steps: {marks}; "
                                 f"daemon log:\n{serve.output()[-6000:]}")
        mark("approved")
        result = login.result(PUSH_TIMEOUT + 40)
        mark("answered")
        print("steps:", marks)
        assert result.code == "Access-Accept", result.stdout + result.stderr
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        serve.close()


def test_init_refuses_to_overwrite_without_force_and_reports_every_missing_answer(
        slapd, tmp_path):
    folder = tmp_path / "etc"
    args = init_args(folder, slapd, free_port(socket.SOCK_DGRAM), free_port())
    assert cli(*args, env={"SVC_PW": "pw-one"}).returncode == 0
    before = (folder / "config.yaml").read_text()
    again = cli(*args, env={"SVC_PW": "pw-two"})
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert "--force" in again.stderr
    assert (folder / "config.yaml").read_text() == before
    assert (folder / "secrets" / "ldap-bind.secret").read_text() == "pw-one\n"
    forced = cli(*args, "--force", env={"SVC_PW": "pw-two"})
    assert forced.returncode == 0, forced.stderr
    assert (folder / "secrets" / "ldap-bind.secret").read_text() == "pw-two\n"
    bare = cli("init", "--dir", str(tmp_path / "other"), "--gateway", "not-an-address")
    assert bare.returncode == 1
    for needle in ("--ldap-url: missing", "--base-dn: missing", "--bind-dn: missing",
                   "--gateway: 'not-an-address' is not an IP address",
                   "--public-url: missing", "--bind-password-env or --bind-password-file"):
        assert needle in bare.stderr, bare.stderr
    assert not (tmp_path / "other").exists()
