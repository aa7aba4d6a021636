"""`pushproxy init` asks for what the flags leave out, and asks again after a bad answer."""

from __future__ import annotations

import pytest

from pushproxy.cli import build_parser
from pushproxy.config import parse_config
from pushproxy.initconfig import InitError, gather, render


def args(*extra):
    return build_parser().parse_args(["init", *extra])


def test_interactive_answers_are_asked_in_order_and_a_bad_one_is_asked_again(tmp_path):
    replies = iter(["ldaps://dc1.corp.example", "ou=people,dc=corp,dc=example",
                    "cn=svc,dc=corp,dc=example", "not-an-ip", "10.20.0.0/24",
                    "https://mfa.corp.example/"])
    asked = []

    def ask(question):
        asked.append(question)
        return next(replies)

    answers = gather(args("--directory", "ad"), ask=ask, ask_secret=lambda _: "pw",
                     interactive=True)
    assert len(asked) == 6 and "gateway" in asked[3] and asked[3] == asked[4]
    assert answers.gateway == "10.20.0.0/24" and answers.public_url == "https://mfa.corp.example"
    assert answers.bind_password == "pw"
    (tmp_path / "secrets").mkdir()
    for name in ("vpn-gw-1.secret", "ldap-bind.secret"):
        (tmp_path / "secrets" / name).write_text("a-long-enough-secret\n")
    cfg = parse_config(render(answers), base_dir=tmp_path, env={})
    assert cfg.ldap.username_attribute == "sAMAccountName"
    assert str(cfg.radius.clients[0].network) == "10.20.0.0/24"
    assert cfg.ldap_front is None and cfg.policy.rules == ()


def test_without_a_terminal_every_missing_flag_is_named_at_once():
    with pytest.raises(InitError) as exc:
        gather(args("--public-url", "ftp://x", "--gateway-name", "../etc"), interactive=False)
    text = str(exc.value)
    for needle in ("--ldap-url: missing", "--base-dn: missing", "--bind-dn: missing",
                   "--gateway: missing", "--public-url: 'ftp://x' is not an https:// URL",
                   "--gateway-name:", "--bind-password-env or --bind-password-file"):
        assert needle in text


def test_a_generated_gateway_secret_never_starts_with_a_dash():
    """A leading "-" made radclient read the secret as options (one init in 64):
    2,000 secrets would include ~31 such on the old generator."""
    from pushproxy.initconfig import gateway_secret

    made = [gateway_secret() for _ in range(2000)]
    assert not [s for s in made if s.startswith("-")]
    assert all(len(s) == 32 for s in made) and len(set(made)) == 2000
