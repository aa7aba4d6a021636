"""Bulk enrollment by mail: planning, the sending loop's bookkeeping, the mail, the config."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pushproxy.approval.rolloutstore import UserRollout
from pushproxy.approval.store import SQLiteStore
from pushproxy.config import ConfigError, parse_config
from pushproxy.rollout import bulk
from pushproxy.rollout.bulk import Action
from pushproxy.rollout.directory import DirectoryUser, UserStatus
from pushproxy.rollout.mailconfig import MailConfig, MailSecurity
from pushproxy.rollout.mailer import SendError, TemplateError, Templates, enrollment_message

REPO = Path(__file__).resolve().parents[1]
MAIL = MailConfig(host="smtp.example.com", port=587, security=MailSecurity.STARTTLS,
                  username=None, password=None, sender="MFA <mfa@example.com>",
                  link_validity=14 * 86400.0)


def found(name, mail=True):
    return DirectoryUser(name, UserStatus.FOUND, account=name, dn=f"uid={name}",
                         mail=f"{name}@example.com" if mail else None)


def test_plan_skips_enrolled_and_open_links_refuses_unknown_reports_no_mail():
    overview = {"alice": UserRollout("alice", 1, 5.0, None, None),
                "bob": UserRollout("bob", 0, None, 500.0, 2.0)}
    users = [found("alice"), found("bob"), found("carol"), found("erin", mail=False),
             DirectoryUser("nosuch", UserStatus.UNKNOWN), found("carol"),
             DirectoryUser("dave", UserStatus.UNAVAILABLE, detail="down")]
    actions = [(p.user.name, p.action) for p in bulk.plan(users, overview)]
    assert actions == [("alice", Action.ENROLLED), ("bob", Action.PENDING),
                       ("carol", Action.SEND), ("erin", Action.NO_MAIL),
                       ("nosuch", Action.REFUSED), ("dave", Action.UNAVAILABLE)]
    resend = {p.user.name: p.action for p in bulk.plan(users, overview, resend=True)}
    assert resend["bob"] is Action.RESEND and resend["alice"] is Action.ENROLLED
    again = {p.user.name: p.action for p in bulk.plan(users, overview, include_enrolled=True)}
    assert again["alice"] is Action.SEND


class Sender:
    """Records mails; fails for the addresses in ``fail`` (fatal or not)."""

    def __init__(self, fail=None):
        self.sent, self.fail = [], fail or {}

    def send(self, msg):
        if msg["To"] in self.fail:
            raise SendError("refused", fatal=self.fail[msg["To"]])
        self.sent.append(msg)


def run(planned, sender, store):
    return bulk.run(planned, store=store, sender=sender, mail_config=MAIL,
                    templates=Templates.load(None), public_url="https://vpn.example.com",
                    validity=1000.0, clock=lambda: 100.0)


def test_a_refused_mail_leaves_no_link_and_a_fatal_failure_stops_the_rest():
    store = SQLiteStore(":memory:")
    planned = bulk.plan([found("a"), found("b"), found("c"), found("d")], {})
    outcomes = run(planned, Sender({"b@example.com": False, "c@example.com": True}), store)
    assert [(o.planned.user.name, o.sent) for o in outcomes] == [
        ("a", True), ("b", False), ("c", False), ("d", False)]
    assert outcomes[3].error == "not sent: refused"  # d never tried: the server is gone
    assert set(store.rollout_overview(100.0)) == {"a"}  # b, c, d: no open link, no mail
    assert store.rollout_overview(100.0)["a"].last_mail == 100.0


def test_an_address_with_a_line_break_is_one_failed_mail_not_a_crash_or_a_header():
    store = SQLiteStore(":memory:")
    evil = DirectoryUser("m", UserStatus.FOUND, account="m", dn="uid=m",
                         mail="m@example.com\r\nBcc: all@example.com")
    sender = Sender()
    first, second = run(bulk.plan([evil, found("n")], {}), sender, store)
    assert not first.sent and "unusable mail address" in first.error
    assert second.sent and [m["To"] for m in sender.sent] == ["n@example.com"]
    assert set(store.rollout_overview(100.0)) == {"n"}


def test_resend_sends_a_new_link_and_ends_the_old_one():
    store = SQLiteStore(":memory:")
    store.create_enrollment("a", "old", 1.0, 900.0)
    planned = bulk.plan([found("a")], store.rollout_overview(100.0), resend=True)
    sender = Sender()
    (outcome,) = run(planned, sender, store)
    assert outcome.sent and store.enrollment("old").expires == 100.0
    assert store.rollout_overview(100.0)["a"].link_expires == 1100.0


def test_the_mail_has_text_html_and_the_qr_code_inline_with_escaped_values():
    msg = enrollment_message(MAIL, Templates.load(None), user="<b>o'brien</b>",
                             address="ob@example.com", link="https://x/app/enroll#T&K",
                             expires=86400.0 * 3, now=0.0)
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    (image,) = [p for p in msg.walk() if p.get_content_maintype() == "image"]
    assert "https://x/app/enroll#T&K" in text and "<b>o'brien</b>" in text
    assert "&lt;b&gt;o&#x27;brien&lt;/b&gt;" in html and "<b>o'brien" not in html
    assert f'cid:{image["Content-ID"].strip("<>")}' in html
    assert image.get_content().startswith(b"\x89PNG") and msg["Auto-Submitted"]


def test_an_admin_template_overrides_ours_and_a_typo_is_refused(tmp_path):
    (tmp_path / "enroll.txt").write_text("Hi $user: $link until $expires ($days days)\n")
    templates = Templates.load(str(tmp_path))
    templates.check()
    assert templates.text_source.endswith("enroll.txt") and "built-in" in templates.html_source
    (tmp_path / "enroll.txt").write_text("Hi $usr\n")
    with pytest.raises(TemplateError, match=r"enroll.txt: unknown .*'usr'"):
        Templates.load(str(tmp_path)).check()


def config_with(mail: str, tmp_path, env=None):
    base = (REPO / "config.example.yaml").read_text()
    return parse_config(base + "\n" + textwrap.dedent(mail), base_dir=REPO,
                        env=env or {"PUSHPROXY_LDAP_PASSWORD": "x"})


def test_the_example_config_has_no_mail_and_a_full_section_parses(tmp_path):
    assert config_with("", tmp_path).mail is None
    secret = tmp_path / "smtp"
    secret.write_text("pw\n")
    cfg = config_with(f"""\
        mail:
          host: smtp.example.com
          security: tls
          username: mfa
          password_file: {secret}
          from: "MFA <mfa@example.com>"
          link_validity_days: 7
        """, tmp_path).mail
    assert (cfg.port, cfg.password, cfg.link_validity) == (465, "pw", 7 * 86400.0)
    assert "pw" not in repr(cfg)


def test_mail_config_problems_are_all_reported(tmp_path):
    with pytest.raises(ConfigError) as err:
        config_with("""\
            mail:
              host: smtp.example.com
              security: none
              username: mfa
              password: inline
              from: "not an address"
              colour: blue
            """, tmp_path)
    text = "\n".join(err.value.problems)
    assert "mail.password: inline secrets are not accepted" in text
    assert "mail.security: none would send mail.username's password in clear text" in text
    assert "mail.from: not a mail address" in text
    assert "mail.colour: unknown key" in text


def test_no_device_enroll_needs_the_mail_section(tmp_path):
    base = (REPO / "config.example.yaml").read_text()
    text = base.replace("no_device: reject\n", "no_device: enroll\n")  # push's
    # and a gateway's own setting
    gateway = "      secret_file: secrets/vpn-gw-1.secret"
    assert text.count(gateway) == 1
    text = text.replace(gateway, "      no_device: enroll\n" + gateway)
    with pytest.raises(ConfigError) as err:
        parse_config(text, base_dir=REPO, env={"PUSHPROXY_LDAP_PASSWORD": "x"})
    problems = [p.split(" (line")[0] for p in err.value.problems]
    assert "push.no_device: enroll mails a link: it needs the mail: section" in problems
    assert "radius.clients (vpn-gw-1).no_device: enroll mails a link: it needs the mail: " \
           "section" in problems


def test_the_enroll_answer_says_check_your_mail_and_nothing_else_changes():
    from pushproxy.config import FailMode, NoDeviceMode
    from pushproxy.decision import (ENROLL_MESSAGE, Outcome, PushResult, PushStatus, Reason,
                                    push_decision)

    no_device = PushResult(PushStatus.NO_DEVICE, "tx")
    enroll = push_decision(no_device, FailMode.SECURE, NoDeviceMode.ENROLL)
    assert (enroll.outcome, enroll.reason, enroll.message) == (
        Outcome.REJECT, Reason.NO_DEVICE_ENROLL, ENROLL_MESSAGE)
    reject = push_decision(no_device, FailMode.SECURE, NoDeviceMode.REJECT)
    assert (reject.reason, reject.message) == (Reason.NO_DEVICE, None)
    approved = push_decision(PushResult(PushStatus.APPROVED, "tx"), FailMode.SECURE,
                             NoDeviceMode.ENROLL)
    assert approved.outcome is Outcome.ACCEPT


def test_the_example_mail_section_uncommented_is_valid():
    """config.example.yaml's commented-out mail: section works once uncommented."""
    import re

    base = (REPO / "config.example.yaml").read_text()
    head, _, tail = base.partition("\n# mail:\n")
    assert tail, "the example has a commented-out mail: section"
    section = "mail:\n" + re.sub(r"(?m)^#   ", "  ", tail)
    section = section.replace("password_file: secrets/smtp.secret",
                              "password_env: PUSHPROXY_SMTP_PASSWORD")
    cfg = parse_config(head + "\n" + section, base_dir=REPO,
                       env={"PUSHPROXY_LDAP_PASSWORD": "x", "PUSHPROXY_SMTP_PASSWORD": "pw"})
    assert (cfg.mail.host, cfg.mail.port, cfg.mail.security) == (
        "smtp.example.com", 587, MailSecurity.STARTTLS)


def test_pause_runs_between_sends_and_an_interrupt_leaves_no_open_link():
    store = SQLiteStore(":memory:")
    pauses = []

    class Interrupted(Sender):
        def send(self, msg):
            if msg["To"] == "c@example.com":
                raise KeyboardInterrupt
            super().send(msg)

    planned = bulk.plan([found("a"), found("b"), found("c")], {})
    with pytest.raises(KeyboardInterrupt):
        bulk.run(planned, store=store, sender=Interrupted(), mail_config=MAIL,
                 templates=Templates.load(None), public_url="https://vpn.example.com",
                 validity=1000.0, clock=lambda: 100.0, pause=lambda: pauses.append(1))
    assert len(pauses) == 2  # before b and before c, never before the first
    assert set(store.rollout_overview(100.0)) == {"a", "b"}  # c's link was deleted


def test_check_config_reports_a_broken_admin_template(tmp_path):
    (tmp_path / "enroll.html").write_text("<p>$user $linkk</p>")
    with pytest.raises(ConfigError) as err:
        config_with(f"""\
            mail:
              host: smtp.example.com
              from: mfa@example.com
              templates: {tmp_path}
            """, tmp_path)
    (problem,) = err.value.problems
    assert problem.startswith("mail.templates: ") and "enroll.html: unknown" in problem


def test_status_rows_join_directory_and_store_in_every_format():
    import io
    import json as jsonlib

    from pushproxy.rollout import status

    overview = {"alice": UserRollout("alice", 2, 86400.0, None, 10.0),
                "bob": UserRollout("bob", 0, None, 172800.0, 20.0),
                "zed": UserRollout("zed", 1, None, None, None)}  # not in the group
    users = [found("alice"), found("bob"), found("carol", mail=False),
             DirectoryUser("ghost", UserStatus.UNKNOWN)]
    rows = status.rows(users, overview)
    assert [(r.user, r.status, r.devices, r.directory) for r in rows] == [
        ("alice", "device", 2, "found"), ("bob", "pending_link", 0, "found"),
        ("carol", "none", 0, "found"), ("ghost", "none", 0, "unknown")]
    assert rows[0].last_used == "1970-01-02T00:00:00.000Z" and rows[2].mail is None
    out = io.StringIO()
    status.write(rows, "text", out)
    assert out.getvalue().splitlines()[-1] == (
        "4 user(s): 1 with a device, 1 with an open link, 2 with neither")
    out = io.StringIO()
    status.write(rows, "json", out)
    assert [r["user"] for r in jsonlib.loads(out.getvalue())] == ["alice", "bob", "carol",
                                                                  "ghost"]
    out = io.StringIO()
    status.write(rows, "csv", out)
    assert out.getvalue().splitlines()[0] == ",".join(status.FIELDS)
    assert [r.user for r in status.rows(None, overview)] == ["alice", "bob", "zed"]
