"""pushproxy serve on a PostgreSQL store. A store moved from SQLite keeps its devices: a
device enrolled with the daemon on SQLite approves a RADIUS login after ``pushproxy store
migrate`` and a restart of the daemon on PostgreSQL. With PostgreSQL stopped, logins are
decided by push.failmode in bounded time and /healthz says 503; once it runs again, logins
are approved without restarting pushproxy. Real processes: pushproxy serve, slapd,
radclient, the CLI authenticator, and the test PostgreSQL server."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from pushproxy.approval import authenticator as auth
from tests.integration.harness import SECRET, ServeProcess
from tests.integration.radclient import radclient_sync
from tests.integration.test_operations import served_config
from tests.pg import PASSWORD

REPO = Path(__file__).resolve().parents[2]
MA = ("Message-Authenticator", "0x00")


def cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", *args], capture_output=True,
                          text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(REPO), **(env or {})))


def stop(serve: ServeProcess) -> None:
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.proc.wait(20) == 0
    serve.close()


def test_device_enrolled_on_sqlite_approves_a_login_after_migrating_to_postgresql(
        slapd, postgres, tmp_path):
    path, radius_port, http_port = served_config(tmp_path, slapd, push="timeout: 20")
    info_url = f"http://127.0.0.1:{http_port}/v1/info"
    serve = ServeProcess(path)
    try:
        serve.wait_for("daemon.ready")
        vapid = requests.get(info_url, timeout=5).json()["vapid_public_key"]
        enroll = cli("enroll", "alice", "--no-qr", "--config", str(path))
        assert enroll.returncode == 0, enroll.stderr
        link = enroll.stdout.strip().splitlines()[-1]
        state_dir = str(tmp_path / "alice-device")
        assert auth.enroll(link, state_dir, "cli-phone")["username"] == "alice"
        stop(serve)

        url = postgres.new_database()
        moved = cli("store", "migrate", "--config", str(path), "--to", url,
                    "--password-env", "TEST_DB_PW", env={"TEST_DB_PW": PASSWORD})
        assert moved.returncode == 0, moved.stderr
        assert "devices: 1 copied" in moved.stdout and "settings: 1 copied" in moved.stdout

        (tmp_path / "db.pw").write_text(PASSWORD + "\n")
        (tmp_path / "db.pw").chmod(0o600)
        (tmp_path / "pushproxy.db").rename(tmp_path / "old-sqlite.db")  # no way back to it
        text = path.read_text().replace(
            "  database: pushproxy.db\n",
            f'  database: "{url}"\n  database_password_file: db.pw\n')
        assert url in text
        path.write_text(text)
        assert cli("check-config", str(path)).returncode == 0

        serve = ServeProcess(path)
        serve.wait_for("daemon.ready")
        # the VAPID key moved too: phones' push subscriptions stay valid
        assert requests.get(info_url, timeout=5).json()["vapid_public_key"] == vapid
        assert approve_login(serve, radius_port, state_dir) == "Access-Accept"
        assert not (tmp_path / "pushproxy.db").exists()  # the daemon used PostgreSQL
        assert "Traceback" not in serve.output()
        stop(serve)
    finally:
        serve.close()


def approve_login(serve, radius_port, state_dir) -> str:
    """alice logs in with radclient; the device approves; the RADIUS answer's code."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        login = pool.submit(radclient_sync, f"127.0.0.1:{radius_port}", SECRET,
                            [("User-Name", "alice"), ("User-Password", "alice-pw"), MA],
                            retries=1, timeout=25)
        entries, started = [], time.monotonic()
        while not entries and time.monotonic() - started < 20:
            entries = auth.pending(state_dir, 5)
        assert len(entries) == 1, serve.output()
        assert auth.answer(state_dir, entries[0]["txid"], "approve")["status"] == "recorded"
        return login.result(timeout=30).code


def eventually_status(url: str, code: int, within: float = 10.0) -> bool:
    """Whether GET ``url`` answers ``code`` within ``within`` seconds."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if requests.get(url, timeout=10).status_code == code:
            return True
        time.sleep(0.3)
    return False


def test_postgresql_down_then_back_failmode_then_logins_again_without_restart(
        slapd, postgres, tmp_path):
    path, radius_port, http_port = served_config(tmp_path, slapd, push="timeout: 20",
                                                 metrics=True)
    url = postgres.new_database()
    (tmp_path / "db.pw").write_text(PASSWORD + "\n")
    (tmp_path / "db.pw").chmod(0o600)
    text = path.read_text().replace(
        "  database: pushproxy.db\n", f'  database: "{url}"\n  database_password_file: db.pw\n')
    path.write_text(text)
    metrics_port = int(re.search(r'metrics_listen: "127.0.0.1:(\d+)"', text).group(1))
    health = f"http://127.0.0.1:{metrics_port}/healthz"
    serve = ServeProcess(path)
    try:
        serve.wait_for("daemon.ready")
        enroll = cli("enroll", "alice", "--no-qr", "--config", str(path))  # the CLI on PostgreSQL
        assert enroll.returncode == 0, enroll.stderr
        state_dir = str(tmp_path / "alice-device")
        auth.enroll(enroll.stdout.strip().splitlines()[-1], state_dir, "cli-phone")
        assert approve_login(serve, radius_port, state_dir) == "Access-Accept"
        assert requests.get(health, timeout=10).status_code == 200

        postgres.stop("fast")
        try:
            started = time.monotonic()
            down = radclient_sync(f"127.0.0.1:{radius_port}", SECRET,
                                  [("User-Name", "alice"), ("User-Password", "alice-pw"), MA],
                                  retries=1, timeout=25)
            assert down.code == "Access-Reject"  # push.failmode: secure (the default)
            assert time.monotonic() - started < 15  # well inside push.timeout (20 s)
            assert eventually_status(health, 503)  # (the answer is cached for a second)
            serve.wait_for("push.unavailable")
        finally:
            postgres.start()
        assert approve_login(serve, radius_port, state_dir) == "Access-Accept"
        assert eventually_status(health, 200)
        assert "Traceback" not in serve.output()
        stop(serve)
    finally:
        serve.close()
