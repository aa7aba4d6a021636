"""Presence in the policy and per-client sensitivity: parsing, the floor the client
puts under the rules, ``policy explain``, and what the engine asks of the provider."""

from __future__ import annotations

import textwrap
from pathlib import Path

from twisted.internet.task import Clock

from pushproxy import sensitivity, yamlsource
from pushproxy.audit import AuditLog
from pushproxy.checker import Checker
from pushproxy.config import FailMode, NoDeviceMode, PushConfig
from pushproxy.decision import Outcome, PushResult, PushStatus, Reason
from pushproxy.engine import Engine, LoginRequest
from pushproxy.metrics import Counters
from pushproxy.policy import LoginContext, Verification, evaluate, explain
from pushproxy.sensitivity import ClientRequirements
from tests.support import ScriptedDirectory, ScriptedProvider
from tests.test_policy import good, parse

PRESENCE = """
policy:
  require_user_verification: false
  user_verification_fallback: allow
  rules:
    - name: admins
      users: [root-alice]
      action: push
      require_user_verification: true
"""


def ctx(user="alice", client="vpn-gw-1"):
    return LoginContext(user, client, "203.0.113.7", frozenset(), 1_800_000_000)


def test_a_rule_turns_presence_on_and_the_default_stays_off():
    policy = good(PRESENCE)
    assert policy.user_verification_fallback == "allow"
    assert evaluate(policy, ctx("root-alice")).user_verification is True
    assert evaluate(policy, ctx("bob")).user_verification is False


def test_presence_keys_are_checked():
    _, problems = parse("""
        policy:
          require_user_verification: "yes"
          user_verification_fallback: maybe
          rules:
            - {name: r, action: allow, require_user_verification: true}
        """)
    text = "\n".join(str(p) for p in problems)
    assert "policy.require_user_verification" in text
    assert "policy.user_verification_fallback" in text
    assert "policy.rules[0].require_user_verification" in text and "only applies" in text


def client_requirements(text, **kw):
    doc = yamlsource.load(textwrap.dedent(text))
    c = Checker(doc, base_dir=Path("."), env={})
    return sensitivity.parse(c, doc.data["client"], "client", **kw), c.problems


def test_client_sensitivity_parses_and_the_ldap_front_end_cannot_require_a_number():
    requires, problems = client_requirements("""
        client: {require_verification: number_match, require_user_verification: true}""")
    assert problems == [] and requires == ClientRequirements(Verification.NUMBER_MATCH, True)
    _, problems = client_requirements("client: {require_verification: none}")
    assert problems  # "none" requires nothing: not a value
    _, problems = client_requirements("client: {require_verification: number_match}",
                                      verification_allowed=False)
    assert any("LDAP bind" in str(p) for p in problems)


def test_the_client_floor_raises_a_plain_push_and_never_lowers_a_rule():
    strict = ClientRequirements(Verification.NUMBER_MATCH, True)
    needs = sensitivity.apply(strict, Verification.NONE, False)
    assert needs.verification is Verification.NUMBER_MATCH and needs.user_verification
    assert needs.raised_by_client and needs.presence_by_client
    # a rule's own verified mode stays (it proves the same: the user is at the screen)
    assert sensitivity.apply(strict, Verification.CODE_TO_LOGIN, False).verification \
        is Verification.CODE_TO_LOGIN
    # nothing required: the policy's choice, untouched
    assert sensitivity.apply(ClientRequirements(), Verification.NONE, True) == \
        sensitivity.PushNeeds(Verification.NONE, True)


def test_explain_shows_presence_and_the_client_floor():
    policy = good(PRESENCE)
    text = explain(policy, ctx("bob"), ClientRequirements(Verification.NUMBER_MATCH, True))
    assert "Result: push with number_match verification" in text
    assert "client 'vpn-gw-1' requires number_match (require_verification)" in text
    assert "Presence: Approve needs a passkey" in text and "require_user_verification" in text
    assert "allowed, audited as presence not_verified" in text
    assert "Presence: not required" in explain(policy, ctx("bob"))
    assert "rule 'admins' requires it" in explain(policy, ctx("root-alice"))


def make(tmp_path, policy=None):
    clock = Clock()
    clock.advance(1_800_000_000)
    counters = Counters()
    engine = Engine(clock=clock, directory=ScriptedDirectory(), provider=ScriptedProvider(),
                    push=PushConfig(timeout=60, failmode=FailMode.SECURE,
                                    no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(str(tmp_path / "audit.jsonl"), counters),
                    counters=counters, policy=policy)
    return engine


def login(requires=ClientRequirements(), station="198.51.100.7"):
    return LoginRequest(protocol="radius", username="alice", password="alice-pw",
                        client_name="vpn-gw-1", source="127.0.0.1",
                        calling_station=station, nas="gw1",
                        no_device=NoDeviceMode.REJECT, requires=requires)


def test_the_engine_asks_the_provider_for_presence_with_the_policys_fallback(tmp_path):
    engine = make(tmp_path, good(PRESENCE))
    engine.login(login())
    (plain,) = engine.provider.requests
    engine = make(tmp_path, good(PRESENCE))
    engine.login(login(ClientRequirements(user_verification=True)))
    (sensitive,) = engine.provider.requests
    assert plain.user_verification is None
    assert sensitive.user_verification == "allow"


def test_a_refused_presence_check_rejects_and_the_audit_says_why(tmp_path):
    engine = make(tmp_path, good(PRESENCE))
    got = []
    engine.login(login(ClientRequirements(user_verification=True))).addCallback(got.append)
    (request,) = engine.provider.requests
    engine.provider._pending.pop(request.txid).callback(
        PushResult(PushStatus.PRESENCE_NOT_VERIFIED, request.txid, "dev1",
                   presence="refused:uv_off"))
    assert got[0].outcome is Outcome.REJECT and got[0].reason is Reason.PRESENCE_NOT_VERIFIED
    import json

    (event,) = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert (event["reason"], event["presence"]) == ("presence_not_verified", "refused:uv_off")


def test_an_approval_without_presence_is_audited_as_such(tmp_path):
    engine = make(tmp_path, good(PRESENCE))
    got = []
    engine.login(login(ClientRequirements(user_verification=True))).addCallback(got.append)
    (request,) = engine.provider.requests
    engine.provider._pending.pop(request.txid).callback(
        PushResult(PushStatus.APPROVED, request.txid, "dev1", presence="not_verified"))
    assert got[0].outcome is Outcome.ACCEPT
    import json

    (event,) = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert (event["reason"], event["presence"]) == ("push_approved", "not_verified")


def test_check_config_warns_when_presence_cannot_work(tmp_path):
    """An IP address as public_url host cannot be a WebAuthn RP ID: said at check time."""
    from types import SimpleNamespace

    from pushproxy.approval.presence import config_warnings

    def config(url, policy_text=PRESENCE):
        radius = SimpleNamespace(all_clients=())
        return SimpleNamespace(policy=good(policy_text), radius=radius, ldap_front=None,
                               approval=SimpleNamespace(public_url=url))

    (warning,) = config_warnings(config("http://127.0.0.1:8443"))
    assert "'127.0.0.1' is not a DNS name" in warning and "allowed without it" in warning
    assert config_warnings(config("https://mfa.example.com")) == []
    assert config_warnings(config("http://127.0.0.1", "policy: {}")) == []


def test_radsec_clients_take_the_sensitivity_keys():
    from pushproxy.radsec import settings

    doc = yamlsource.load(textwrap.dedent("""\
        clients:
          - name: radsecproxy-dc1
            match: {dns: radsecproxy.example.com}
            require_verification: code_to_login
            require_user_verification: true
        psk:
          - name: gw-psk
            identity: gw-1
            key_env: GW_PSK
            require_user_verification: true
        """))
    c = Checker(doc, base_dir=Path("."), env={"GW_PSK": "00112233445566778899aabbccddeeff"})
    tls = settings._client(c, doc.data["clients"][0], "radius.radsec.clients[0]")
    psk = settings._psk_client(c, doc.data["psk"][0], "radius.radsec.psk_clients[0]")
    assert c.problems == []
    assert tls.client.requires == ClientRequirements(Verification.CODE_TO_LOGIN, True)
    assert psk.client.requires == ClientRequirements(None, True)


def test_the_relying_party_is_the_public_urls_host_and_origin():
    from pushproxy.approval.presence import RelyingParty

    assert RelyingParty.from_public_url("https://MFA.example.com:443/prefix") == \
        RelyingParty("mfa.example.com", "https://mfa.example.com")
    assert RelyingParty.from_public_url("http://localhost:8080") == \
        RelyingParty("localhost", "http://localhost:8080")
    assert RelyingParty.from_public_url("https://mfa.example.com:8443").origin == \
        "https://mfa.example.com:8443"
    assert not RelyingParty.from_public_url("https://192.0.2.1").usable
    assert not RelyingParty.from_public_url("https://[2001:db8::1]").usable
    assert RelyingParty.from_public_url("https://mfa.example.com").usable


def test_a_login_that_needs_presence_is_never_remembered(tmp_path):
    """remember_minutes would let the next login skip the push, and with it the face."""
    remembering = good("""
        policy:
          remember_minutes: 30
          require_user_verification: true
        """)
    engine = make(tmp_path, remembering)
    for _ in range(2):
        got = []
        engine.login(login()).addCallback(got.append)
        request = engine.provider.requests[-1]
        engine.provider._pending.pop(request.txid).callback(
            PushResult(PushStatus.APPROVED, request.txid, "dev1", presence="verified"))
        assert got[0].reason is Reason.PUSH_APPROVED
    assert len(engine.provider.requests) == 2  # the second login was pushed again
    # without presence the same policy remembers the login (the control)
    engine = make(tmp_path, good("policy: {remember_minutes: 30}"))
    got = []
    engine.login(login()).addCallback(got.append)
    request = engine.provider.requests[-1]
    engine.provider._pending.pop(request.txid).callback(
        PushResult(PushStatus.APPROVED, request.txid, "dev1"))
    again = []
    engine.login(login()).addCallback(again.append)
    assert again[0].reason is Reason.REMEMBERED and len(engine.provider.requests) == 1
