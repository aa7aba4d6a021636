"""Context-aware policy: parsing reports every problem at once; first matching rule wins."""

import argparse
import dataclasses
import os
import subprocess
import sys
import textwrap
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from pushproxy import config as config_module
from pushproxy import policy as pol
from pushproxy import yamlsource
from pushproxy.checker import Checker
from pushproxy.policy import (Action, LoginContext, Policy, Verification, evaluate, explain,
                              interesting_groups, parse_policy)

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = {"vpn-gw-1", "fw-legacy"}
ADMINS = "cn=vpn-admins,ou=groups,dc=example,dc=com"


def parse(text, client_names=CLIENTS, push_default="none"):
    """(policy or None, problems) for a YAML document with a ``policy:`` block."""
    doc = yamlsource.load(textwrap.dedent(text))
    c = Checker(doc, base_dir=Path("."), env={})
    result = parse_policy(c, doc.data.get("policy"), client_names=client_names,
                          push_default=push_default)
    return result, c.problems


def good(text, **kw):
    policy, problems = parse(text, **kw)
    assert problems == [] and policy is not None
    return policy


def at(stamp, tz="UTC"):
    """Epoch seconds of a local ISO time in ``tz``."""
    return datetime.fromisoformat(stamp).replace(tzinfo=ZoneInfo(tz)).timestamp()


def ctx(user="alice", client="vpn-gw-1", ip="203.0.113.7", groups=(), now=None):
    return LoginContext(user, client, ip, frozenset(groups),
                        at("2026-11-27T09:30") if now is None else now)


EXAMPLE = """\
policy:
  timezone: Europe/Berlin
  default_verification: code_to_login
  remember_minutes: 10
  rules:
    - name: block-mallory
      users: [Mallory]
      action: deny
    - name: office-lan
      clients: [vpn-gw-1]
      networks: [10.0.0.0/8, "2001:db8::/32"]
      action: allow
    - name: admins
      groups: ["CN=VPN-Admins, OU=Groups,DC=Example,DC=com"]
      action: push
      verification: number_match
    - name: backup-exempt
      users: [svc-backup]
      action: allow
"""


# --- parsing ---------------------------------------------------------------------------


def test_the_example_block_parses_to_typed_rules():
    p = good(EXAMPLE)
    assert p.timezone == "Europe/Berlin" and p.remember_minutes == 10
    assert p.default_verification is Verification.CODE_TO_LOGIN
    deny, lan, admins, backup = p.rules
    assert deny.users == frozenset({"mallory"}) and deny.action is Action.DENY
    assert lan.clients == frozenset({"vpn-gw-1"}) and len(lan.networks) == 2
    assert lan.groups is None and lan.days is None and lan.hours is None
    assert admins.groups == frozenset({ADMINS})
    assert admins.verification is Verification.NUMBER_MATCH
    assert backup.verification is None
    assert interesting_groups(p) == frozenset({ADMINS})


def test_a_missing_block_is_the_push_everyone_default():
    p, problems = parse("radius: {}\n", push_default="number_match")
    assert problems == []
    assert p == Policy(default_verification=Verification.NUMBER_MATCH)
    d = evaluate(p, ctx())
    assert (d.action, d.verification, d.rule) == (Action.PUSH, Verification.NUMBER_MATCH, None)


def test_every_mistake_is_reported_at_once_with_path_and_line():
    policy, problems = parse("""\
        policy:
          timezone: Mars/Olympus_Mons
          rules:
            - name: lan
              networks: [10.0.0.0/33]
              action: allow
              verification: number_match
            - name: lan
              days: [mon, funday]
              hours: "25:00-06:00"
              action: push
            - name: everyone
              action: push
            - name: never-reached
              clients: [vpn-gw-9]
              action: deny
        """)
    assert policy is None
    expected = {
        "policy.timezone": ("Mars/Olympus_Mons", 2),
        "policy.rules[0].networks[0]": ("not an IP address or network", 5),
        "policy.rules[0].verification": ("only applies to action push", 7),
        "policy.rules[1].name": ("already used by policy.rules[0]", 8),
        "policy.rules[1].days[1]": ("unknown day 'funday'", 9),
        "policy.rules[1].hours": ("not a time window", 10),
        "policy.rules[2]": ("unreachable rules after a catch-all", 12),
        "policy.rules[3].clients[0]": ("no RADIUS client is named 'vpn-gw-9'", 15),
    }
    for path, (words, line) in expected.items():
        hits = [p for p in problems if p.startswith(path + ":")]
        assert len(hits) == 1, (path, problems)
        assert words in hits[0] and f"(line {line})" in hits[0], hits[0]
    assert len(problems) == len(expected), problems


@pytest.mark.parametrize("rule, path, words", [
    ("{name: x, action: maybe}", "policy.rules[0].action", "must be one of allow, push, deny"),
    ("{name: x}", "policy.rules[0].action", "missing"),
    ("{action: push, users: [a]}", "policy.rules[0].name", "missing"),
    ("{name: x, action: push, netwroks: [10.0.0.0/8]}", "policy.rules[0].netwroks",
     "unknown key"),
    ("{name: x, action: push, clients: []}", "policy.rules[0].clients", "at least 1"),
    ("{name: x, action: push, groups: [vpn-admins]}", "policy.rules[0].groups[0]", "not a DN"),
    ("{name: x, action: push, hours: 8-18}", "policy.rules[0].hours", "HH:MM-HH:MM"),
    ("{name: x, action: push, hours: '08:00-08:00'}", "policy.rules[0].hours", "whole day"),
    ("{name: x, action: push, hours: '08:60-09:00'}", "policy.rules[0].hours",
     "not a time window"),
    ("{name: x, action: push, verification: sms}", "policy.rules[0].verification",
     "must be one of"),
    ("{name: x, action: push, users: [1234]}", "policy.rules[0].users[0]", "string"),
])
def test_single_mistakes(rule, path, words):
    policy, problems = parse(f"policy:\n  rules:\n    - {rule}\n")
    assert policy is None
    assert any(p.startswith(path + ":") and words in p for p in problems), problems


def test_block_level_mistakes():
    _, problems = parse("policy:\n  default_verification: sms\n  remember_minutes: -1\n"
                        "  rulez: []\n")
    assert [p.split(":")[0] for p in problems] == [
        "policy.rulez", "policy.default_verification", "policy.remember_minutes"]


def test_client_names_are_only_checked_when_known():
    good("policy:\n  rules:\n    - {name: x, clients: [anything], action: deny}\n",
         client_names=None)


def test_a_catch_all_is_fine_as_the_last_rule():
    p = good("policy:\n  rules:\n    - {name: lan, networks: [10.0.0.0/8], action: allow}\n"
             "    - {name: rest, action: deny}\n")
    assert evaluate(p, ctx()).rule == "rest"


# --- evaluation ------------------------------------------------------------------------


def test_first_matching_rule_wins_and_earlier_misses_are_explained():
    p = good(EXAMPLE)
    # mallory inside the office LAN: the deny rule comes first.
    d = evaluate(p, ctx(user="mallory", ip="10.1.2.3"))
    assert (d.action, d.verification, d.rule, d.reasons) == (Action.DENY, None,
                                                             "block-mallory", ())
    d = evaluate(p, ctx(ip="10.1.2.3", groups=[ADMINS]))
    assert (d.action, d.rule) == (Action.ALLOW, "office-lan")
    d = evaluate(p, ctx(groups=[ADMINS]))
    assert (d.action, d.verification, d.rule) == (Action.PUSH, Verification.NUMBER_MATCH,
                                                  "admins")
    assert d.reasons == ("block-mallory: user 'alice' is not one of mallory",
                         "office-lan: client IP 203.0.113.7 is not in 10.0.0.0/8, 2001:db8::/32")
    d = evaluate(p, ctx())
    assert (d.action, d.verification, d.rule) == (Action.PUSH, Verification.CODE_TO_LOGIN, None)
    assert len(d.reasons) == 4


def test_a_push_rule_without_verification_uses_the_default():
    p = good("policy:\n  default_verification: number_match\n  rules:\n"
             "    - {name: gw, clients: [fw-legacy], action: push}\n")
    d = evaluate(p, ctx(client="fw-legacy"))
    assert (d.rule, d.verification) == ("gw", Verification.NUMBER_MATCH)


@pytest.mark.parametrize("ip, match", [
    ("10.200.0.1", True), ("11.0.0.1", False),
    ("2001:db8:1::5", True), ("2001:db9::5", False),
    ("::ffff:10.1.2.3", True),  # IPv4 seen through a dual-stack socket
    (" 10.1.2.3 ", True),
    ("00-11-22-33-44-55", False), ("aa:bb:cc:dd:ee:ff", False), ("garbage", False),
    ("", False), (None, False),
])
def test_networks_v4_v6_and_calling_station_ids_that_are_not_ips(ip, match):
    p = good(EXAMPLE)
    assert (evaluate(p, ctx(ip=ip)).rule == "office-lan") is match


def test_why_a_non_ip_calling_station_id_did_not_match():
    p = good(EXAMPLE)
    assert "'00-11-22-33-44-55' is not an IP address" in evaluate(
        p, ctx(ip="00-11-22-33-44-55")).reasons[1]
    assert "no Calling-Station-Id" in evaluate(p, ctx(ip=None)).reasons[1]


@pytest.mark.parametrize("groups, match", [
    ([ADMINS], True),
    (["CN=vpn-admins,OU=Groups, DC=EXAMPLE,DC=COM"], True),  # as LDAP may spell it
    (["cn=vpn-users,ou=groups,dc=example,dc=com"], False),
    ([], False),
])
def test_groups_are_compared_as_normalized_dns(groups, match):
    assert (evaluate(good(EXAMPLE), ctx(groups=groups)).rule == "admins") is match


def test_login_context_normalizes_groups_and_accepts_none():
    assert LoginContext("a", "c", None, ("CN=X, DC=Y",), 0).groups == frozenset({"cn=x,dc=y"})
    assert LoginContext("a", "c", None, None, 0).groups == frozenset()


@pytest.mark.parametrize("user, rule", [
    ("svc-backup", "backup-exempt"), ("SVC-Backup", "backup-exempt"),
    ("MALLORY", "block-mallory"), ("svc-backup2", None),
])
def test_users_are_case_insensitive(user, rule):
    assert evaluate(good(EXAMPLE), ctx(user=user)).rule == rule


WORKDAYS = """\
policy:
  timezone: Europe/Berlin
  rules:
    - name: office-hours
      days: [mon, tue, wed, thu, Friday]
      hours: "08:00-18:00"
      action: allow
    - name: night
      hours: "22:00-06:00"
      action: deny
"""


@pytest.mark.parametrize("local, rule", [
    ("2026-11-27T09:30", "office-hours"),  # a Friday
    ("2026-11-27T07:59", None),
    ("2026-11-27T08:00", "office-hours"),
    ("2026-11-27T17:59", "office-hours"),
    ("2026-11-27T18:00", None),  # the end is exclusive
    ("2026-11-28T09:30", None),  # Saturday
    ("2026-11-27T22:00", "night"),  # the window wraps midnight
    ("2026-11-28T00:30", "night"),
    ("2026-11-28T05:59", "night"),
    ("2026-11-28T06:00", None),
    ("2026-11-27T21:59", None),
])
def test_days_and_hours_in_the_policy_time_zone(local, rule):
    p = good(WORKDAYS)
    assert evaluate(p, ctx(now=at(local, "Europe/Berlin"))).rule == rule


def test_the_time_zone_decides_the_day_and_the_hour():
    p = good(WORKDAYS)
    # Monday 07:30 UTC is 08:30 in Berlin (winter, UTC+1)...
    assert evaluate(p, ctx(now=at("2026-11-30T07:30"))).rule == "office-hours"
    # ...and Sunday 23:30 UTC is already Monday 00:30 in Berlin: the night rule, not the day.
    assert evaluate(p, ctx(now=at("2026-11-29T23:30"))).rule == "night"


def test_a_dst_change_day_uses_the_new_offset():
    p = good(WORKDAYS.replace("[mon, tue, wed, thu, Friday]", "[sat, sun]"))
    # Berlin moves to UTC+2 at 01:00 UTC on Sunday 2026-03-29.
    assert evaluate(p, ctx(now=at("2026-03-28T06:30"))).rule is None  # 07:30 CET
    assert evaluate(p, ctx(now=at("2026-03-29T06:30"))).rule == "office-hours"  # 08:30 CEST
    assert evaluate(p, ctx(now=at("2026-03-29T15:59"))).rule == "office-hours"  # 17:59 CEST
    assert evaluate(p, ctx(now=at("2026-03-29T16:00"))).rule is None  # 18:00 CEST
    # Back to UTC+1 on 2026-10-25: 05:30 UTC is 06:30 CET, after the night window.
    assert evaluate(p, ctx(now=at("2026-10-25T04:30"))).rule == "night"  # 05:30 CET
    assert evaluate(p, ctx(now=at("2026-10-25T05:30"))).rule is None


def test_a_window_ending_at_midnight():
    p = good("policy:\n  rules:\n    - {name: evening, hours: '18:00-24:00', action: deny}\n")
    assert evaluate(p, ctx(now=at("2026-11-27T23:59"))).rule == "evening"
    assert evaluate(p, ctx(now=at("2026-11-27T00:00"))).rule is None


# --- explain ---------------------------------------------------------------------------


def test_explain_names_the_matching_rule_and_why_earlier_ones_missed():
    text = explain(good(EXAMPLE), ctx(groups=[ADMINS], now=at("2026-11-27T09:30",
                                                              "Europe/Berlin")))
    assert "fri 2026-11-27 09:30 Europe/Berlin (CET)" in text
    assert "1. block-mallory: no match: user 'alice' is not one of mallory" in text
    assert "2. office-lan: no match: client IP 203.0.113.7 is not in" in text
    assert "3. admins: MATCH -> push" in text
    assert "4. backup-exempt: not checked" in text
    assert "Result: push with number_match verification (rule 'admins')" in text
    assert "skips the push for 10 minutes" in text


def test_explain_for_allow_deny_and_the_default():
    p = good(EXAMPLE)
    assert "Result: allow: accepted without a push (rule 'office-lan')" in explain(
        p, ctx(ip="10.0.0.1"))
    assert "Result: deny: rejected without a push (rule 'block-mallory')" in explain(
        p, ctx(user="mallory"))
    text = explain(Policy(), ctx())
    assert "Rules: none" in text
    assert "Result: push with none verification (no rule matched: the default)" in text


# --- command line ----------------------------------------------------------------------


def run_cli(monkeypatch, capsys, loaded, *argv):
    monkeypatch.setattr(config_module, "load_config", lambda path: loaded)
    parser = argparse.ArgumentParser()
    pol.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["policy", "explain", "--config", "x.yaml", *argv])
    code = args.func(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def fake_config(**kw):
    clients = [SimpleNamespace(name=n) for n in sorted(CLIENTS)]
    return SimpleNamespace(radius=SimpleNamespace(clients=clients), **kw)


def test_cli_handler_explains_with_groups_and_a_local_time(monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, fake_config(policy=good(WORKDAYS)),
                             "--user", "alice", "--client", "vpn-gw-1", "--ip", "10.1.2.3",
                             "--group", ADMINS, "--at", "2026-11-27T09:30")
    assert code == 0 and err == ""
    assert "office-hours: MATCH -> allow" in out and ADMINS in out
    code, out, err = run_cli(monkeypatch, capsys, fake_config(policy=good(WORKDAYS)),
                             "--user", "alice", "--client", "gw-9", "--at", "2026-11-27T23:00")
    assert code == 0 and "night: MATCH -> deny" in out
    assert "no RADIUS client is named 'gw-9'" in err


def test_cli_handler_refuses_a_time_it_cannot_read(monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, fake_config(policy=Policy()), "--user", "a",
                           "--client", "vpn-gw-1", "--at", "tomorrow")
    assert code == 2 and "--at" in err


CONFIG = """\
radius:
  clients:
    - name: vpn-gw-1
      address: 10.0.0.0/24
      secret_env: GW_SECRET
ldap:
  servers: ["ldaps://dc1.example.com"]
  bind_dn: cn=svc,dc=example,dc=com
  bind_password_env: LDAP_PW
  user_base: ou=people,dc=example,dc=com
approval:
  public_url: https://mfa.example.com
  database: ":memory:"
"""


@pytest.mark.skipif(
    "policy" not in {f.name for f in dataclasses.fields(config_module.Config)},
    reason="pushproxy.config.Config has no `policy` field yet (the lead wires parse_policy "
           "into config.py and registers `policy` in cli.py)")
def test_cli_end_to_end(tmp_path):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG + EXAMPLE)
    env = {**os.environ, "GW_SECRET": "a-long-enough-secret", "LDAP_PW": "pw"}
    out = subprocess.run([sys.executable, "-m", "pushproxy.cli", "policy", "explain",
                          "--config", str(cfg), "--user", "alice", "--client", "vpn-gw-1",
                          "--ip", "10.1.2.3", "--at", "2026-11-27T09:30"],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "office-lan: MATCH -> allow" in out.stdout
    assert "Result: allow" in out.stdout
