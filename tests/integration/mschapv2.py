"""The peer's side of MS-CHAPv2 (RFC 2759) and its MPPE keys (RFC 3079), for tests.

radclient builds only MS-CHAPv1 requests, so the tests compute an
MS-CHAP2-Response themselves, and the MS-MPPE keys the server must derive
from it, to compare with what reaches the downstream client. MD4 is not in
OpenSSL 3's default provider, hence the small MD4 below (RFC 1320).
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes


def md4(data: bytes) -> bytes:
    """RFC 1320 MD4 (only for NT password hashes in tests)."""
    def f(x, y, z):
        return (x & y) | (~x & z)

    def g(x, y, z):
        return (x & y) | (x & z) | (y & z)

    def h(x, y, z):
        return x ^ y ^ z

    def rotl(v, s):
        v &= 0xFFFFFFFF
        return ((v << s) | (v >> (32 - s))) & 0xFFFFFFFF

    msg = data + b"\x80" + b"\x00" * ((55 - len(data)) % 64) + struct.pack("<Q", len(data) * 8)
    a, b, c, d = 0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476
    for off in range(0, len(msg), 64):
        x = struct.unpack("<16I", msg[off:off + 64])
        aa, bb, cc, dd = a, b, c, d
        for i in range(16):
            k, s = i, (3, 7, 11, 19)[i % 4]
            if i % 4 == 0:
                a = rotl(a + f(b, c, d) + x[k], s)
            elif i % 4 == 1:
                d = rotl(d + f(a, b, c) + x[k], s)
            elif i % 4 == 2:
                c = rotl(c + f(d, a, b) + x[k], s)
            else:
                b = rotl(b + f(c, d, a) + x[k], s)
        for i in range(16):
            k, s = (i % 4) * 4 + i // 4, (3, 5, 9, 13)[i % 4]
            if i % 4 == 0:
                a = rotl(a + g(b, c, d) + x[k] + 0x5A827999, s)
            elif i % 4 == 1:
                d = rotl(d + g(a, b, c) + x[k] + 0x5A827999, s)
            elif i % 4 == 2:
                c = rotl(c + g(d, a, b) + x[k] + 0x5A827999, s)
            else:
                b = rotl(b + g(c, d, a) + x[k] + 0x5A827999, s)
        order = (0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15)
        for i in range(16):
            k, s = order[i], (3, 9, 11, 15)[i % 4]
            if i % 4 == 0:
                a = rotl(a + h(b, c, d) + x[k] + 0x6ED9EBA1, s)
            elif i % 4 == 1:
                d = rotl(d + h(a, b, c) + x[k] + 0x6ED9EBA1, s)
            elif i % 4 == 2:
                c = rotl(c + h(d, a, b) + x[k] + 0x6ED9EBA1, s)
            else:
                b = rotl(b + h(c, d, a) + x[k] + 0x6ED9EBA1, s)
        a, b, c, d = [(v + w) & 0xFFFFFFFF for v, w in ((a, aa), (b, bb), (c, cc), (d, dd))]
    return struct.pack("<4I", a, b, c, d)


def nt_password_hash(password: str) -> bytes:
    """MD4 of the UTF-16LE password."""
    return md4(password.encode("utf-16-le"))


def challenge_hash(peer: bytes, authenticator: bytes, username: str) -> bytes:
    """RFC 2759 8.2."""
    return hashlib.sha1(peer + authenticator + username.encode("utf-8")).digest()[:8]


def _des_key(seven: bytes) -> bytes:
    bits = int.from_bytes(seven, "big")
    out = bytearray()
    for i in range(8):
        byte = ((bits >> (56 - 7 * (i + 1))) & 0x7F) << 1
        out.append(byte | (bin(byte).count("1") % 2 == 0))  # odd parity
    return bytes(out)


def _des(key7: bytes, block: bytes) -> bytes:
    enc = Cipher(TripleDES(_des_key(key7) * 3), modes.ECB()).encryptor()  # K1=K2=K3: DES
    return enc.update(block) + enc.finalize()


def nt_response(authenticator: bytes, peer: bytes, username: str, password: str) -> bytes:
    """RFC 2759 8.1 GenerateNTResponse: 24 octets."""
    challenge = challenge_hash(peer, authenticator, username)
    key = nt_password_hash(password) + b"\x00" * 5
    return b"".join(_des(key[i:i + 7], challenge) for i in (0, 7, 14))


def ms_chap2_response(ident: int, peer: bytes, response: bytes) -> bytes:
    """The MS-CHAP2-Response attribute value (RFC 2548 2.3.2): 50 octets."""
    return bytes([ident, 0]) + peer + b"\x00" * 8 + response


_MAGIC1 = b"This is the MPPE Master Key"
_MAGIC2 = (b"On the client side, this is the send key; "
           b"on the server side, it is the receive key.")
_MAGIC3 = (b"On the client side, this is the receive key; "
           b"on the server side, it is the send key.")


def mppe_keys(password: str, response: bytes) -> tuple[bytes, bytes]:
    """RFC 3079 128-bit start keys as the NAS (PPP server) gets them: (send, recv)."""
    hash_hash = md4(nt_password_hash(password))
    master = hashlib.sha1(hash_hash + response + _MAGIC1).digest()[:16]

    def start_key(magic: bytes) -> bytes:
        return hashlib.sha1(master + b"\x00" * 40 + magic + b"\xf2" * 40).digest()[:16]

    return start_key(_MAGIC3), start_key(_MAGIC2)
