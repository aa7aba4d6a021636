"""Short, deterministic fuzz runs of the RadSec connection protocol (framing, 1.0 and 1.1).

The long run is ``python -m fuzz.radsec --runs 1000000`` (docs/radsec.md). The
oracle is `fuzz.radsec_target.run_one`: no exception escapes, a bad Length
closes the connection and nothing after it is answered, every reply answers a
complete request, no Access-Accept for anything but a valid login or Status-Server.
"""

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyrad import packet as rpacket

from fuzz import radsec_target as target

SEEDS = target.seeds()
EXAMPLES = int(os.environ.get("PUSHPROXY_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=EXAMPLES,
                suppress_health_check=list(HealthCheck))


@st.composite
def mutated(draw):
    """A valid seed stream with a few edits (bytes, Length fields, cuts), or noise."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=600))
    buf = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if len(buf) < 3:
            break
        pos = draw(st.integers(1, len(buf) - 1))
        op = draw(st.sampled_from(("set", "delete", "insert", "length", "truncate")))
        if op == "set":
            buf[pos] = draw(st.integers(0, 255))
        elif op == "delete" and len(buf) > 2:
            del buf[pos]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "length" and len(buf) > 5:
            buf[3:5] = struct.pack("!H", draw(st.sampled_from((0, 19, 20, 21, 4096, 4097,
                                                               65535))))
        elif op == "truncate":
            del buf[pos:]
    return bytes(buf) or b"\x00"


@FUZZ
@given(mutated())
def test_mutated_streams_never_crash_never_misreply_never_wrongly_accept(data):
    target.run_one(data)


def test_the_seeds_get_accepts_and_rejects_so_the_oracle_is_not_vacuous():
    outcomes = [target.run_one(seed) for seed in SEEDS]
    codes = [c for o in outcomes for c in o.codes]
    assert codes.count(rpacket.AccessAccept) >= 8  # alice and Status-Server, 1.0 and 1.1
    assert rpacket.AccessReject in codes  # bob's wrong password
    assert not any(o.aborted for o in outcomes)


def test_a_huge_length_in_the_second_packet_closes_after_answering_the_first():
    seed = SEEDS[0]
    first_len = struct.unpack("!H", seed[3:5])[0]
    data = bytearray(seed)
    data[1 + first_len + 2:1 + first_len + 4] = b"\xff\xff"
    outcome = target.run_one(bytes(data))
    assert outcome.aborted and outcome.codes == [rpacket.AccessAccept]


def test_many_connections_each_with_junk_stay_independent():
    """A thousand junk connections in a row: each closes, none answers, none raises."""
    for i in range(1000):
        outcome = target.run_one(bytes([i & 0x07]) + b"\x01\x00" + struct.pack("!H", 5000 + i)
                                 + bytes(30))
        assert outcome.aborted and outcome.codes == []
