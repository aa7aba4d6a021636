"""Raw attributes, hidden values (RFC 2865 5.2, RFC 2868 3.5 / RFC 2548 2.4.2) and names."""

import hashlib

import pytest

from pushproxy.radius.attributes import (SALT_HIDING, Attr, AttributeError_, Names,
                                         encode_attributes, hide_password, parse_attributes,
                                         reveal, reveal_password, salt_decrypt, salt_encrypt,
                                         wire_value)
from pushproxy.radius.codec import load_dictionary

NAMES = Names(load_dictionary())
AUTH = bytes(range(16))


def test_salt_hiding_follows_the_rfc_construction_block_by_block():
    """Checked against the RFC 2548 2.4.2 formula written out by hand (two blocks)."""
    key, secret, salt = bytes(range(100, 120)), b"s3cret", b"\x81\x02"
    hidden = salt_encrypt(key, secret, AUTH, salt=salt)
    plain = bytes([len(key)]) + key + b"\x00" * 11  # 32 octets
    b1 = hashlib.md5(secret + AUTH + salt).digest()
    c1 = bytes(x ^ y for x, y in zip(plain[:16], b1))
    b2 = hashlib.md5(secret + c1).digest()
    c2 = bytes(x ^ y for x, y in zip(plain[16:], b2))
    assert hidden == salt + c1 + c2
    assert salt_decrypt(hidden, secret, AUTH) == key


def test_a_fresh_salt_has_its_high_bit_set_and_differs_each_time():
    salts = {salt_encrypt(b"k" * 16, b"s", AUTH)[:2] for _ in range(50)}
    assert len(salts) > 40 and all(s[0] & 0x80 for s in salts)


def test_salt_decrypt_with_the_wrong_secret_fails_or_differs():
    hidden = salt_encrypt(b"k" * 16, b"right", AUTH)
    try:
        assert salt_decrypt(hidden, b"wrong", AUTH) != b"k" * 16
    except AttributeError_:
        pass


def test_bad_salt_lengths_raise():
    with pytest.raises(AttributeError_):
        salt_decrypt(b"\x80\x01" + b"x" * 15, b"s", AUTH)
    with pytest.raises(AttributeError_):
        salt_encrypt(b"k", b"s", AUTH, salt=b"\x01\x02")  # high bit clear


def test_user_password_hiding_round_trips_and_matches_rfc_2865():
    hidden = hide_password(b"pw", b"secret", AUTH)
    assert hidden == bytes(x ^ y for x, y in zip(b"pw".ljust(16, b"\x00"),
                                                   hashlib.md5(b"secret" + AUTH).digest()))
    assert reveal_password(hidden, b"secret", AUTH) == b"pw"
    long = b"p" * 40
    assert reveal_password(hide_password(long, b"s", AUTH), b"s", AUTH) == long


def test_parse_splits_vendor_attributes_and_keeps_odd_ones_raw():
    attrs = [Attr(0, 1, b"alice"), Attr(311, 26, b"\x01S=ABC"), Attr(12356, 1, b"grp")]
    data = encode_attributes(attrs)
    assert parse_attributes(data) == attrs
    odd = b"\x1a\x09\x00\x00\x00\x09\x01\x09x"  # sub-attribute length overruns
    assert parse_attributes(odd) == [Attr(0, 26, odd[2:])]
    with pytest.raises(AttributeError_):
        parse_attributes(b"\x01\x01")


def test_mppe_key_moves_from_one_leg_to_the_other():
    """Revealed with the upstream's secret/authenticator, hidden again for the client's."""
    key = bytes(range(16))
    up_auth, down_auth = b"U" * 16, b"D" * 16
    received = Attr(311, 16, salt_encrypt(key, b"upstream", up_auth))
    clear = reveal(received, SALT_HIDING, b"upstream", up_auth)
    assert clear.value == key
    downstream = wire_value(clear, b"downstream", down_auth)
    assert salt_decrypt(downstream, b"downstream", down_auth) == key
    assert downstream[:2] != received.value[:2] or downstream != received.value


def test_names_parse_vendor_and_standard_attributes():
    assert NAMES.parse("Fortinet-Group-Name = vpn") == Attr(12356, 1, b"vpn")
    assert NAMES.parse('Cisco-AVPair = "shell:priv-lvl=15"') == Attr(9, 1, b"shell:priv-lvl=15")
    assert NAMES.parse("Service-Type = Framed-User").value == b"\x00\x00\x00\x02"
    assert NAMES.parse("Session-Timeout = 3600").value == (3600).to_bytes(4, "big")
    assert NAMES.parse("Class = 0x0102").value == b"\x01\x02"
    assert NAMES.parse("PaloAlto-User-Group = gp").key == (25461, 5)


@pytest.mark.parametrize("text, needle", [
    ("No-Such-Attr = 1", "unknown attribute"),
    ("MS-MPPE-Send-Key = 0x00", "hidden"),
    ("User-Password = x", "hidden"),
    ("Session-Timeout = soon", "not a valid integer"),
    ("Filter-Id", "is not 'Attribute-Name = value'"),
    ("Message-Authenticator = 0x00", "protocol"),
])
def test_names_refuse_bad_config_text(text, needle):
    with pytest.raises(AttributeError_, match=needle):
        NAMES.parse(text)


def test_vendor_numbers_match_freeradius_dictionaries():
    """radclient decodes what we send only if ids and numbers are FreeRADIUS's."""
    expected = {"Cisco-AVPair": (9, 1), "Fortinet-Group-Name": (12356, 1),
                "PaloAlto-Admin-Role": (25461, 1), "Juniper-Local-User-Name": (2636, 1),
                "WISPr-Bandwidth-Max-Down": (14122, 8), "MS-MPPE-Recv-Key": (311, 17),
                "MS-CHAP2-Success": (311, 26), "ASA-Group-Policy": (3076, 25)}
    for name, key in expected.items():
        assert NAMES.parse(f"{name} = 1").key == key if NAMES.spec(name).hiding == 0 \
            else NAMES.spec(name).type == key[1]
