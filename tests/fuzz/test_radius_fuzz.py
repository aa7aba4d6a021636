"""Short, deterministic fuzz runs of the RADIUS front end, and regressions for what fuzzing found.

The long coverage-guided run is ``python -m fuzz.radius -atheris_runs=1000000``
(docs/security.md); these runs use hypothesis with a fixed derandomized seed so
CI needs nothing new (``PUSHPROXY_FUZZ_EXAMPLES`` raises the number of examples). The oracle is `fuzz.radius_target.run_one`: no exception
escapes, every reply is signed with Message-Authenticator first and a correct
Response Authenticator, no reply to an unknown source or a badly signed
request, no Access-Accept for anything but a valid login.
"""

import hashlib
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad import packet as rpacket

from fuzz import radius_target as target
from pushproxy.radius import codec

SEEDS = target.seeds()
EXAMPLES = int(os.environ.get("PUSHPROXY_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=EXAMPLES,
                suppress_health_check=list(HealthCheck))


@st.composite
def mutated(draw):
    """A valid seed with a few byte edits (overwrite, delete, insert), or pure noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=300))
    buf = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(1, len(buf) - 1))
        op = draw(st.sampled_from(("set", "set", "delete", "insert", "resign")))
        if op == "set":
            buf[pos] = draw(st.integers(0, 255))
        elif op == "delete" and len(buf) > 2:
            del buf[pos]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        else:
            buf[0] ^= target.RESIGN
    return bytes(buf)


@FUZZ
@given(mutated())
def test_mutated_datagrams_never_crash_never_misreply_never_wrongly_accept(data):
    target.run_one(data)


def test_the_valid_seeds_reach_the_engine_and_a_valid_login_is_accepted():
    """The oracle is not vacuous: seeds of valid logins get Accept, wrong passwords Reject."""
    outcomes = [target.run_one(seed) for seed in SEEDS]
    accepts = sum(1 for o in outcomes if o.codes and o.codes[0] == rpacket.AccessAccept)
    rejects = sum(1 for o in outcomes if o.codes and o.codes[0] == rpacket.AccessReject)
    challenges = sum(1 for o in outcomes if o.codes and o.codes[0] == rpacket.AccessChallenge)
    assert accepts >= 4 and rejects >= 4 and challenges == 1  # bob at the number-matching client
    assert all(len(set(o.codes)) <= 1 for o in outcomes)  # retransmit: identical reply


def test_the_oracle_catches_a_reply_with_message_authenticator_last(monkeypatch):
    """A server that puts Message-Authenticator anywhere but first is caught (the check can fail)."""
    encode = codec.encode_reply

    def misplaced(request, code, **kw):
        reply = encode(request, code, **kw)
        return reply[:20] + reply[38:] + reply[20:38]  # the first 18 octets are the MA

    monkeypatch.setattr(codec, "encode_reply", misplaced)
    with pytest.raises(target.OracleFailure, match="not the first attribute"):
        target.run_one(SEEDS[0])


def test_the_oracle_catches_an_accept_for_a_wrong_password(monkeypatch):
    """A server that accepts every primary check is caught."""
    proto = target.make_protocol()
    proto.engine.directory.users["bob"] = "wrong"  # seed 2 is bob with password "wrong"
    with pytest.raises(target.OracleFailure, match="Access-Accept for an invalid request"):
        target.run_one(SEEDS[2], proto)


# -- regressions: inputs the fuzzers found


def _legacy_request(hidden_suffix: bytes) -> bytes:
    """An Access-Request from the legacy client whose password is "alice-pw" + raw octets."""
    secret, auth = target.LEGACY_SECRET, bytes(range(16))
    plain = b"alice-pw" + hidden_suffix
    plain += bytes(-len(plain) % 16)
    hidden, last = b"", auth
    for i in range(0, len(plain), 16):
        pad = hashlib.md5(secret + last).digest()
        last = bytes(a ^ b for a, b in zip(plain[i:i + 16], pad))
        hidden += last
    attrs = b"\x01\x07alice" + bytes([2, 2 + len(hidden)]) + hidden
    return bytes([1, 9]) + struct.pack("!H", 20 + len(attrs)) + auth + attrs


def test_password_with_invalid_utf8_after_the_real_one_is_not_accepted():
    """pyrad's PwDecrypt ignores invalid UTF-8, so "alice-pw\\x98" passed as "alice-pw"."""
    data = _legacy_request(b"\x98")
    request = codec.decode_request(data, target.LEGACY_SECRET, target.DICTIONARY,
                                   require_message_authenticator=False)
    assert request.password is None
    outcome = target.run_one(bytes([1]) + data)  # control 1: the legacy client
    assert outcome.codes == (rpacket.AccessReject, rpacket.AccessReject)


def test_the_same_password_without_junk_is_still_accepted():
    outcome = target.run_one(bytes([1]) + _legacy_request(b""))
    assert outcome.codes == (rpacket.AccessAccept, rpacket.AccessAccept)


def test_attribute_running_past_the_packet_end_is_dropped_as_malformed():
    """pyrad silently cut a last attribute whose length ran past the packet; we drop it."""
    data = bytes.fromhex("010c00330c0d0e0f1011120f10111213131415161718191a1b0107616c6963650212"
                         "5c1245ccae52766a549eeb8991d5e55d0406c0000209")
    with pytest.raises(codec.DropPacket) as exc:
        codec.decode_request(data, target.LEGACY_SECRET, target.DICTIONARY,
                             require_message_authenticator=False)
    assert exc.value.reason is codec.DropReason.MALFORMED
    proto = target.make_protocol()
    target.run_one(bytes([1]) + data, proto)
    assert proto.transport.sent == []
    assert proto.counters.get("radius_drops", reason="malformed") == 2
