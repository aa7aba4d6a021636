"""config.example.yaml as an admin gets it: fill in the secrets, and `serve` starts.

Issue 17: the example used to enable the LDAP front end with placeholder
certificates (serve refused them while check-config said OK), made-up upstream
servers and a password-only rule for 10.0.0.0/8. These tests run the real
`pushproxy serve` process on a copy of the shipped file.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.integration.harness import SECRET, ServeProcess, write_config
from tests.integration.radclient import radclient_sync

ROOT = Path(__file__).resolve().parents[2]
STRUCTURED = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (debug|info|warning|error|critical) "
                        r"[a-z_]+(\.[a-z_]+)+( [a-z_]+=\S.*)?$")


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def replace(text: str, old: str, new: str) -> str:
    """One exact replacement; fails when the example no longer has ``old``."""
    assert text.count(old) == 1, f"config.example.yaml no longer has {old!r} exactly once"
    return text.replace(old, new)


def example_copy(tmp: Path, *, ldap_password="the-service-password", slapd=None) -> Path:
    """The example and its secrets/ folder in ``tmp``, with only the secrets filled in.

    Besides the two secret files, only what a test on a shared machine must
    change: loopback ports instead of 1812/8443, and the database and audit
    file in ``tmp`` instead of the service's /var/lib and /var/log folders.
    With ``slapd``, the directory settings point at the test directory.
    """
    shutil.copytree(ROOT / "secrets", tmp / "secrets")
    for name, value in (("vpn-gw-1.secret", SECRET), ("ldap-bind.secret", ldap_password)):
        path = tmp / "secrets" / name
        path.write_text(value + "\n")
        path.chmod(0o600)
    text = (ROOT / "config.example.yaml").read_text()
    radius_port, http_port = free_port(socket.SOCK_DGRAM), free_port()
    text = replace(text, 'listen: ["0.0.0.0:1812"]', f'listen: ["127.0.0.1:{radius_port}"]')
    text = replace(text, 'listen: "127.0.0.1:8443"', f'listen: "127.0.0.1:{http_port}"')
    text = replace(text, "database: /var/lib/pushproxy/pushproxy.db",
                   f"database: {tmp / 'pushproxy.db'}")
    text = replace(text, "path: /var/log/pushproxy/audit.jsonl", f"path: {tmp / 'audit.jsonl'}")
    if slapd is not None:
        text = replace(text, "address: 192.0.2.10 ", "address: 127.0.0.1  ")
        text = replace(text, 'servers: ["ldaps://dc1.example.com", "ldaps://dc2.example.com"]',
                       f'servers: ["{slapd.url}"]')
        text = replace(text, 'bind_dn: "cn=svc-pushproxy,ou=services,dc=example,dc=com"',
                       f'bind_dn: "{slapd.service_dn}"')
        text = replace(text, 'user_base: "ou=people,dc=example,dc=com"',
                       f'user_base: "{slapd.people_dn}"')
    config = tmp / "config.yaml"
    config.write_text(text)
    config.chmod(0o600)
    return config


def test_the_shipped_example_starts_once_its_secrets_are_filled_in(tmp_path):
    """No placeholder certificate, no privileged port, no upstream: serve reaches ready."""
    config = example_copy(tmp_path)
    serve = ServeProcess(config)
    try:
        serve.wait_for("daemon.ready", deadline=30)
        output = serve.output()
        assert "ldap_front" not in output and "upstream" not in output
        serve.proc.send_signal(signal.SIGTERM)
        assert serve.proc.wait(20) == 0
        assert "Traceback" not in serve.output()
        # One structured event per line, Twisted's own lines included (issue 17).
        for line in serve.output().splitlines():
            assert STRUCTURED.match(line), line
        assert "Starting factory" not in serve.output()  # lifecycle chatter is debug
    finally:
        serve.close()


def test_the_example_pointed_at_a_directory_answers_a_real_login(slapd, tmp_path):
    """The example with the test directory: a RADIUS login reaches LDAP and the push step."""
    config = example_copy(tmp_path, ldap_password=slapd.service_password, slapd=slapd)
    port = int(re.search(r'listen: \["127\.0\.0\.1:(\d+)"\]', config.read_text()).group(1))
    serve = ServeProcess(config)
    try:
        serve.wait_for("daemon.ready", deadline=30)
        result = radclient_sync(f"127.0.0.1:{port}", SECRET,
                                [("User-Name", "alice"), ("User-Password", "alice-pw"),
                                 ("Message-Authenticator", "0x00")], timeout=10)
        assert result.code == "Access-Reject", result.stdout + result.stderr
        # The password was right (no policy rule lets it through alone): the
        # login got as far as the push, which needs an enrolled phone.
        audit = (tmp_path / "audit.jsonl").read_text()
        assert '"reason":"no_enrolled_device"' in audit, audit
        wrong = radclient_sync(f"127.0.0.1:{port}", SECRET,
                               [("User-Name", "alice"), ("User-Password", "wrong"),
                                ("Message-Authenticator", "0x00")], timeout=10)
        assert wrong.code == "Access-Reject"
    finally:
        serve.close()


def run_cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pushproxy.cli", *args],
                          capture_output=True, text=True, timeout=60)


def problem_lines(stderr: str) -> list[str]:
    return [line.strip() for line in stderr.splitlines() if line.startswith("  ")]


def test_check_config_and_serve_refuse_the_same_certificate_files_naming_each_path(
        slapd, tmp_path):
    """Placeholder certificate, missing key, garbage CA file: both commands list all three."""
    (tmp_path / "placeholder.crt").write_text("placeholder: put the PEM certificate here\n")
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    front_key = tmp_path / "front.key"
    front_key.write_text("placeholder\n")
    front_key.chmod(0o600)
    config = write_config(tmp_path, slapd, ldap_extra="ca_file: ca.pem\n",
                          approval=textwrap.dedent(f"""\
        approval:
          listen: "127.0.0.1:0"
          public_url: "http://127.0.0.1"
          database: ":memory:"
        ldap_front:
          listen: ["127.0.0.1:{free_port()}"]
          tls_cert: {tmp_path / "placeholder.crt"}
          tls_key: {front_key}
        """))
    check = run_cli("check-config", str(config))
    serve = run_cli("serve", "--config", str(config))
    assert check.returncode == 1 and serve.returncode == 1
    problems = problem_lines(check.stderr)
    assert problems == problem_lines(serve.stderr), (check.stderr, serve.stderr)
    joined = "\n".join(problems)
    assert f"ldap.ca_file: {tmp_path / 'ca.pem'} holds no PEM certificate" in joined
    assert f"ldap_front.tls_cert: {tmp_path / 'placeholder.crt'} holds no PEM certificate" \
        in joined
    assert f"ldap_front.tls_key: {front_key} holds no PEM private key" in joined
    assert "3 problem(s)" in check.stderr
    assert "daemon.ready" not in serve.stderr
