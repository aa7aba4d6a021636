"""Config validation: the example is valid, every problem is reported at once with path and line."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pushproxy.config import ConfigError, FailMode, GroupMode, load_config, parse_config

ROOT = Path(__file__).resolve().parent.parent


def parse(text, tmp_path, env=None):
    return parse_config(textwrap.dedent(text), base_dir=tmp_path, env=env or {})


def problems(text, tmp_path, env=None):
    with pytest.raises(ConfigError) as exc:
        parse(text, tmp_path, env)
    return exc.value.problems


GOOD = """\
radius:
  clients:
    - name: gw
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
ENV = {"GW_SECRET": "a-long-enough-secret", "LDAP_PW": "pw"}


def test_example_config_is_valid_via_the_cli():
    out = subprocess.run([sys.executable, "-m", "pushproxy.cli", "check-config",
                          str(ROOT / "config.example.yaml")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "OK" in out.stdout and "advice" in out.stdout


def test_minimal_config_gets_the_documented_defaults(tmp_path):
    cfg = parse(GOOD, tmp_path, ENV)
    assert cfg.radius.listen == (("0.0.0.0", 1812),)
    assert cfg.radius.clients[0].require_message_authenticator is True
    assert cfg.radius.clients[0].secret == b"a-long-enough-secret"
    assert cfg.push.timeout == 60 and cfg.push.failmode is FailMode.SECURE
    assert cfg.ldap.group_mode is GroupMode.MEMBER_OF
    assert cfg.ldap.servers[0].port == 636 and cfg.ldap.servers[0].use_ssl


def test_three_mistakes_are_all_reported_with_paths_and_lines_via_the_cli(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent("""\
        radius:
          clients:
            - name: gw
              address: 10.0.0.0/33
              secret_file: no-such-file
        ldap:
          servers: ["ldaps://dc1.example.com"]
          bind_dn: cn=svc,dc=example,dc=com
          bind_password_env: LDAP_PW
          user_base: ou=people,dc=example,dc=com
          user_filtr: "(uid={username})"
        push:
          failmode: maybe
        approval:
          public_url: https://mfa.example.com
          database: ":memory:"
    """))
    out = subprocess.run([sys.executable, "-m", "pushproxy.cli", "check-config", str(bad)],
                         capture_output=True, text=True, env={"LDAP_PW": "x", "PATH": "/usr/bin"})
    assert out.returncode == 1
    err = out.stderr
    assert "radius.clients[0].address: not an IP address or network" in err and "(line 4)" in err
    assert "radius.clients[0].secret_file: cannot read" in err and "(line 5)" in err
    assert "ldap.user_filtr: unknown key" in err and "(line 11)" in err
    assert "push.failmode: must be one of secure, safe" in err and "(line 13)" in err
    assert "4 problem(s)" in err


def test_inline_secrets_are_refused(tmp_path):
    text = GOOD.replace("secret_env: GW_SECRET", "secret: hunter2hunter2")
    found = problems(text, tmp_path, ENV)
    assert any("radius.clients[0].secret: inline secrets are not accepted" in p for p in found)


def test_missing_sections_and_secrets(tmp_path):
    found = problems("radius:\n  clients: []\n", tmp_path)
    assert "radius.clients: needs at least 1 entry (line 2)" in found
    assert any(p.startswith("ldap: missing") for p in found)
    assert any(p.startswith("approval: missing") for p in found)


def test_unset_environment_variable_is_named(tmp_path):
    found = problems(GOOD, tmp_path, {"LDAP_PW": "pw"})
    assert any("radius.clients[0].secret_env: environment variable GW_SECRET is not set" in p
               for p in found)


def test_secret_file_is_read_relative_to_the_config_and_trailing_newline_dropped(tmp_path):
    (tmp_path / "gw.secret").write_text("file-secret-value-123\n")
    cfg = parse(GOOD.replace("secret_env: GW_SECRET", "secret_file: gw.secret"), tmp_path, ENV)
    assert cfg.radius.clients[0].secret == b"file-secret-value-123"


def test_short_secret_duplicate_names_and_bad_listen(tmp_path):
    text = GOOD.replace("radius:\n", 'radius:\n  listen: ["1812", "[::]:1812"]\n') + ""
    text = text.replace("    - name: gw\n", "    - name: gw\n") + ""
    env = dict(ENV, GW_SECRET="short")
    found = problems(text, tmp_path, env)
    assert any("radius.listen[0]" in p for p in found)
    assert any("shorter than 12 characters" in p for p in found)
    assert not any("radius.listen[1]" in p for p in found)


def test_not_yaml_is_one_clear_problem(tmp_path):
    found = problems("radius: [unclosed\n", tmp_path)
    assert len(found) == 1 and found[0].startswith("not valid YAML")


def test_duplicate_keys_are_errors(tmp_path):
    found = problems(GOOD + "approval:\n  public_url: x\n", tmp_path, ENV)
    assert "duplicate key" in found[0]


def test_user_filter_and_template_need_the_placeholder(tmp_path):
    text = GOOD.replace("user_base:", 'user_filter: "(uid=alice)"\n  bind_template: "x"\n  user_base:')
    found = problems(text, tmp_path, ENV)
    assert any(p.startswith("ldap.user_filter: must contain {username}") for p in found)
    assert any(p.startswith("ldap.bind_template: must contain {username}") for p in found)


def test_load_config_reports_an_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as exc:
        load_config(tmp_path / "nope.yaml")
    assert "cannot read" in exc.value.problems[0]


def test_trusted_proxies_are_networks_and_each_bad_one_is_named(tmp_path):
    text = GOOD.replace('  database: ":memory:"\n',
                        '  database: ":memory:"\n  trusted_proxies: ["10.0.0.0/8", "::1", "proxy.lan",'
                        ' "10.0.0.1/8"]\n')
    found = problems(text, tmp_path, ENV)
    assert any(p.startswith("approval.trusted_proxies[2]: not an IP address") for p in found)
    assert any(p.startswith("approval.trusted_proxies[3]: not an IP address") for p in found)
    assert not any("trusted_proxies[0]" in p or "trusted_proxies[1]" in p for p in found)
    good = parse(GOOD.replace('  database: ":memory:"\n',
                              '  database: ":memory:"\n  trusted_proxies: ["10.0.0.0/8"]\n'),
                 tmp_path, ENV)
    assert [str(n) for n in good.approval.trusted_proxies] == ["10.0.0.0/8"]
    assert parse(GOOD, tmp_path, ENV).approval.trusted_proxies == ()
