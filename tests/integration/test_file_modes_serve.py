"""`pushproxy serve` and file permissions (issue 14, finding 8), as a real child process.

A SIGHUP whose config names a secret that other users can read is refused (the
old secret stays in use); a group-readable secret whose group is the daemon's
own is served with a warning and the ``insecure_file_modes`` counter.
"""

from __future__ import annotations

import os
import re
import signal

import pytest
import requests

from tests.integration.harness import SECRET, ServeProcess
from tests.integration.radclient import radclient_sync
from tests.integration.test_operations import MA, served_config

LOGIN = [("User-Name", "carol"), ("User-Password", "carol-pw"), MA]


def test_sighup_with_a_world_readable_new_secret_keeps_the_old_one(slapd, tmp_path):
    path, radius_port, _ = served_config(tmp_path, slapd)
    serve = ServeProcess(path)
    server = f"127.0.0.1:{radius_port}"
    secret = tmp_path / "radius.secret"
    try:
        serve.wait_for("daemon.ready")
        secret.write_text("a-brand-new-shared-secret\n")
        secret.chmod(0o644)
        mark = len(serve.lines)
        serve.proc.send_signal(signal.SIGHUP)
        line = serve.wait_for("reload.insecure_file", start=mark)
        assert "radius.clients[0].secret_file" in line and f"chmod 600 {secret}" in line
        serve.wait_for("reload.kept_old_config", start=mark)
        assert radclient_sync(server, SECRET, LOGIN, timeout=3).code == "Access-Reject"

        secret.chmod(0o600)  # fixed: the next reload applies the new secret
        mark = len(serve.lines)
        serve.proc.send_signal(signal.SIGHUP)
        serve.wait_for("reload.applied", start=mark)
        new = radclient_sync(server, "a-brand-new-shared-secret", LOGIN, timeout=3)
        assert new.code == "Access-Reject"  # answered: carol is in no required group
    finally:
        serve.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the file is given to root:<our group>")
def test_a_secret_readable_only_by_the_daemons_own_group_is_served_with_a_warning(
        slapd, tmp_path):
    path, radius_port, _ = served_config(tmp_path, slapd, metrics=True)
    secret = tmp_path / "ldap.secret"
    os.chown(secret, 0, os.getegid())
    secret.chmod(0o640)
    metrics = re.search(r'metrics_listen: "([^"]+)"', path.read_text()).group(1)
    serve = ServeProcess(path)
    try:
        line = serve.wait_for("startup.insecure_file")
        assert "ldap.bind_password_file" in line and "refused=False" in line
        serve.wait_for("daemon.ready")
        text = requests.get(f"http://{metrics}/metrics", timeout=5).text
        assert re.search(r'insecure_file_modes\w*\{kind="secret"\} 1', text), text
        server = f"127.0.0.1:{radius_port}"
        assert radclient_sync(server, SECRET, LOGIN, timeout=3).code == "Access-Reject"
    finally:
        serve.close()
