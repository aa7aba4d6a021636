"""The codec reads and writes what pyrad did, without a pyrad packet on the hot path.

`decode_request` parses the attributes itself and `encode_reply` writes a reply
without named or raw attributes directly (issue 16: building pyrad packets was
a tenth of the allow path's CPU). pyrad, which both used before, is the oracle
here: the same values read from random requests (vendor attributes, repeated
Proxy-State, padding past the Length field), and byte-identical replies.
"""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest
from pyrad import packet as rpacket

from pushproxy.radius import codec

DICT = codec.load_dictionary()
SECRET = b"s3cret"


def _request(rng: random.Random, ma: bool) -> bytes:
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, id=rng.randrange(256), secret=SECRET,
                             dict=DICT, authenticator=rng.randbytes(16))
    pkt["User-Name"] = rng.choice(["alice", "b\u00f6b", "x" * 253])
    pkt["User-Password"] = pkt.PwCrypt(rng.choice(["pw", "", "p" * 100, "\u00e9t\u00e9"]))
    optional = [(31, lambda: rng.choice([b"198.51.100.7", b""])), (30, lambda: b"vpn"),
                (32, lambda: b"gw1"), (4, lambda: rng.randbytes(4)),
                (95, lambda: rng.randbytes(16)), (5, lambda: rng.randbytes(rng.choice([4, 2]))),
                (87, lambda: b"eth0"), (24, lambda: rng.randbytes(rng.randrange(1, 40))),
                (26, lambda: b"\x00\x00\x01\x37" + bytes((1, 6)) + b"abcd")]
    for kind, value in rng.sample(optional, rng.randrange(len(optional) + 1)):
        OrderedDict.setdefault(pkt, kind, []).append(value())  # raw values, by code
    for _ in range(rng.randrange(4)):
        OrderedDict.setdefault(pkt, 33, []).append(rng.randbytes(rng.randrange(0, 60)))
    if ma:
        pkt.add_message_authenticator()
    return pkt.RequestPacket()


def _pyrad_reading(data: bytes) -> dict:
    pkt = rpacket.AuthPacket(packet=data, secret=SECRET, dict=DICT)

    def one(code):
        values = dict.get(pkt, code, [])
        return values[0] if values else None
    return {"id": pkt.id, "authenticator": pkt.authenticator, "raw": pkt.raw_packet,
            "username": one(1).decode(), "calling_station": one(31), "nas_identifier": one(32),
            "state": one(24), "proxy_state": tuple(dict.get(pkt, 33, ())),
            "ma_valid": pkt.verify_message_authenticator() if 80 in dict.keys(pkt) else None}


@pytest.mark.parametrize("seed", range(200))
def test_a_request_decodes_to_the_values_pyrad_reads(seed):
    rng = random.Random(seed)
    data = _request(rng, ma=seed % 3 != 0)
    padded = data + rng.randbytes(rng.choice([0, 0, 7]))  # past Length: padding
    got = codec.decode_request(padded, SECRET, DICT, require_message_authenticator=False)
    want = _pyrad_reading(padded)
    assert got.has_message_authenticator == (want["ma_valid"] is not None)
    assert want["ma_valid"] in (True, None)
    assert (got.id, got.authenticator, got.raw) == (want["id"], want["authenticator"],
                                                    want["raw"])
    assert got.username == want["username"]
    assert got.calling_station == (want["calling_station"].decode()
                                   if want["calling_station"] is not None else None)
    assert got.nas_identifier == (want["nas_identifier"].decode()
                                  if want["nas_identifier"] is not None else None)
    assert (got.state, got.proxy_state) == (want["state"], want["proxy_state"])
    assert got.secret == SECRET and got.dictionary is DICT


def test_a_wrong_message_authenticator_is_still_dropped():
    data = bytearray(_request(random.Random(1), ma=True))
    assert data[20] == 80  # pyrad puts the Message-Authenticator first
    data[22] ^= 1
    with pytest.raises(codec.DropPacket) as caught:
        codec.decode_request(bytes(data), SECRET, DICT, require_message_authenticator=True)
    assert caught.value.reason is codec.DropReason.BAD_MESSAGE_AUTHENTICATOR


@pytest.mark.parametrize("code", [codec.ACCESS_ACCEPT, codec.ACCESS_REJECT,
                                  codec.ACCESS_CHALLENGE])
@pytest.mark.parametrize("proxy_state", [(), (b"",), (b"a", b"\x00" * 253, b"zz")])
@pytest.mark.parametrize("message", [None, "", "Login approved", "\u00e9" * 200])
@pytest.mark.parametrize("state", [None, b"", b"s" * 16, b"t" * 253])
def test_a_reply_without_attributes_is_the_bytes_pyrad_makes(code, proxy_state, message, state):
    rng = random.Random(f"{code}{proxy_state}{message}{state}")
    request = codec.AccessRequest(
        code=codec.ACCESS_REQUEST, id=rng.randrange(256), authenticator=rng.randbytes(16),
        username="alice", password="pw", password_present=True, calling_station=None,
        called_station=None, nas_ip=None, nas_identifier=None, has_message_authenticator=True,
        state=None, raw=b"", secret=SECRET, proxy_state=proxy_state, dictionary=DICT)
    direct = codec.encode_reply(request, code, reply_message=message, state=state)
    via_pyrad = codec._encode_reply_packet(request, code, message, state, (), ())
    assert direct == via_pyrad
    assert direct[20:22] == b"\x50\x12"  # Message-Authenticator first


@pytest.mark.parametrize("seed", range(50))
def test_hmac_md5_is_rfc_2104s(seed):
    import hmac

    rng = random.Random(seed)
    secret = rng.randbytes(rng.choice([0, 1, 16, 63, 64, 65, 200]))
    data = rng.randbytes(rng.randrange(0, 4096))
    assert codec.hmac_md5(secret, data) == hmac.digest(secret, data, "md5")
    assert codec.hmac_md5(secret, data) == hmac.digest(secret, data, "md5")  # remembered pads
