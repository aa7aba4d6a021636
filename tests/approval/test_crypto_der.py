"""The raw r || s to DER conversion that every device signature check goes through."""

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from pushproxy.approval import crypto

EDGES = [bytes(32), b"\x00" * 31 + b"\x01", b"\x7f" + b"\xff" * 31, b"\x80" + bytes(31),
         b"\xff" * 32, b"\x00" * 16 + b"\x80" + bytes(15), b"\x00\x7f" + b"\x11" * 30]


@pytest.mark.parametrize("r", EDGES)
@pytest.mark.parametrize("s", EDGES)
def test_raw_to_der_equals_the_library_encoding_at_the_edges(r, s):
    """Zero, leading zero octets and a set high bit give exactly the library's DER."""
    expected = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
    assert crypto.raw_to_der(r + s) == expected


def test_raw_to_der_equals_the_library_encoding_for_random_values():
    for _ in range(2000):
        raw = os.urandom(64)
        expected = encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                        int.from_bytes(raw[32:], "big"))
        assert crypto.raw_to_der(raw) == expected


def test_verify_accepts_the_signature_and_refuses_any_changed_octet():
    """A real signature verifies; the text or any octet of r or s changed does not."""
    key = ec.generate_private_key(ec.SECP256R1())
    signature = crypto.sign(key, "pushproxy-answer-v1\ntx\nnonce")
    assert crypto.verify(key.public_key(), "pushproxy-answer-v1\ntx\nnonce", signature)
    assert not crypto.verify(key.public_key(), "pushproxy-answer-v1\ntx\nnoncE", signature)
    raw = crypto.b64url_decode(signature)
    for i in (0, 31, 32, 63):
        changed = raw[:i] + bytes((raw[i] ^ 1,)) + raw[i + 1:]
        assert not crypto.verify(key.public_key(), "pushproxy-answer-v1\ntx\nnonce",
                                 crypto.b64url_encode(changed))
