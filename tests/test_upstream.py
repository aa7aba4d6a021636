"""Upstream RADIUS primary: packet building/verifying, failover with a Clock, States, config,
and the engine's handling of logins that carry their own proof."""

import hashlib
import hmac
import struct
import textwrap
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from pushproxy.audit import AuditLog
from pushproxy.config import ConfigError, NoDeviceMode, PushConfig, parse_config
from pushproxy.decision import Outcome, PrimaryResult, PrimaryStatus, Reason
from pushproxy.engine import Engine, LoginRequest
from pushproxy.metrics import Counters
from pushproxy.radius.attributes import (Attr, Names, encode_attributes, parse_attributes,
                                         reveal_password, salt_encrypt)
from pushproxy.radius.codec import load_dictionary
from pushproxy.upstream.client import UpstreamClient
from pushproxy.upstream.packets import (ReplyError, UpstreamReply, build_request, decode_reply,
                                        proof_of, relayed)
from pushproxy.upstream.primary import UpstreamStates
from pushproxy.upstream.settings import UpstreamServer, UpstreamSettings
from tests.support import ScriptedProvider

NAMES = Names(load_dictionary())
DOWN_AUTH = b"d" * 16


def downstream(*attrs: Attr) -> bytes:
    body = encode_attributes(attrs)
    return struct.pack("!BBH", 1, 9, 20 + len(body)) + DOWN_AUTH + body


def reply_for(request, code, attrs, secret, *, sign=True):
    """An upstream reply as a server would build it (Message-Authenticator first)."""
    body = encode_attributes(([Attr(0, 80, b"\x00" * 16)] if sign else []) + list(attrs))
    header = struct.pack("!BBH", code, request.ident, 20 + len(body))
    if sign:
        mac = hmac.new(secret, header + request.authenticator + body, hashlib.md5).digest()
        body = body[:2] + mac + body[18:]
    auth = hashlib.md5(header + request.authenticator + body + secret).digest()
    return header + auth + body


# -- packets --


def test_forwarded_request_has_a_fresh_authenticator_a_rehidden_password_and_a_valid_mac():
    raw = downstream(Attr(0, 1, b"alice"), Attr(0, 2, b"garbage-for-down-leg"[:16]),
                     Attr(0, 33, b"nas-proxy-state"), Attr(311, 25, b"r" * 50))
    req = build_request(raw, ident=5, secret=b"up", password="pw,123456"[:2])
    assert req.authenticator != DOWN_AUTH and req.data[4:20] == req.authenticator
    attrs = parse_attributes(req.data[20:])
    assert attrs[0].key == (0, 80)  # Message-Authenticator first
    zeroed = req.data[:22] + b"\x00" * 16 + req.data[38:]
    assert hmac.new(b"up", zeroed, hashlib.md5).digest() == attrs[0].value
    password = [a for a in attrs if a.key == (0, 2)][0]
    assert reveal_password(password.value, b"up", req.authenticator) == b"pw"
    assert (0, 33) not in [a.key for a in attrs]  # the NAS's Proxy-State stays on its leg
    assert Attr(311, 25, b"r" * 50) in attrs  # MS-CHAP2-Response unchanged


def test_change_password_attributes_are_forwarded_unchanged_and_in_order():
    """MS-CHAPv2 change password: MS-CHAP2-CPW and the chunked MS-CHAP-NT-Enc-PW (RFC 2548
    2.3.3) are hidden with the OLD password, not the RADIUS secret: they pass as they are."""
    chunks = [Attr(311, 6, bytes([6, i]) + bytes([i]) * 200) for i in (1, 2, 3)]
    raw = downstream(Attr(0, 1, b"frank"), Attr(311, 11, b"c" * 16),
                     Attr(311, 27, b"\x07" + b"p" * 67), *chunks)
    attrs = parse_attributes(build_request(raw, ident=1, secret=b"s", password=None).data[20:])
    assert [a for a in attrs if a.key == (311, 6)] == chunks
    assert Attr(311, 27, b"\x07" + b"p" * 67) in attrs


def test_chap_without_challenge_gets_the_original_authenticator_as_challenge():
    raw = downstream(Attr(0, 1, b"alice"), Attr(0, 3, b"\x01" + b"c" * 16))
    attrs = parse_attributes(build_request(raw, ident=1, secret=b"s", password=None).data[20:])
    assert Attr(0, 60, DOWN_AUTH) in attrs


def test_proof_is_the_mschap_or_eap_payload_and_absent_for_pap():
    assert proof_of(downstream(Attr(0, 1, b"a"), Attr(0, 2, b"x" * 16))) is None
    one = proof_of(downstream(Attr(0, 1, b"a"), Attr(311, 25, b"r1" * 25)))
    two = proof_of(downstream(Attr(0, 1, b"a"), Attr(311, 25, b"r2" * 25)))
    assert one and two and one != two


def test_reply_verification_refuses_forgeries_and_reveals_mppe_keys():
    req = build_request(downstream(Attr(0, 1, b"a")), ident=3, secret=b"up", password="pw")
    key = b"K" * 16
    good = reply_for(req, 2, [Attr(0, 25, b"cls"),
                              Attr(311, 16, salt_encrypt(key, b"up", req.authenticator))], b"up")
    reply = decode_reply(good, req, b"up", NAMES, require_message_authenticator=True)
    assert reply.code == 2 and Attr(311, 16, key, 2) in reply.attributes
    with pytest.raises(ReplyError, match="Response Authenticator"):
        decode_reply(good, req, b"other", NAMES, require_message_authenticator=True)
    tampered = good[:-1] + bytes([good[-1] ^ 1])
    with pytest.raises(ReplyError):
        decode_reply(tampered, req, b"up", NAMES, require_message_authenticator=True)
    unsigned = reply_for(req, 2, [Attr(0, 25, b"cls")], b"up", sign=False)
    with pytest.raises(ReplyError, match="no Message-Authenticator"):
        decode_reply(unsigned, req, b"up", NAMES, require_message_authenticator=True)
    assert decode_reply(unsigned, req, b"up", NAMES, require_message_authenticator=False).code == 2
    # A Message-Authenticator signed with another secret (Response Authenticator recomputed).
    bad_mac = reply_for(req, 2, [Attr(0, 25, b"cls")], b"xx")
    bad_mac = bad_mac[:4] + hashlib.md5(bad_mac[:4] + req.authenticator + bad_mac[20:]
                                        + b"up").digest() + bad_mac[20:]
    with pytest.raises(ReplyError, match="bad Message-Authenticator"):
        decode_reply(bad_mac, req, b"up", NAMES, require_message_authenticator=True)


def test_a_reply_follows_the_size_rule_of_the_ports_padding_up_to_4096_octets():
    req = build_request(downstream(Attr(0, 1, b"a")), ident=3, secret=b"up", password="pw")
    good = reply_for(req, 2, [Attr(0, 25, b"cls")], b"up")
    padded = good + bytes(4096 - len(good))
    assert decode_reply(padded, req, b"up", NAMES, require_message_authenticator=True).code == 2
    with pytest.raises(ReplyError, match="4097 octets is more than 4096"):
        decode_reply(padded + b"\0", req, b"up", NAMES, require_message_authenticator=True)
    with pytest.raises(ReplyError, match="does not fit"):
        decode_reply(good[:-1], req, b"up", NAMES, require_message_authenticator=True)


def test_pass_filter_applies_to_accepts_only_and_never_drops_protocol_keys():
    attrs = (Attr(0, 25, b"c"), Attr(0, 11, b"f"), Attr(311, 16, b"k", 2), Attr(0, 79, b"e"))
    accept = relayed(UpstreamReply(2, attrs), frozenset({(0, 25)}))
    assert [a.key for a in accept] == [(0, 25), (311, 16), (0, 79)]
    assert relayed(UpstreamReply(11, attrs), frozenset()) == attrs
    assert relayed(UpstreamReply(2, attrs), None) == attrs


# -- the client: failover, resends, backoff, with a Clock --


class Wire:
    def __init__(self):
        self.sent = []

    def write(self, data, addr):
        self.sent.append((data, addr))


def make_client(n=2, timeout=1.0, retries=1):
    servers = tuple(UpstreamServer(f"127.0.0.{i + 1}", 1812, b"sec%d" % i, timeout, retries,
                                   True) for i in range(n))
    clock, counters = Clock(), Counters()
    client = UpstreamClient(UpstreamSettings(servers, None), clock=clock, counters=counters,
                            names=NAMES, client_name="vpn")
    client.transport = Wire()
    return client, clock, counters


def test_silent_first_server_gets_resends_then_the_second_answers_and_the_first_backs_off():
    client, clock, counters = make_client()
    raw = downstream(Attr(0, 1, b"alice"), Attr(0, 2, b"x" * 16))
    out = []
    client.exchange(raw, "pw").addCallback(out.append)
    assert [addr for _, addr in client.transport.sent] == [("127.0.0.1", 1812)]
    clock.advance(1.0)  # resend: identical bytes
    assert client.transport.sent[1][0] == client.transport.sent[0][0]
    clock.advance(1.0)  # failover
    data, addr = client.transport.sent[2]
    assert addr == ("127.0.0.2", 1812) and out == []
    req_auth, ident = data[4:20], data[1]

    class Req:
        authenticator, ident_ = req_auth, ident
    Req.ident = ident
    client.datagramReceived(b"junk", addr)  # dropped, the wait goes on
    client.datagramReceived(reply_for(Req, 2, [Attr(0, 25, b"c")], b"sec0"), addr)  # wrong secret
    assert out == []
    client.datagramReceived(reply_for(Req, 2, [Attr(0, 25, b"c")], b"sec1"), addr)
    assert out[0].server == 1 and out[0].reply.code == 2 and out[0].attempts == 3
    assert counters.get("upstream_timeouts", server="127.0.0.1:1812") == 1
    assert counters.get("upstream_drops", reason="invalid") == 1
    # Next exchange: the silent server is in backoff, the live one goes first.
    client.exchange(raw, "pw")
    assert client.transport.sent[-1][1] == ("127.0.0.2", 1812)


def test_a_pinned_exchange_never_fails_over_and_no_answer_means_unavailable():
    client, clock, _ = make_client(timeout=1.0, retries=0)
    out = []
    client.exchange(downstream(Attr(0, 1, b"a")), None, pinned=1).addCallback(out.append)
    clock.advance(1.0)
    assert [addr[0] for _, addr in client.transport.sent] == ["127.0.0.2"]
    assert out[0].reply is None and out[0].server is None


def test_upstream_states_are_bound_to_client_single_use_and_expire():
    states = UpstreamStates()
    states.remember(b"s1", "vpn", 1, now=0)
    assert states.take(b"s1", "other", now=1) is None
    assert states.take(b"s1", "vpn", now=1) == 1
    assert states.take(b"s1", "vpn", now=2) is None
    states.remember(b"s2", "vpn", 0, now=0)
    assert states.take(b"s2", "vpn", now=1000) is None


# -- config --

BASE = textwrap.dedent("""\
    radius:
      clients:
        - name: vpn
          address: 10.0.0.0/24
          secret_env: S
    {client}
    ldap:
      servers: ["ldap://127.0.0.1"]
      bind_template: "uid={{username}},dc=x"
      user_base: "dc=x"
    approval:
      public_url: "https://mfa.example.com"
      database: ":memory:"
    {extra}
    """)


def parse(client="", extra=""):
    text = BASE.format(client=textwrap.indent(textwrap.dedent(client), "      "),
                       extra=textwrap.dedent(extra))
    return parse_config(text, base_dir=Path("."), env={"S": "a-long-enough-secret", "U": "up"})


def test_upstream_config_is_parsed_with_defaults():
    config = parse("""\
        primary: radius
        upstream:
          - address: 10.1.0.5:1812
            secret_env: U
          - address: "[2001:db8::5]:1812"
            secret_env: U
            timeout: 2
            retries: 0
        pass_attributes: [Class, Fortinet-Group-Name]
        """)
    up = config.radius.clients[0].upstream
    assert [s.name for s in up.servers] == ["10.1.0.5:1812", "[2001:db8::5]:1812"]
    assert up.servers[0].timeout == 3 and up.servers[0].retries == 1
    assert up.pass_attributes == frozenset({(0, 25), (12356, 1)})
    assert up.worst_case == 3 * 2 + 2 * 1
    assert "upstream" in config.timeout_advice()[0]


def test_upstream_config_errors_carry_their_paths():
    with pytest.raises(ConfigError) as err:
        parse("""\
            primary: radius
            upstream:
              - address: nps.example.com
                secret: inline
            pass_attributes: [Klass]
            """, extra="""\
            reply_attributes:
              - group: "cn=x"
                rule: nope
                attributes: ["Fortinet-Group = x"]
            """)
    text = "\n".join(err.value.problems)
    assert "radius.clients[0].upstream[0].address" in text
    assert "radius.clients[0].upstream[0].secret: inline secrets" in text
    assert "radius.clients[0].pass_attributes[0]: unknown attribute 'Klass'" in text
    assert "reply_attributes[0].rule: no policy rule is called 'nope'" in text
    assert "reply_attributes[0].attributes[0]: unknown attribute 'Fortinet-Group'" in text


def test_upstream_keys_without_primary_radius_are_errors():
    with pytest.raises(ConfigError, match=r"clients\[0\]\.pass_attributes: only used with"):
        parse("pass_attributes: all\n")


# -- engine --


class Upstream:
    """A scripted upstream primary (what UpstreamPrimary returns), recording passwords."""

    def __init__(self, result):
        self.result = result
        self.calls = []

    def authenticate(self, username, password):
        from twisted.internet import defer
        self.calls.append((username, password))
        return defer.succeed(self.result)


def engine_for(tmp_path, provider, reply_map=None):
    clock = Clock()
    counters = Counters()
    engine = Engine(clock=clock, directory=None, provider=provider,
                    push=PushConfig(timeout=30, failmode=None, no_device=NoDeviceMode.REJECT),
                    audit=AuditLog(str(tmp_path / "audit.jsonl"), counters),
                    counters=counters, reply_map=reply_map)
    return engine, counters


def req(primary, *, password=None, credential=b"mschap-response", user="alice"):
    return LoginRequest(protocol="radius", username=user, password=password, client_name="vpn",
                        source="127.0.0.1", calling_station="198.51.100.7", nas=None,
                        no_device=NoDeviceMode.REJECT, primary=primary, credential=credential)


def test_mschap_login_needs_no_password_and_gets_the_upstream_attributes_on_accept(tmp_path):
    provider = ScriptedProvider(mode="approve")
    engine, _ = engine_for(tmp_path, provider)
    up = Upstream(PrimaryResult(PrimaryStatus.OK, attributes=(Attr(0, 25, b"cls"),)))
    out = []
    engine.login(req(up)).addCallback(out.append)
    assert up.calls == [("alice", None)]
    assert out[0].outcome is Outcome.ACCEPT and out[0].attributes == (Attr(0, 25, b"cls"),)


def test_a_denied_push_never_carries_upstream_attributes(tmp_path):
    engine, _ = engine_for(tmp_path, ScriptedProvider(mode="deny"))
    up = Upstream(PrimaryResult(PrimaryStatus.OK, attributes=(Attr(0, 25, b"cls"),)))
    out = []
    engine.login(req(up)).addCallback(out.append)
    assert out[0].reason is Reason.PUSH_DENIED and out[0].attributes == ()


def test_no_password_and_no_proof_is_refused_before_any_upstream_traffic(tmp_path):
    engine, _ = engine_for(tmp_path, ScriptedProvider(mode="approve"))
    up = Upstream(PrimaryResult(PrimaryStatus.OK))
    out = []
    engine.login(req(up, credential=None)).addCallback(out.append)
    assert out[0].reason is Reason.NO_PASSWORD and up.calls == []
    engine.login(req(up, password="", credential=None)).addCallback(out.append)
    assert out[1].reason is Reason.EMPTY_PASSWORD and up.calls == []


def test_upstream_challenge_is_relayed_without_push_or_audit_event(tmp_path):
    provider = ScriptedProvider(mode="approve")
    engine, counters = engine_for(tmp_path, provider)
    up = Upstream(PrimaryResult(PrimaryStatus.CHALLENGE, attributes=(Attr(0, 24, b"st"),)))
    out = []
    engine.login(req(up)).addCallback(out.append)
    assert out[0].outcome is Outcome.CHALLENGE and out[0].attributes == (Attr(0, 24, b"st"),)
    assert provider.requests == [] and counters.get("upstream_challenges") == 1
    assert not (tmp_path / "audit.jsonl").exists() or \
        (tmp_path / "audit.jsonl").read_text() == ""


def test_eap_inner_identity_is_the_one_pushed_and_audited(tmp_path):
    provider = ScriptedProvider(mode="approve")
    engine, _ = engine_for(tmp_path, provider)
    up = Upstream(PrimaryResult(PrimaryStatus.OK, username="bob"))
    out = []
    engine.login(req(up, user="anonymous")).addCallback(out.append)
    assert [r.username for r in provider.requests] == ["bob"]
    assert out[0].user == "bob" and '"user":"bob"' in (tmp_path / "audit.jsonl").read_text()


def test_a_resent_mschap_login_joins_the_pending_one(tmp_path):
    provider = ScriptedProvider(mode="manual")
    engine, counters = engine_for(tmp_path, provider)
    up = Upstream(PrimaryResult(PrimaryStatus.OK))
    out = []
    engine.login(req(up)).addCallback(out.append)
    engine.login(req(up)).addCallback(out.append)  # the NAS's resend, new id
    engine.login(req(up, credential=b"other")).addCallback(out.append)  # another attempt
    assert counters.get("logins_joined") == 1 and len(up.calls) == 2
    # Another credential never shares the approval: its own push, refused while
    # the first is on the phone (one pending push per user).
    assert [d.reason for d in out] == [Reason.TOO_MANY_PENDING]
    provider.answer(provider.requests[0].txid)
    assert [d.outcome for d in out[1:]] == [Outcome.ACCEPT, Outcome.ACCEPT]


# -- groups_from_ldap --


def test_groups_from_ldap_needs_a_service_account():
    with pytest.raises(ConfigError, match=r"groups_from_ldap: needs ldap.bind_dn"):
        parse("""\
            primary: radius
            upstream: [{address: "10.1.0.5:1812", secret_env: U}]
            groups_from_ldap: true
            """)


def test_a_directory_never_says_ok_without_a_password_and_lookup_needs_bind_dn():
    from pushproxy.ldapauth import LdapDirectory

    config = parse()
    directory = LdapDirectory(config.ldap, Clock(), Counters())
    out = []
    directory.authenticate("alice", None).addCallback(out.append)
    directory.authenticate("alice", "").addCallback(out.append)
    directory.lookup("alice").addCallback(out.append)  # bind_template only: cannot search
    assert [r.status for r in out] == [PrimaryStatus.BAD_CREDENTIALS,
                                       PrimaryStatus.BAD_CREDENTIALS, PrimaryStatus.UNAVAILABLE]


def test_directory_name_drops_a_windows_domain_prefix_only():
    from pushproxy.upstream.primary import directory_name

    assert directory_name("CORP\\alice") == "alice"
    assert directory_name("alice@corp.example") == "alice@corp.example"


# -- reload --


class FakeUdpReactor(Clock):
    """A Clock that records UDP listeners (enough for UpstreamClients)."""

    def __init__(self):
        super().__init__()
        self.ports = []

    def listenUDP(self, port, protocol, interface=""):
        from twisted.internet import defer

        class Port:
            closed = False

            def getHost(self):
                from twisted.internet.address import IPv4Address
                return IPv4Address("UDP", interface, 40000 + len(reactor.ports))

            def stopListening(self):
                self.closed = True
                return defer.succeed(None)

        reactor = self
        p = Port()
        self.ports.append(p)
        return p


def test_reload_swaps_only_changed_upstream_clients_and_closes_the_old_after_a_grace():
    from pushproxy.upstream.component import UpstreamClients

    def clients(timeout):
        return parse(f"""\
            primary: radius
            upstream: [{{address: "10.1.0.5:1812", secret_env: U, timeout: {timeout},
                         retries: 0}}]
            """).radius.clients

    reactor = FakeUdpReactor()
    ups = UpstreamClients(reactor, Counters(), NAMES)
    ups.configure(clients(2))
    ups.start()
    first = ups.by_client["vpn"]
    ups.configure(clients(2))  # same settings: same client, same socket
    assert ups.by_client["vpn"] is first and len(reactor.ports) == 1
    ups.configure(clients(3))  # changed: a new client now, the old one closes later
    assert ups.by_client["vpn"] is not first and len(reactor.ports) == 2
    assert not reactor.ports[0].closed
    reactor.advance(3)  # old worst case 2 s + 1 s grace
    assert reactor.ports[0].closed and not reactor.ports[1].closed
    ups.configure(parse().radius.clients)  # primary: ldap again
    assert ups.by_client == {}
