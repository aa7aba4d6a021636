"""Issue 19 acceptance: bulk enrollment by mail from a directory group, against real peers.

A private slapd (the test directory plus erin, a vpn-users member whose entry has
no mail address), a real SMTP server on loopback (aiosmtpd: STARTTLS required,
AUTH), the real daemon with its approval service, the ``pushproxy`` command line
as a subprocess, the CLI authenticator and radclient.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
import textwrap

import ldap3
import pytest
import pytest_twisted
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from tests.integration.harness import SECRET
from tests.integration.radclient import radclient
from tests.integration.slapd import Slapd, slapd_available
from tests.integration.smtp import PASSWORD, USER, SmtpServer
from tests.integration.test_approval_e2e import Stack, first_request, free_tcp_port, login_attrs

pytestmark = pytest.mark.skipif(not slapd_available(), reason="slapd is not installed")


@pytest.fixture
def directory(tmp_path):
    """A private slapd: the seeded users plus erin (vpn-users, no mail attribute)."""
    server = Slapd([("erin", "erin-pw")], extra_users_groups=["vpn-users"],
                   base_dir=tmp_path)
    server.start()
    try:
        conn = ldap3.Connection(server.url, server.root_dn, server.root_password,
                                auto_bind=True)
        conn.modify(server.user_dn("erin"), {"mail": [(ldap3.MODIFY_DELETE, [])]})
        assert conn.result["result"] == 0, conn.result
        conn.unbind()
        yield server
    finally:
        server.stop()


@pytest.fixture
def smtp(directory):
    """The SMTP server, with the test CA's certificate for 127.0.0.1."""
    server = SmtpServer(directory.directory / "server.pem", directory.directory / "server.key",
                        free_tcp_port()).start()
    yield server
    server.stop()


def mail_section(tmp_path, slapd, port, security="starttls", password=PASSWORD) -> str:
    """The config's mail: section for the loopback SMTP server (password from a file)."""
    secret = tmp_path / "smtp.secret"
    secret.write_text(password + "\n")
    secret.chmod(0o600)
    return textwrap.dedent(f"""\
        mail:
          host: 127.0.0.1
          port: {port}
          security: {security}
          username: {USER}
          password_file: smtp.secret
          ca_file: {slapd.ca_file}
          from: "VPN sign-in <mfa@example.com>"
          link_validity_days: 14
        """)


def cli(*args):
    """Run the pushproxy command line; (exit code, stdout, stderr)."""
    done = subprocess.run([sys.executable, "-m", "pushproxy.cli", *args], capture_output=True,
                          text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


def parts(msg):
    """(text body, html body, [(content-type, cid, bytes) of inline images])."""
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    images = [(p.get_content_type(), p["Content-ID"], p.get_content())
              for p in msg.walk() if p.get_content_maintype() == "image"]
    return text, html, images


def link_in(msg) -> str:
    text, _, _ = parts(msg)
    (link,) = set(re.findall(r"http://\S+/app/enroll#\S+", text))
    return link


@pytest_twisted.inlineCallbacks
def test_group_mail_redeem_login_rerun_resend_status(tmp_path, directory, smtp):
    """The whole rollout: a group is mailed (unknown and mail-less users reported), a
    mailed link enrolls the CLI authenticator that approves a real RADIUS login,
    a re-run sends nothing, --resend sends to open links only, status matches."""
    stack = yield Stack(tmp_path, directory, extra=mail_section(tmp_path, directory,
                                                                smtp.port)).start()
    try:
        group = directory.group_dn("vpn-users")
        config = str(stack.config_path)
        code, out, err = yield threads.deferToThread(
            cli, "enroll", "--group", group, "nosuchuser", "carol", "--config", config)
        assert code == 1, (out, err)
        assert "no user 'nosuchuser' in the directory" in out
        assert "'carol' is in none of ldap.required_groups" in out
        assert re.search(r"no mail address: 1: erin", out), out
        assert "sent: 3" in out
        mails = smtp.wait_for(3)
        assert sorted(m["To"] for m in mails) == ["alice@example.com", "bob@example.com",
                                                  "obrienx@example.com"]
        assert all(auth_ok for auth_ok, _, _ in smtp.received)  # AUTH after STARTTLS
        by_user = {m["To"].split("@")[0]: m for m in mails}
        text, html, images = parts(by_user["alice"])
        link = link_in(by_user["alice"])
        assert "Hello alice" in text and link in html.replace("&amp;", "&")
        ((ctype, cid, png),) = images
        assert ctype == "image/png" and png.startswith(b"\x89PNG")
        assert f'src="cid:{cid.strip("<>")}"' in html
        # the CLI authenticator redeems alice's mailed link; a RADIUS login is approved
        state = str(tmp_path / "alice-cli")
        code, out, err = yield threads.deferToThread(
            cli, "authenticator", "enroll", link, "--state", state, "--name", "mail-phone")
        assert code == 0, (out, err)
        login = radclient(stack.radius, SECRET, login_attrs(), timeout=30)
        request = yield threads.deferToThread(first_request, state)
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        assert (yield login).code == "Access-Accept"
        # a re-run sends nothing: alice has a device, bob and o'brien(x) open links
        code, out, err = yield threads.deferToThread(cli, "enroll", "--group", group,
                                                     "--config", config)
        assert code == 1 and "sent:" not in out, out  # erin still has no address
        assert "skipped: has a device: 1: alice" in out
        assert "skipped: has an open link: 2" in out
        assert len(smtp.mails()) == 3
        # --resend mails the open links again (not alice); bob's first link ends
        code, out, err = yield threads.deferToThread(cli, "enroll", "--group", group,
                                                     "--resend", "--config", config)
        assert "sent: 2" in out, out
        mails = smtp.wait_for(5)
        assert sorted(m["To"] for m in mails[3:]) == ["bob@example.com", "obrienx@example.com"]
        old_bob = link_in(by_user["bob"])
        with pytest.raises(auth.AuthenticatorError):
            yield threads.deferToThread(auth.enroll, old_bob, str(tmp_path / "bob-old"), "x")
        new_bob = link_in(next(m for m in mails[3:] if m["To"].startswith("bob")))
        yield threads.deferToThread(auth.enroll, new_bob, str(tmp_path / "bob-new"), "y")
        # rollout status, JSON and CSV, against the directory and the store
        code, out, err = yield threads.deferToThread(
            cli, "rollout", "status", "--group", group, "--format", "json", "--config", config)
        assert code == 0, err
        rows = {r["user"]: r for r in json.loads(out)}
        assert {u: (r["status"], r["devices"]) for u, r in rows.items()} == {
            "alice": ("device", 1), "bob": ("device", 1), "o'brien(x)": ("pending_link", 0),
            "erin": ("none", 0)}
        assert rows["alice"]["last_used"] is not None and rows["erin"]["mail"] is None
        assert rows["o'brien(x)"]["mail"] == "obrienx@example.com"
        assert rows["o'brien(x)"]["link_expires"] > rows["o'brien(x)"]["last_mail"]
        code, out, err = yield threads.deferToThread(
            cli, "rollout", "status", "--group", group, "--format", "csv", "--config", config)
        table = list(csv.DictReader(io.StringIO(out)))
        assert {r["user"]: r["status"] for r in table} == {u: r["status"]
                                                          for u, r in rows.items()}
        assert {r["user"]: r["mail"] for r in table}["erin"] == ""
    finally:
        yield stack.stop()


def test_smtp_down_or_refusing_marks_nothing_sent(tmp_path, directory, smtp):
    """SMTP down: every user is reported unsent, exit 1, no link counts as open; a
    refused mailbox fails alone; with the server back, the re-run sends the rest."""
    from tests.integration.harness import write_config

    config = write_config(tmp_path, directory, approval=textwrap.dedent("""\
        approval:
          listen: "127.0.0.1:0"
          public_url: "https://vpn.example.com"
          database: pushproxy.db
        """))
    closed = free_tcp_port()  # nothing listens there
    config.write_text(config.read_text() + "\n" + mail_section(tmp_path, directory, closed))
    names = ["alice", "bob"]
    code, out, err = cli("enroll", *names, "--config", str(config))
    assert code == 1, (out, err)
    assert "NOT SENT: 2" in out and "cannot reach 127.0.0.1" in out
    code, out, err = cli("rollout", "status", "--format", "json", "--config", str(config))
    assert json.loads(out) == []  # no open link, no mail recorded
    # the server is back, but refuses bob's mailbox
    config.write_text(config.read_text().replace(f"port: {closed}", f"port: {smtp.port}"))
    smtp.refuse.add("bob@example.com")
    code, out, err = cli("enroll", *names, "--config", str(config))
    assert code == 1 and "sent: 1" in out and "NOT SENT: 1: bob (recipient refused: 550" in out
    assert [m["To"] for m in smtp.wait_for(1)] == ["alice@example.com"]
    code, out, err = cli("rollout", "status", "--format", "json", "--config", str(config))
    assert {r["user"]: r["status"] for r in json.loads(out)} == {"alice": "pending_link"}
    smtp.refuse.clear()
    code, out, err = cli("enroll", *names, "--config", str(config))
    assert code == 0, out
    assert "sent: 1: bob" in out and "skipped: has an open link: 1: alice" in out
    assert len(smtp.wait_for(2)) == 2


@pytest_twisted.inlineCallbacks
def test_no_device_enroll_rejects_and_mails_one_link_per_window(tmp_path, directory, smtp):
    """push.no_device: enroll: the first login of a user without a device is rejected
    with the Reply-Message and exactly one mail arrives; 20 more logins within
    mail.login_mail_interval send no more; the mailed link then enrolls a device that
    approves the next login."""
    from pushproxy.decision import ENROLL_MESSAGE

    # push.limits counts a login without a device as a push: raised here so all 21
    # logins get the enrollment answer (by default the 6th on gets push_rate_limited,
    # and no mail either way)
    push = "no_device: enroll\nlimits:\n  max_pushes: 50\n"
    stack = yield Stack(tmp_path, directory, push_extra=push,
                        extra=mail_section(tmp_path, directory, smtp.port)).start()
    try:
        first = yield radclient(stack.radius, SECRET, login_attrs(), timeout=10)
        assert first.code == "Access-Reject"
        assert first.get("Reply-Message") == ENROLL_MESSAGE
        (mail,) = yield threads.deferToThread(smtp.wait_for, 1)
        assert mail["To"] == "alice@example.com"
        for i in range(20):
            again = yield radclient(stack.radius, SECRET,
                                    login_attrs(station=f"198.51.100.{i + 10}"), timeout=10)
            assert again.code == "Access-Reject"
            assert again.get("Reply-Message") == ENROLL_MESSAGE  # the same words
        yield threads.deferToThread(lambda: __import__("time").sleep(1.0))
        assert len(smtp.mails()) == 1
        wrong = yield radclient(stack.radius, SECRET, login_attrs(password="nope"), timeout=10)
        assert wrong.code == "Access-Reject" and len(smtp.mails()) == 1
        state = str(tmp_path / "alice-login-mail")
        yield threads.deferToThread(auth.enroll, link_in(mail), state, "phone")
        login = radclient(stack.radius, SECRET, login_attrs(), timeout=30)
        request = yield threads.deferToThread(first_request, state)
        yield threads.deferToThread(auth.answer, state, request["txid"], "approve")
        assert (yield login).code == "Access-Accept"
        reasons = [e["reason"] for e in stack.audit()]
        assert reasons.count("no_enrolled_device_link_mailed") == 21
    finally:
        yield stack.stop()


def test_implicit_tls_sends_and_a_refused_login_sends_nothing(tmp_path, directory):
    """security: tls (port 465 style) with AUTH delivers; a wrong SMTP password is
    reported for every user, exit 1, and no link is left open."""
    from tests.integration.harness import write_config

    server = SmtpServer(directory.directory / "server.pem", directory.directory / "server.key",
                        free_tcp_port(), implicit_tls=True).start()
    try:
        config = write_config(tmp_path, directory, approval=textwrap.dedent("""\
            approval:
              listen: "127.0.0.1:0"
              public_url: "https://vpn.example.com"
              database: pushproxy.db
            """))
        base = config.read_text()
        config.write_text(base + "\n" + mail_section(tmp_path, directory, server.port, "tls",
                                                     password="wrong"))
        code, out, err = cli("enroll", "alice", "bob", "--config", str(config))
        assert code == 1 and "NOT SENT: 2" in out, out
        assert f"refused mail.username '{USER}'" in out
        code, out, err = cli("rollout", "status", "--format", "json", "--config", str(config))
        assert json.loads(out) == []
        config.write_text(base + "\n" + mail_section(tmp_path, directory, server.port, "tls"))
        code, out, err = cli("enroll", "alice", "bob", "--config", str(config))
        assert code == 0 and "sent: 2" in out, out
        assert sorted(m["To"] for m in server.wait_for(2)) == ["alice@example.com",
                                                              "bob@example.com"]
    finally:
        server.stop()


def test_bulk_enrollment_and_status_on_postgresql(tmp_path, directory, smtp, postgres):
    """The bulk command and rollout status on the PostgreSQL store (migration 6 there):
    mails go out once, a re-run skips, status reads the same rows."""
    from tests.integration.harness import write_config
    from tests.pg import PASSWORD as DB_PASSWORD

    (tmp_path / "db.pw").write_text(DB_PASSWORD + "\n")
    (tmp_path / "db.pw").chmod(0o600)
    config = write_config(tmp_path, directory, approval=textwrap.dedent(f"""\
        approval:
          listen: "127.0.0.1:0"
          public_url: "https://vpn.example.com"
          database: "{postgres.new_database()}"
          database_password_file: db.pw
        """))
    config.write_text(config.read_text() + "\n" + mail_section(tmp_path, directory, smtp.port))
    group = directory.group_dn("vpn-users")
    code, out, err = cli("enroll", "--group", group, "--config", str(config))
    assert code == 1 and "sent: 3" in out and "no mail address: 1: erin" in out, (out, err)
    assert len(smtp.wait_for(3)) == 3
    code, out, err = cli("enroll", "--group", group, "--config", str(config))
    assert "skipped: has an open link: 3" in out and len(smtp.mails()) == 3, out
    code, out, err = cli("rollout", "status", "--group", group, "--format", "json",
                         "--config", str(config))
    assert {r["user"]: r["status"] for r in json.loads(out)} == {
        "alice": "pending_link", "bob": "pending_link", "o'brien(x)": "pending_link",
        "erin": "none"}
