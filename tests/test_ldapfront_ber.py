"""The LDAP front end's wire format: bounded framing, the few PDUs it reads, and fuzzing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pushproxy.ldapfront import ber


def bind(name="uid=alice,ou=people,dc=example,dc=com", password="pw", mid=7) -> bytes:
    return ber.bind_request(mid, name, password)


def test_frame_length_waits_for_the_whole_message_then_reports_its_size():
    raw = bind()
    for cut in range(len(raw)):
        assert ber.frame_length(raw[:cut], 1 << 20) is None
    assert ber.frame_length(raw + b"\x30", 1 << 20) == len(raw)


def test_a_declared_size_over_the_limit_is_refused_from_the_header_alone():
    """Six bytes are enough to refuse a message that claims 2 GiB: nothing is buffered."""
    with pytest.raises(ber.ProtocolError, match="exceeds the limit"):
        ber.frame_length(b"\x30\x84\x7f\xff\xff\xff", 1 << 20)
    with pytest.raises(ber.ProtocolError, match="exceeds the limit"):
        ber.frame_length(b"\x30\x82\x10\x01", 4096)


@pytest.mark.parametrize("data, why", [
    (b"\x31\x00", "expected an LDAPMessage"),
    (b"\x30\x80", "indefinite"),
    (b"\x30\x85\x00\x00\x00\x00\x01", "length of 5 bytes"),
])
def test_framing_refuses_what_ldap_does_not_allow(data, why):
    with pytest.raises(ber.ProtocolError, match=why):
        ber.frame_length(data, 1 << 20)


def test_a_bind_request_round_trips():
    msg = ber.parse_message(bind(password="s3cret,123456"))
    assert (msg.message_id, msg.op_tag) == (7, ber.BIND_REQUEST)
    req = ber.parse_bind(msg.op)
    assert (req.version, req.name, req.password, req.simple) == \
        (3, "uid=alice,ou=people,dc=example,dc=com", b"s3cret,123456", True)
    assert "s3cret" not in repr(req) and "s3cret" not in repr(msg)


def test_a_sasl_bind_names_its_mechanism():
    op = ber.integer(3) + ber.octets("") + ber.tlv(ber.AUTH_SASL, ber.octets("GSSAPI"))
    req = ber.parse_bind(ber.parse_message(ber.message(2, ber.BIND_REQUEST, op)).op)
    assert (req.simple, req.sasl_mechanism) == (False, "GSSAPI")


def test_large_message_ids_and_controls_are_accepted_and_trailing_junk_is_not():
    raw = ber.tlv(ber.SEQUENCE, ber.integer(ber.MAX_MESSAGE_ID)
                  + ber.tlv(ber.UNBIND_REQUEST, b"") + ber.tlv(ber.CONTROLS, b""))
    assert ber.parse_message(raw).message_id == ber.MAX_MESSAGE_ID
    with pytest.raises(ber.ProtocolError):
        ber.parse_message(ber.tlv(ber.SEQUENCE, ber.integer(1) + ber.tlv(0x42, b"")
                                  + ber.octets("x")))
    with pytest.raises(ber.ProtocolError, match="out of range"):
        ber.parse_message(ber.tlv(ber.SEQUENCE, ber.integer(-1) + ber.tlv(0x42, b"")))


def test_results_entries_and_starttls_responses_decode():
    done = ber.parse_message(ber.bind_response(3, ber.INVALID_CREDENTIALS, "Login denied"))
    assert ber.parse_result(done.op) == ber.Result(49, "", "Login denied")
    op = ber.octets("uid=a,dc=x") + ber.tlv(ber.SEQUENCE, ber.tlv(
        ber.SEQUENCE, ber.octets("UID") + ber.tlv(ber.SET, ber.octets("a") + ber.octets("b"))))
    assert ber.parse_entry(op) == ("uid=a,dc=x", {"uid": ["a", "b"]})
    ext = ber.parse_message(ber.extended_response(1, 0, name=ber.STARTTLS_OID))
    assert ext.op_tag == ber.EXTENDED_RESPONSE and ber.parse_result(ext.op).code == 0
    start = ber.parse_message(ber.extended_request(4, ber.STARTTLS_OID))
    assert ber.parse_extended_name(start.op) == ber.STARTTLS_OID


def test_long_values_use_long_form_lengths():
    raw = bind(password="x" * 70000)
    assert raw[1] == 0x83 and ber.frame_length(raw, 1 << 20) == len(raw)
    assert ber.parse_bind(ber.parse_message(raw).op).password == b"x" * 70000


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_protocol_error(data):
    """No input makes the decoder raise anything else (IndexError, RecursionError...)."""
    for parse in (lambda d: ber.frame_length(d, 1024), ber.parse_message, ber.parse_bind,
                  ber.parse_result, ber.parse_entry, ber.parse_extended_name):
        try:
            parse(data)
        except ber.ProtocolError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 60), st.integers(0, 255), st.binary(max_size=8))
def test_corrupting_one_byte_of_a_bind_only_ever_raises_protocol_error(pos, value, tail):
    raw = bytearray(bind())
    raw[pos % len(raw)] = value
    data = bytes(raw) + tail
    try:
        size = ber.frame_length(data, 1 << 20)
        if size is not None:
            msg = ber.parse_message(data[:size])
            if msg.op_tag == ber.BIND_REQUEST:
                ber.parse_bind(msg.op)
    except ber.ProtocolError:
        pass


def test_a_deeply_nested_message_is_framed_without_being_decoded():
    """The proxy forwards filters as bytes: 10,000 nested NOTs cost one frame_length call."""
    filt = ber.f_present("objectClass")
    for _ in range(10000):
        filt = ber.tlv(0xA2, filt)
    raw = ber.search_request(5, "dc=x", filt, ["uid"])
    msg = ber.parse_message(raw)
    assert ber.frame_length(raw, 1 << 20) == len(raw) and msg.op_tag == ber.SEARCH_REQUEST


def _expect_by_read_tlv(data, pos, end, tag, what):
    """`ber._expect` as it was: `read_tlv` and a tag check."""
    got, start, stop = ber.read_tlv(data, pos, end)
    if got != tag:
        raise ber.ProtocolError(f"{what}: expected tag 0x{tag:02x}, got 0x{got:02x}")
    return start, stop


def _outcome(fn, *args):
    try:
        return ("ok", fn(*args))
    except ber.ProtocolError as exc:
        return ("refused", str(exc))


def test_expect_is_read_tlv_and_a_tag_check_on_any_input():
    """`_expect` is written out for speed (issue 16): it must take and refuse exactly
    what `read_tlv` followed by a tag check does, with the same messages, on
    elements whole, truncated, overlong, with long-form lengths and wrong tags."""
    import random

    rng = random.Random(16)
    heads = [b"\x30", b"\x04", b"\x0a", b"\x1f", b"\x3f", b"\x61"]
    lengths = [b"\x00", b"\x05", b"\x7f", b"\x80", b"\x81\x03", b"\x82\x00\x04",
               b"\x84\x00\x00\x00\x02", b"\x85\x00\x00\x00\x00\x01", b"\x81"]
    for _ in range(4000):
        data = (rng.choice(heads) + rng.choice(lengths)
                + bytes(rng.randrange(256) for _ in range(rng.randrange(8))))
        if rng.random() < 0.3:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 10)))
        pos = rng.randrange(0, 2) if len(data) > 1 else 0
        end = rng.randrange(pos, len(data) + 1)
        tag = rng.choice([0x30, 0x04, 0x0a, 0x61, data[pos] if pos < len(data) else 0x30])
        assert _outcome(ber._expect, data, pos, end, tag, "x") == \
            _outcome(_expect_by_read_tlv, data, pos, end, tag, "x"), (data, pos, end, tag)
