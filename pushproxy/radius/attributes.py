"""Raw RADIUS attributes: ordered parsing, encoding, hidden values, names from the dictionary.

The front end mostly reads a handful of attributes by name (`codec`). Relaying
an upstream server's reply needs more: every attribute, in order, vendor
attributes split out, and the hidden ones (MS-MPPE keys, Tunnel-Password,
MS-CHAP-MPPE-Keys) decrypted with one leg's secret and Request Authenticator
and encrypted again for the other leg. An `Attr` holds a hidden value in
clear; only `encode_attributes` hides it, for the packet it goes into.

Everything here is pure and raises `AttributeError_` (one base class) on bad
input.
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import struct
from dataclasses import dataclass, field

VENDOR_SPECIFIC = 26
USER_PASSWORD = 2
TUNNEL_PASSWORD = 69

# Hiding schemes, as the dictionaries' encrypt= flag numbers them.
PLAIN = 0
USER_PASSWORD_HIDING = 1  # RFC 2865 5.2 (also MS-CHAP-MPPE-Keys, RFC 2548 2.4.1)
SALT_HIDING = 2  # RFC 2868 3.5 / RFC 2548 2.4.2 (Tunnel-Password, MS-MPPE-*-Key)


class AttributeError_(ValueError):
    """An attribute (or its config text) cannot be parsed, hidden or revealed."""


@dataclass(frozen=True)
class Attr:
    """One attribute. ``vendor`` 0 is the standard space; ``value`` is in clear.

    A Vendor-Specific attribute whose payload does not split into the common
    one-octet type/length sub-attributes, or whose Vendor-Id is 0, stays one
    ``Attr(0, 26, payload)``.
    ``hiding`` says how the value must be hidden on the wire (``value`` being
    the clear text); ``tag`` is the RFC 2868 tag of a salt-hidden tagged value.
    """

    vendor: int
    type: int
    value: bytes = field(repr=False)
    hiding: int = PLAIN
    tag: int | None = None

    @property
    def key(self) -> tuple[int, int]:
        """(vendor, type): how filters and the dictionary know the attribute."""
        return (self.vendor, self.type)


def parse_attributes(data: bytes) -> list[Attr]:
    """The attributes of a packet body (after the 20-octet header), in order, unhidden."""
    out: list[Attr] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise AttributeError_("truncated attribute header")
        atype, length = data[pos], data[pos + 1]
        if length < 2 or pos + length > len(data):
            raise AttributeError_(f"attribute {atype} has a bad length {length}")
        value = data[pos + 2:pos + length]
        pos += length
        if atype == VENDOR_SPECIFIC:
            out.extend(_split_vsa(value))
        else:
            out.append(Attr(0, atype, value))
    return out


def _split_vsa(payload: bytes) -> list[Attr]:
    if len(payload) < 6:
        return [Attr(0, VENDOR_SPECIFIC, payload)]
    vendor = struct.unpack("!L", payload[:4])[0]
    if vendor == 0:
        # Vendor-Id 0 is no vendor: split, its sub-attributes would pass for
        # standard ones (an EAP-Message, a State, a User-Name) on the other leg
        # (found by fuzz/upstream_target.py). Relayed as the opaque VSA it is.
        return [Attr(0, VENDOR_SPECIFIC, payload)]
    subs, pos = [], 4
    while pos < len(payload):
        if pos + 2 > len(payload):
            return [Attr(0, VENDOR_SPECIFIC, payload)]
        stype, slen = payload[pos], payload[pos + 1]
        if slen < 2 or pos + slen > len(payload):
            return [Attr(0, VENDOR_SPECIFIC, payload)]
        subs.append(Attr(vendor, stype, payload[pos + 2:pos + slen]))
        pos += slen
    return subs


def wire_value(attr: Attr, secret: bytes, authenticator: bytes) -> bytes:
    """The value as it goes into a packet with ``secret`` and Request ``authenticator``."""
    if attr.hiding == USER_PASSWORD_HIDING:
        return hide_password(attr.value, secret, authenticator)
    if attr.hiding == SALT_HIDING:
        hidden = salt_encrypt(attr.value, secret, authenticator)
        return hidden if attr.tag is None else bytes([attr.tag]) + hidden
    return attr.value


def encode_attribute(attr: Attr, secret: bytes = b"", authenticator: bytes = b"") -> bytes:
    """One attribute on the wire (a vendor attribute inside its own Vendor-Specific)."""
    value = wire_value(attr, secret, authenticator)
    if attr.vendor:
        if len(value) > 247:
            raise AttributeError_(f"vendor {attr.vendor} attribute {attr.type} is too long")
        value = struct.pack("!LBB", attr.vendor, attr.type, len(value) + 2) + value
        atype = VENDOR_SPECIFIC
    else:
        atype = attr.type
    if len(value) > 253:
        raise AttributeError_(f"attribute {atype} is too long ({len(value)} octets)")
    return struct.pack("!BB", atype, len(value) + 2) + value


def encode_attributes(attrs, secret: bytes = b"", authenticator: bytes = b"") -> bytes:
    """Several attributes on the wire, in order."""
    return b"".join(encode_attribute(a, secret, authenticator) for a in attrs)


# -- hidden values --


def hide_password(clear: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """RFC 2865 5.2: pad to 16 octets, XOR with MD5(secret + previous block)."""
    if len(clear) > 128:
        raise AttributeError_("a hidden value is at most 128 octets")
    padded = clear.ljust(max(16, len(clear) + (-len(clear) % 16)), b"\x00")
    out, last = b"", authenticator
    for i in range(0, len(padded), 16):
        block = bytes(a ^ b for a, b in zip(padded[i:i + 16],
                                            hashlib.md5(secret + last).digest()))
        out += block
        last = block
    return out


def reveal_password(hidden: bytes, secret: bytes, authenticator: bytes, *,
                    strip: bool = True) -> bytes:
    """The inverse of `hide_password`; ``strip`` removes the NUL padding (passwords only)."""
    if not hidden or len(hidden) % 16 or len(hidden) > 128:
        raise AttributeError_("a hidden value is 16 to 128 octets, a multiple of 16")
    out, last = b"", authenticator
    for i in range(0, len(hidden), 16):
        block = hidden[i:i + 16]
        out += bytes(a ^ b for a, b in zip(block, hashlib.md5(secret + last).digest()))
        last = block
    return out.rstrip(b"\x00") if strip else out


def _salt_stream(data: bytes, secret: bytes, authenticator: bytes, salt: bytes,
                 encrypt: bool) -> bytes:
    out, last = b"", authenticator + salt
    for i in range(0, len(data), 16):
        block = data[i:i + 16]
        result = bytes(a ^ b for a, b in zip(block, hashlib.md5(secret + last).digest()))
        out += result
        # each round chains on the cipher text: the output when hiding, the input when revealing
        last = result if encrypt else block
    return out


def salt_encrypt(clear: bytes, secret: bytes, authenticator: bytes,
                 salt: bytes | None = None) -> bytes:
    """RFC 2548 2.4.2 / RFC 2868 3.5: salt, then length-prefixed, padded, chained MD5 XOR.

    A fresh random salt with its high bit set (the RFC requires it) unless one
    is given (tests with published vectors).
    """
    if len(clear) > 239:
        raise AttributeError_("a salt-hidden value is at most 239 octets")
    if salt is None:
        salt = bytes([0x80 | secrets.randbelow(128), secrets.randbelow(256)])
    if len(salt) != 2 or not salt[0] & 0x80:
        raise AttributeError_("the salt is 2 octets with the high bit set")
    plain = bytes([len(clear)]) + clear
    plain += b"\x00" * (-len(plain) % 16)
    return salt + _salt_stream(plain, secret, authenticator, salt, True)


def salt_decrypt(hidden: bytes, secret: bytes, authenticator: bytes) -> bytes:
    """The inverse of `salt_encrypt`; a length octet that does not fit raises."""
    if len(hidden) < 18 or (len(hidden) - 2) % 16:
        raise AttributeError_("a salt-hidden value is 2 + a multiple of 16 octets")
    plain = _salt_stream(hidden[2:], secret, authenticator, hidden[:2], False)
    if plain[0] > len(plain) - 1:
        raise AttributeError_("the hidden length does not fit (wrong secret?)")
    return plain[1:1 + plain[0]]


def reveal(attr: Attr, hiding: int, secret: bytes, authenticator: bytes,
           tagged: bool = False) -> Attr:
    """``attr`` as received, hidden by ``hiding``: the same attribute with its value in clear."""
    if hiding == USER_PASSWORD_HIDING:
        # Binary keys (MS-CHAP-MPPE-Keys) keep their exact length: no NUL stripping.
        return Attr(attr.vendor, attr.type,
                    reveal_password(attr.value, secret, authenticator, strip=False), hiding)
    if hiding == SALT_HIDING:
        tag, value = (attr.value[0], attr.value[1:]) if tagged and attr.value else (None,
                                                                                     attr.value)
        return Attr(attr.vendor, attr.type, salt_decrypt(value, secret, authenticator),
                    hiding, tag)
    return attr


# -- names and values from the dictionary --


@dataclass(frozen=True)
class AttributeSpec:
    """What the dictionary says about one attribute name."""

    name: str
    vendor: int
    type: int
    kind: str  # string, octets, integer, ipaddr, ipv6addr
    hiding: int
    tagged: bool
    values: dict  # VALUE names -> numbers


class Names:
    """Attribute names <-> numbers, from a pyrad Dictionary (ours, with the vendor files)."""

    def __init__(self, dictionary):
        self._by_name: dict[str, AttributeSpec] = {}
        self._by_key: dict[tuple[int, int], AttributeSpec] = {}
        for name, attr in dictionary.attributes.items():
            vendor = dictionary.vendors.GetForward(attr.vendor) if attr.vendor else 0
            spec = AttributeSpec(name, vendor, attr.code, attr.type, attr.encrypt or 0,
                                 bool(attr.has_tag), dict(attr.values.forward))
            self._by_name[name.casefold()] = spec
            self._by_key.setdefault((vendor, attr.code), spec)

    def spec(self, name: str) -> AttributeSpec | None:
        """The attribute called ``name`` (any case), or None."""
        return self._by_name.get(name.casefold())

    def by_key(self, key: tuple[int, int]) -> AttributeSpec | None:
        """The attribute with (vendor, type) ``key``, or None."""
        return self._by_key.get(key)

    def name(self, key: tuple[int, int]) -> str:
        """A printable name for (vendor, type)."""
        spec = self._by_key.get(key)
        if spec is not None:
            return spec.name
        return f"Attr-{key[1]}" if not key[0] else f"Vendor-{key[0]}-Attr-{key[1]}"

    def parse(self, text: str) -> Attr:
        """``Name = value`` (as in a FreeRADIUS users file) as an attribute; raises on errors."""
        name, sep, raw = text.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or not raw:
            raise AttributeError_(f"{text!r} is not 'Attribute-Name = value'")
        if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
            raw = raw[1:-1]
        spec = self.spec(name)
        if spec is None:
            raise AttributeError_(f"unknown attribute {name!r} (not in pushproxy's dictionary)")
        if spec.hiding:
            raise AttributeError_(f"{spec.name} is a hidden (encrypted) attribute; it cannot "
                                  "be configured")
        if spec.type in (VENDOR_SPECIFIC, 80, USER_PASSWORD, 24, 33, 79) and not spec.vendor:
            raise AttributeError_(f"{spec.name} is set by the protocol, not by configuration")
        return Attr(spec.vendor, spec.type, self._value(spec, raw))

    @staticmethod
    def _value(spec: AttributeSpec, raw: str) -> bytes:
        try:
            if spec.kind in ("string",):
                value = raw.encode("utf-8")
            elif spec.kind == "octets":
                value = bytes.fromhex(raw[2:]) if raw[:2].lower() == "0x" else raw.encode("utf-8")
            elif spec.kind == "integer":
                number = spec.values[raw] if raw in spec.values else int(raw, 0)
                if isinstance(number, bytes):  # pyrad keeps VALUEs encoded
                    number = int.from_bytes(number, "big")
                if not 0 <= number < 2 ** 32 or (spec.tagged and number >= 2 ** 24):
                    raise AttributeError_(f"{spec.name}: {number} is out of range")
                value = struct.pack("!L", number)
                if spec.tagged:
                    value = b"\x00" + value[1:]  # tag 0: the attribute's first tunnel
            elif spec.kind == "ipaddr":
                value = ipaddress.IPv4Address(raw).packed
            elif spec.kind == "ipv6addr":
                value = ipaddress.IPv6Address(raw).packed
            else:
                raise AttributeError_(f"{spec.name}: type {spec.kind} cannot be configured")
        except (ValueError, KeyError) as exc:
            if isinstance(exc, AttributeError_):
                raise
            raise AttributeError_(f"{spec.name}: {raw!r} is not a valid {spec.kind}") from None
        if not value or len(value) > (247 if spec.vendor else 253):
            raise AttributeError_(f"{spec.name}: the value must be 1 to "
                                  f"{247 if spec.vendor else 253} octets")
        return value
