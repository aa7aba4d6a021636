"""Short, deterministic fuzz runs of the ``primary: radius`` path, and what fuzzing found there.

The oracle is `fuzz.upstream_target.run` (through `fuzz.radius_target.run_one`):
both legs fuzzed, the upstream servers played by the harness on the upstream
client's recording transport, time driven by a Clock. The long run is the same
``python -m fuzz.radius -atheris_runs=1000000`` as for the rest of the front
end (docs/security.md).
"""

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad import packet as rpacket

from fuzz import radius_target as rt
from fuzz import upstream_target as ut
from pushproxy.radius import attributes as attrs_mod
from pushproxy.upstream import packets
from tests.support import ScriptedProvider

SEEDS = ut.seeds()
EXAMPLES = int(os.environ.get("PUSHPROXY_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=EXAMPLES,
                suppress_health_check=list(HealthCheck))


@st.composite
def mutated(draw):
    """A seed with its steering octet redrawn and a few byte edits on either leg."""
    buf = bytearray(draw(st.sampled_from(SEEDS)))
    if draw(st.booleans()):
        buf[1] = draw(st.integers(0, 255))  # signing, timeouts, spoofing, push answer...
    size = struct.unpack("!H", buf[2:4])[0]
    for _ in range(draw(st.integers(0, 4))):
        # Edits after the length prefix: in the NAS's datagram or in the upstream reply.
        pos = draw(st.integers(4, len(buf) - 1))
        op = draw(st.sampled_from(("set", "set", "delete", "insert", "resign")))
        if op == "set":
            buf[pos] = draw(st.integers(0, 255))
        elif op == "delete" and len(buf) > 5:
            del buf[pos]
            size -= pos < 4 + size
        elif op == "insert":
            chunk = draw(st.binary(min_size=1, max_size=8))
            buf[pos:pos] = chunk
            size += len(chunk) if pos < 4 + size else 0
        else:
            buf[0] ^= rt.RESIGN
    buf[2:4] = struct.pack("!H", max(size, 0))
    return bytes(buf)


@FUZZ
@given(mutated())
def test_primary_radius_inputs_never_crash_never_forward_or_accept_wrongly(data):
    rt.run_one(data)


def _codes(seed):
    return rt.run_one(seed).codes


def test_the_seeds_reach_every_branch_the_oracle_judges():
    """Not vacuous: Accepts with MPPE keys, a relayed Reject and Challenge, a follow-up,
    an Accept after failover, and refusals (raw, spoofed, duplicate, every server silent)."""
    outcomes = [rt.run_one(seed) for seed in SEEDS]
    first = [o.codes[0] for o in outcomes]
    assert first == [2, 3, 2, 3, 11, 2, 2, 2, 3, 3, 3, 2]
    assert outcomes[4].forwarded == 2  # the Challenge's follow-up went upstream too
    assert outcomes[7].forwarded == 3 and outcomes[7].upstream_verified == 1  # B answered
    assert [o.upstream_refused for o in outcomes[8:12]] == [1, 1, 1, 1]  # late, raw, spoofed, dup
    assert all(len(set(o.codes)) == 1 for o in outcomes)  # the retransmit: the same reply


def test_mppe_keys_arrive_hidden_for_the_nas_and_decrypt_to_the_upstreams_key():
    proto = rt.make_protocol()
    rt.run_one(SEEDS[0], proto)
    reply, _ = proto.transport.sent[0]
    datagram = SEEDS[0][4:4 + struct.unpack("!H", SEEDS[0][2:4])[0]]
    mine = ut.hidden_values(rt.attributes(reply), rt.UP_CLIENT_SECRET, datagram[4:20])
    assert mine[(311, 16)] == [b"k" * 32] and mine[(311, 17)] == [b"K" * 32]
    assert mine[(0, 69)] == [b"\x01tunnel-pw"]


def test_the_oracle_catches_a_front_end_that_takes_unverified_upstream_replies(monkeypatch):
    """An upstream client that believes any datagram is caught on the raw (unsigned) Accept."""
    monkeypatch.setattr("pushproxy.upstream.client.decode_reply",
                        lambda data, *a, **kw: packets.UpstreamReply(data[0], ()))
    with pytest.raises(rt.OracleFailure, match="upstream reply the oracle refuses"):
        rt.run_one(SEEDS[9])


def test_the_oracle_catches_keys_hidden_with_the_upstream_secret(monkeypatch):
    """MPPE keys relayed as the upstream hid them (not re-encrypted for the NAS) are caught."""
    wire = attrs_mod.wire_value
    monkeypatch.setattr("pushproxy.radius.codec.wire_value",
                        lambda attr, secret, auth: wire(attr, rt.UP_SECRET, auth))
    with pytest.raises(rt.OracleFailure, match="hidden"):
        rt.run_one(SEEDS[0])


def test_the_oracle_catches_an_accept_after_a_denied_push(monkeypatch):
    """A push that is approved although the harness said deny is caught."""
    assert _codes(SEEDS[1]) == (rpacket.AccessReject, rpacket.AccessReject)
    approve = ScriptedProvider.request_approval

    def always(self, request):
        self.mode = "approve"
        return approve(self, request)

    monkeypatch.setattr(ScriptedProvider, "request_approval", always)
    with pytest.raises(rt.OracleFailure, match="Access-Accept without"):
        rt.run_one(SEEDS[1])


def test_a_status_server_from_the_primary_radius_client_is_answered_by_us_not_forwarded():
    """The first long run's only stop: the oracle wanted an upstream Accept behind every
    Accept, but RFC 5997 has us answer a signed Status-Server ourselves (an oracle fix)."""
    data = bytes.fromhex("1581003f0c3e003f3e484041bec344454647"
                         "48494a4b4c4d50121fdb51e25f6d6f75734f0e0201652d344f0801020006"
                         "6571")
    proto = rt.make_protocol()
    assert rt.run_one(data, proto).codes == (rpacket.AccessAccept,) * 3
    assert proto.upstreams["vpn-up"].transport.sent == []


# -- regressions: inputs the fuzzers found


def _oversized_reply_input() -> bytes:
    """A PAP login with 1000 octets of Proxy-State; the upstream's Accept has 3250 of Class."""
    auth = bytes(range(7, 23))
    body = bytes([80, 18]) + bytes(16) + b"\x01\x07carol" + bytes([2, 18]) + ut.hide(
        (0, 2), b"carol-pw", rt.UP_CLIENT_SECRET, auth, b"") + (bytes([33, 252]) + b"p" * 250) * 4
    down = rt.resign(bytes([1, 7]) + struct.pack("!H", 20 + len(body)) + auth + body,
                     rt.UP_CLIENT_SECRET)
    body = bytes([80, 18]) + bytes(16) + (bytes([25, 252]) + b"c" * 250) * 13
    up = bytes([2, 0]) + struct.pack("!H", 20 + len(body)) + bytes(16) + body
    return bytes([rt.UPSTREAM_SOURCE, ut.SIGN]) + struct.pack("!H", len(down)) + down + up


def test_a_relayed_reply_over_4096_octets_is_a_plain_reject_not_silence():
    """The Accept with the upstream's Class and the NAS's Proxy-State would be 4322 octets:
    encode_reply refused it, the engine's callback failed (internal error, no answer), and
    each NAS resend ran the login and its push again. Now: one push, a plain Reject."""
    proto = rt.make_protocol()
    outcome = rt.run_one(_oversized_reply_input(), proto)
    assert outcome.codes == (rpacket.AccessReject, rpacket.AccessReject)
    assert len(proto.engine.provider.requests) == 1
    assert proto.counters.get("radius_replies_too_large") == 1
    assert proto.counters.get("internal_errors") == 0
    # Counted and audited as what the NAS got, not as the Accept the engine decided.
    assert proto.counters.get("decisions", client="vpn-up", outcome="reject",
                              reason="reply_too_large") == 1
    assert proto.counters.get("decisions", client="vpn-up", outcome="accept",
                              reason="push_approved") == 0
    reply = proto.transport.sent[0][0]
    assert [len(v) for k, v in rt.attributes(reply) if k == 33] == [250] * 4  # still copied


def _with_inner_identity(name: bytes) -> bytes:
    """SEEDS[5] (an EAP login, the upstream's Accept names bob) naming ``name`` instead."""
    seed = SEEDS[5]
    at = seed.index(b"\x01\x05bob")
    return seed[:at] + bytes([1, len(name) + 2]) + name + seed[at + 5:]  # SIGN fixes the rest


@pytest.mark.parametrize("name", [b"bob ", b" bob", b"bo\x00b", "ｂob".encode(), b"b  ob"])
def test_an_eap_identity_that_would_be_refused_as_user_name_gets_no_push(name):
    """The upstream Accept's User-Name became the push identity unchecked: "bob " or "ｂob"
    find no device (no_device: allow lets them in) and miss bob's locks and limits."""
    proto = rt.make_protocol()
    outcome = rt.run_one(_with_inner_identity(name), proto)
    assert outcome.codes == (rpacket.AccessReject, rpacket.AccessReject)
    assert proto.engine.provider.requests == []


def test_a_clean_eap_identity_in_another_case_is_still_pushed_folded():
    proto = rt.make_protocol()
    assert rt.run_one(_with_inner_identity(b"Bob"), proto).codes[0] == rpacket.AccessAccept
    assert [r.username for r in proto.engine.provider.requests] == ["bob"]


def test_a_vendor_specific_with_vendor_id_0_is_forwarded_as_it_came():
    """Split, VSA(vendor 0, type 79) was forwarded as a real EAP-Message (and would have
    made the login an EAP login, the identity the upstream's): now one opaque attribute."""
    vsa = struct.pack("!L", 0) + bytes([79, 6]) + b"\x02\x01\x00\x06"
    assert attrs_mod.parse_attributes(bytes([26, 2 + len(vsa)]) + vsa) == [
        attrs_mod.Attr(0, 26, vsa)]
    seed = SEEDS[0]
    size = struct.unpack("!H", seed[2:4])[0]
    down = seed[4:4 + size] + bytes([26, len(vsa) + 2]) + vsa  # RESIGN fixes Length and MA
    proto = rt.make_protocol()
    rt.run_one(seed[:2] + struct.pack("!H", len(down)) + down + seed[4 + size:], proto)
    forwarded = proto.upstreams["vpn-up"].transport.sent[0][0]
    assert (26, vsa) in rt.attributes(forwarded) and not packets.is_eap(forwarded)
