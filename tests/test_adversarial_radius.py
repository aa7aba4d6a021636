"""Adversarial RADIUS input through the real front end, with a Clock and recording fakes.

Blast-RADIUS (replies always signed, Message-Authenticator first; requests
without it dropped where required), spoofed and unknown sources by the
thousand, retransmit and request floods with bounded memory, oversized
packets and attributes, and username variants that a directory folds to
another user. Every reply is checked with the fuzz oracle's own RFC 2865 /
RFC 3579 code (`fuzz.radius_target.check_reply`), not with pyrad.
"""

import logging
import struct

import pytest
from pyrad import packet as rpacket

from fuzz.radius_target import (DICTIONARY, LEGACY_SECRET, SECRET, attributes, check_reply,
                                make_protocol, resign)
from pushproxy.radius import codec
from pushproxy.radius.retransmit import RetransmitTable

NAS = ("127.0.0.1", 40000)
LEGACY = ("127.0.0.9", 40001)


def signed(user="alice", password="alice-pw", secret=SECRET, ident=1, ma=True, auth=None,
           proxy_states=(), **attrs):
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=ident, secret=secret,
                             dict=DICTIONARY, authenticator=auth)
    pkt["User-Name"] = user
    pkt["User-Password"] = pkt.PwCrypt(password)
    for name, value in attrs.items():
        pkt[name.replace("_", "-")] = value
    for value in proxy_states:
        pkt.AddAttribute("Proxy-State", value)
    if ma:
        pkt.add_message_authenticator()
    return pkt.RequestPacket()


def drops(proto, reason):
    return proto.counters.get("radius_drops", reason=reason)


# -- Blast-RADIUS: every reply signed, Message-Authenticator first


@pytest.mark.parametrize("addr, secret, ma, password, code", [
    (NAS, SECRET, True, "alice-pw", rpacket.AccessAccept),
    (NAS, SECRET, True, "wrong", rpacket.AccessReject),
    (LEGACY, LEGACY_SECRET, False, "alice-pw", rpacket.AccessAccept),
    (LEGACY, LEGACY_SECRET, False, "wrong", rpacket.AccessReject),
])
def test_every_reply_has_a_correct_message_authenticator_first_even_when_the_request_had_none(
        addr, secret, ma, password, code):
    proto = make_protocol()
    raw = signed(password=password, secret=secret, ma=ma)
    proto.datagramReceived(raw, addr)
    (reply, to), = proto.transport.sent
    assert to == addr and check_reply(reply, raw, secret) == code


def test_a_request_without_message_authenticator_is_dropped_before_any_work_where_required():
    proto = make_protocol()
    proto.datagramReceived(signed(ma=False), NAS)
    assert proto.transport.sent == [] and proto.engine.directory.calls == []
    assert drops(proto, "missing_message_authenticator") == 1


def test_status_server_without_message_authenticator_is_dropped_even_from_a_legacy_client():
    proto = make_protocol()
    pkt = rpacket.AuthPacket(code=rpacket.StatusServer, id=5, secret=LEGACY_SECRET,
                             dict=DICTIONARY)
    proto.datagramReceived(pkt.RequestPacket(), LEGACY)
    assert proto.transport.sent == []
    assert drops(proto, "missing_message_authenticator") == 1


def test_a_forged_reply_cannot_be_made_from_a_recorded_one_for_another_request():
    """A reply is bound to its request: it verifies for that request and no other."""
    proto = make_protocol()
    first, second = signed(ident=1, password="wrong"), signed(ident=1, password="alice-pw")
    proto.datagramReceived(first, NAS)
    proto.datagramReceived(second, NAS)
    (reject, _), (accept, _) = proto.transport.sent
    assert check_reply(accept, second, SECRET) == rpacket.AccessAccept
    with pytest.raises(AssertionError):
        check_reply(accept, first, SECRET)


# -- spoofed and unknown sources


def test_thousands_of_spoofed_unknown_sources_are_dropped_counted_and_logged_boundedly(caplog):
    proto = make_protocol()
    raw = signed()
    sources = [f"10.{i // 250}.{i % 250}.{1 + i % 7}" for i in range(5000)]
    sources += [f"2001:db8::{i:x}" for i in range(1000)] + [f"::ffff:192.0.2.{i}" for i in
                                                           range(1, 255)]
    with caplog.at_level(logging.INFO, logger="pushproxy.radius"):
        for i, host in enumerate(sources):
            proto.datagramReceived(raw, (host, 1024 + i % 60000))
    assert proto.transport.sent == [] and proto.engine.directory.calls == []
    assert drops(proto, "unknown_client") == len(sources)
    lines = [r for r in caplog.records if "radius.drop" in r.getMessage()]
    assert len(lines) <= proto._drop_log.max_lines
    assert proto._drop_log.over_budget == len(sources) - len(lines)
    assert len(proto._drop_log._last) <= proto._drop_log.max_keys
    assert len(proto.table) == 0  # unknown sources never reach the retransmit table


@pytest.mark.parametrize("host", ["0.0.0.0", "255.255.255.255", "::1", "::ffff:10.0.0.1",
                                  "fe80::1%eth0", "not-an-address", "", "127.0.0.1 "])
def test_spoofed_source_forms_outside_the_client_networks_are_unknown(host):
    proto = make_protocol()
    proto.datagramReceived(signed(), (host, 1812))
    assert proto.transport.sent == []
    assert drops(proto, "unknown_client") == 1


def test_a_request_signed_for_one_client_but_sent_from_another_clients_address_is_refused():
    """The secret is the client's, found by source address: another client's secret fails."""
    proto = make_protocol()
    proto.datagramReceived(signed(secret=SECRET), LEGACY)  # has MA: it does not verify
    assert drops(proto, "bad_message_authenticator") == 1
    proto.datagramReceived(signed(secret=SECRET, ma=False, ident=2), LEGACY)
    (reply, _), = proto.transport.sent  # no MA required there: the password is garbage
    assert reply[0] == rpacket.AccessReject
    assert proto.engine.provider.requests == []


# -- floods: retransmits and distinct requests, bounded memory


def test_a_flood_of_retransmits_binds_once_pushes_once_and_keeps_one_table_entry():
    proto = make_protocol()
    proto.engine.directory.hold = True
    raw = signed()
    for _ in range(20_000):
        proto.datagramReceived(raw, NAS)
    assert proto.engine.directory.calls == ["alice"] and len(proto.table) == 1
    assert proto.counters.get("radius_retransmits", client="vpn", state="in_flight") == 19_999
    proto.engine.directory.release()
    for _ in range(20_000):
        proto.datagramReceived(raw, NAS)
    replies = {data for data, _ in proto.transport.sent}
    assert len(proto.transport.sent) == 20_001 and len(replies) == 1
    assert len(proto.engine.provider.requests) == 1 and len(proto.table) == 1


def test_a_flood_of_distinct_requests_is_capped_by_max_pending_and_the_answered_cache():
    proto = make_protocol()
    proto.max_pending = 50
    proto.engine.directory.hold = True
    for i in range(2000):
        proto.datagramReceived(signed(user=f"user{i}", ident=i % 256,
                                      auth=struct.pack("!16s", b"%d" % i)), NAS)
    assert proto.engine.pending == 50 and len(proto.table) == 50
    assert drops(proto, "overloaded") == 1950
    proto.engine.directory.hold = False
    proto.engine.directory.release()
    proto.table = RetransmitTable(30, max_answered=100)
    proto.max_pending = 100_000
    for i in range(2000):  # unknown users: answered at once
        proto.datagramReceived(signed(user=f"user{i}", ident=i % 256,
                                      auth=struct.pack("!16s", b"x%d" % i)), NAS)
    assert len(proto.table) == 100


# -- oversized packets and attributes


def test_a_datagram_longer_than_4096_octets_is_dropped_as_malformed():
    proto = make_protocol()
    raw = signed(proxy_states=[bytes(253)] * 17)
    assert len(raw) > 4096
    proto.datagramReceived(raw, NAS)
    assert proto.transport.sent == [] and drops(proto, "malformed") == 1


def test_octets_past_the_length_field_are_padding_within_4096_octets_only():
    """The accounting port's rule (`codec.peek_header`, one for both ports): padding
    up to a 4,096-octet datagram is ignored; past that the datagram is malformed,
    even a padded copy of a request already answered (not served from the cache)."""
    proto = make_protocol()
    raw = signed(password="wrong")
    proto.datagramReceived(raw + b"\xff" * (4096 - len(raw)), NAS)
    (reply, _), = proto.transport.sent
    assert check_reply(reply, raw, SECRET) == rpacket.AccessReject
    for size in (4097, 8192, 60_000):
        proto.datagramReceived(raw + b"\xff" * (size - len(raw)), NAS)
    assert len(proto.transport.sent) == 1 and drops(proto, "malformed") == 3
    assert proto.counters.get("radius_retransmits", client="vpn", state="answered") == 0


@pytest.mark.parametrize("secret, addr, ma", [(SECRET, NAS, True),
                                              (LEGACY_SECRET, LEGACY, False)])
def test_a_request_of_maximum_size_gets_a_reply_within_4096_octets_with_every_proxy_state(
        secret, addr, ma):
    """RFC 2865 caps packets at 4096: the Reply-Message gives way to copied Proxy-State."""
    room = 4096 - 20 - 7 - 18 - (18 if ma else 0)
    states = [bytes([i]) * 253 for i in range(room // 255)]
    states.append(b"z" * (room - 255 * len(states) - 2))
    raw = signed(password="wrong", secret=secret, ma=ma, proxy_states=states)
    assert len(raw) == 4096
    proto = make_protocol()
    proto.datagramReceived(raw, addr)
    (reply, _), = proto.transport.sent
    assert len(reply) <= 4096 and check_reply(reply, raw, secret) == rpacket.AccessReject
    assert [v for k, v in attributes(reply) if k == 33] == states


@pytest.mark.parametrize("user", ["a" * 253, "\u00e9" * 126, "x"])
def test_longest_user_names_are_handled(user):
    proto = make_protocol()
    raw = signed(user=user)
    proto.datagramReceived(raw, NAS)
    (reply, _), = proto.transport.sent
    assert check_reply(reply, raw, SECRET) == rpacket.AccessReject


def test_many_tiny_and_empty_attributes_are_handled():
    proto = make_protocol()
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=3, secret=SECRET, dict=DICTIONARY)
    raw = pkt.RequestPacket() + b"\x1a\x02" * 1000 + b"\x01\x02"  # empty VSAs, empty User-Name
    raw = resign(raw + b"\x50\x12" + bytes(16), SECRET)  # fix Length, sign
    proto.datagramReceived(raw, NAS)
    for reply, _ in proto.transport.sent:
        assert check_reply(reply, raw, SECRET) == rpacket.AccessReject
    assert proto.engine.directory.calls == []


# -- usernames the directory folds to another user (found with a real slapd)


@pytest.mark.parametrize("user", ["alice ", " alice", "al  ice", "\uff41lice", "alice\u2003",
                                  "\u212bngstr\u00f6m"])
def test_username_variants_the_directory_would_fold_are_refused_before_any_bind(user):
    """slapd matches "alice " and fullwidth "ａlice" to alice; devices are keyed on the
    typed name, so such a login would find no device (and pass with no_device: allow)."""
    proto = make_protocol()
    raw = signed(user=user)
    proto.datagramReceived(raw, NAS)
    (reply, _), = proto.transport.sent
    assert check_reply(reply, raw, SECRET) == rpacket.AccessReject
    assert proto.engine.directory.calls == [] and proto.engine.provider.requests == []


def test_codec_reports_every_oversize_as_a_drop_reason():
    with pytest.raises(codec.DropPacket) as exc:
        codec.peek_header(b"\x01\x01\x10\x01" + bytes(4097))
    assert exc.value.reason is codec.DropReason.MALFORMED


@pytest.mark.parametrize("data, detail", [
    (b"\x01\x01\x00\x14" + bytes(4092), None),  # 4,096 octets, Length 20: padding
    (b"\x01\x01\x10\x00" + bytes(4092), None),  # Length 4,096, exact
    (b"\x01\x01\x00\x14" + bytes(4093), "4097 octets is more than 4096"),
    (b"\x01\x01\x00\x14" + bytes(8188), "8192 octets is more than 4096"),
    (b"\x01\x01\x00\x13" + bytes(40), "length field 19 does not fit 44 octets received"),
    (b"\x01\x01\x00\x40" + bytes(40), "length field 64 does not fit 44 octets received"),
    (b"\x01\x01\x00\x14" + bytes(10), "14 octets is shorter than a header"),
], ids=["padded_4096", "exact_4096", "4097", "8192", "length_19", "length_past_end",
        "short"])
def test_one_size_rule_for_every_port(data, detail):
    """`peek_header` is the size rule of the authentication and accounting ports
    (and of replies from upstream servers): one place, one reason, one detail."""
    if detail is None:
        assert codec.peek_header(data)[:2] == (1, 1)
        return
    with pytest.raises(codec.DropPacket) as exc:
        codec.peek_header(data)
    assert (exc.value.reason, exc.value.detail) == (codec.DropReason.MALFORMED, detail)


def test_the_udp_read_takes_more_than_a_radius_packet():
    """A datagram longer than the read is cut by the kernel: the read must stay
    longer than 4,096 octets, so that a cut datagram is still seen as oversized
    and never passes as a padded packet."""
    import inspect

    from twisted.internet import reactor
    from twisted.internet.protocol import DatagramProtocol

    from pushproxy import reuseport

    port = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")  # as the daemon
    try:
        assert port.maxPacketSize > codec.MAX_PACKET
    finally:
        port.stopListening()
    default = inspect.signature(reuseport.listen_udp).parameters["max_packet"].default
    assert default > codec.MAX_PACKET  # the workers' shared ports
