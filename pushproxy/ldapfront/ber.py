"""LDAP (RFC 4511) on the wire: message framing and the few PDUs the proxy reads or writes.

This is deliberately not a general BER decoder. The proxy forwards every
operation as the bytes it received; it only needs to

- find where one LDAPMessage ends (`frame_length`), refusing a declared
  length above the limit from the header alone, before buffering the body;
- read the envelope (message id, operation tag) of every message;
- decode a BindRequest, an ExtendedRequest's name, an LDAPResult and a
  SearchResultEntry, each a fixed shape read without recursion;
- encode the requests and responses it makes itself.

Anything else in a message (search filters, controls, values) is never
decoded, so a deeply nested filter costs nothing and cannot exhaust the stack.
Every error is a `ProtocolError`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

# Universal tags
BOOLEAN, INTEGER, OCTET_STRING, ENUMERATED, SEQUENCE, SET = 0x01, 0x02, 0x04, 0x0A, 0x30, 0x31
# Operations ([APPLICATION n]; constructed unless the operation is a primitive type)
BIND_REQUEST, BIND_RESPONSE, UNBIND_REQUEST = 0x60, 0x61, 0x42
SEARCH_REQUEST, SEARCH_ENTRY, SEARCH_DONE, SEARCH_REFERENCE = 0x63, 0x64, 0x65, 0x73
ABANDON_REQUEST = 0x50
EXTENDED_REQUEST, EXTENDED_RESPONSE = 0x77, 0x78
# Choices inside operations
AUTH_SIMPLE, AUTH_SASL = 0x80, 0xA3
CONTROLS = 0xA0

STARTTLS_OID = "1.3.6.1.4.1.1466.20037"
NOTICE_OF_DISCONNECTION_OID = "1.3.6.1.4.1.1466.20036"
MAX_MESSAGE_ID = 2 ** 31 - 1

# Result codes (RFC 4511 4.1.9) the proxy sends itself
SUCCESS, OPERATIONS_ERROR, PROTOCOL_ERROR = 0, 1, 2
AUTH_METHOD_NOT_SUPPORTED, CONFIDENTIALITY_REQUIRED = 7, 13
INAPPROPRIATE_AUTHENTICATION, INVALID_CREDENTIALS = 48, 49
BUSY, UNAVAILABLE, UNWILLING_TO_PERFORM = 51, 52, 53


class ProtocolError(Exception):
    """Bytes that are not a valid LDAP message (or not one we accept)."""


def frame_length(buf: bytes | bytearray, max_size: int) -> int | None:
    """Length of the first LDAPMessage in ``buf``; None until all of it has arrived.

    Raises ProtocolError for anything but a definite-length SEQUENCE, and for a
    message whose declared size exceeds ``max_size`` (decided from the header,
    so a hostile length never makes us buffer it).
    """
    if not buf:
        return None
    if buf[0] != SEQUENCE:
        raise ProtocolError(f"expected an LDAPMessage (0x30), got tag 0x{buf[0]:02x}")
    if len(buf) < 2:
        return None
    first = buf[1]
    if first < 0x80:
        header, length = 2, first
    else:
        count = first & 0x7F
        if count == 0:
            raise ProtocolError("indefinite length is not allowed in LDAP")
        if count > 4:
            raise ProtocolError(f"length of {count} bytes")
        if len(buf) < 2 + count:
            return None
        header, length = 2 + count, int.from_bytes(buf[2:2 + count], "big")
    if header + length > max_size:
        raise ProtocolError(f"message of {header + length} bytes exceeds the limit of "
                            f"{max_size}")
    return header + length if len(buf) >= header + length else None


def read_tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the element at ``pos``, which must end by ``end``."""
    if pos + 2 > end:
        raise ProtocolError("truncated element")
    tag, first = data[pos], data[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ProtocolError("multi-byte tags are not used in LDAP")
    pos += 2
    if first >= 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise ProtocolError("bad length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > end:
        raise ProtocolError("element longer than its container")
    return tag, pos, pos + length


def _expect(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    # `read_tlv` and a tag check, written out: a login's three answers are read
    # through about twenty of these (issue 16). The same checks in the same order.
    if pos + 2 > end:
        raise ProtocolError("truncated element")
    got, first = data[pos], data[pos + 1]
    if got & 0x1F == 0x1F:
        raise ProtocolError("multi-byte tags are not used in LDAP")
    pos += 2
    if first >= 0x80:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise ProtocolError("bad length")
        length = int.from_bytes(data[pos:pos + count], "big")
        pos += count
    else:
        length = first
    if pos + length > end:
        raise ProtocolError("element longer than its container")
    if got != tag:
        raise ProtocolError(f"{what}: expected tag 0x{tag:02x}, got 0x{got:02x}")
    return pos, pos + length


def _int(data: bytes, start: int, stop: int) -> int:
    if not 1 <= stop - start <= 5:
        raise ProtocolError("integer of bad size")
    return int.from_bytes(data[start:stop], "big", signed=True)


def _text(data: bytes, start: int, stop: int, what: str) -> str:
    try:
        return data[start:stop].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not UTF-8") from None


@dataclass(frozen=True)
class Message:
    """One LDAPMessage: its id, operation tag and the operation's value bytes."""

    message_id: int
    op_tag: int
    op: bytes = field(repr=False)  # the protocolOp's contents (without tag and length)
    raw: bytes = field(repr=False)  # the whole message, as received


def parse_message(raw: bytes) -> Message:
    """The envelope of one framed message; the operation itself stays undecoded."""
    start, end = _expect(raw, 0, len(raw), SEQUENCE, "LDAPMessage")
    if end != len(raw):
        raise ProtocolError("trailing bytes after the message")
    s, e = _expect(raw, start, end, INTEGER, "messageID")
    message_id = _int(raw, s, e)
    if not 0 <= message_id <= MAX_MESSAGE_ID:
        raise ProtocolError("messageID out of range")
    op_tag, s, op_end = read_tlv(raw, e, end)
    if op_end < end:
        tag, _, stop = read_tlv(raw, op_end, end)
        if tag != CONTROLS or stop != end:
            raise ProtocolError("unexpected element after the operation")
    return Message(message_id, op_tag, raw[s:op_end], raw)


def next_message(buf: bytearray, max_size: int) -> tuple[bytes, Message] | None:
    """Take the first whole message off ``buf`` (raw bytes and envelope); None until it arrived.

    Raises ProtocolError as `frame_length` and `parse_message` do; the bytes
    of a message that does not parse are gone from ``buf`` either way.
    """
    size = frame_length(buf, max_size)
    if size is None:
        return None
    raw = bytes(buf[:size])
    del buf[:size]
    return raw, parse_message(raw)


@dataclass(frozen=True)
class BindRequest:
    """A decoded BindRequest. ``password`` is the simple password (b"" for SASL)."""

    version: int
    name: str
    sasl_mechanism: str | None
    password: bytes = field(repr=False)

    @property
    def simple(self) -> bool:
        """A simple (name + password) bind."""
        return self.sasl_mechanism is None


def parse_bind(op: bytes) -> BindRequest:
    """Decode the contents of a BindRequest."""
    end = len(op)
    s, e = _expect(op, 0, end, INTEGER, "bind version")
    version = _int(op, s, e)
    s, e2 = _expect(op, e, end, OCTET_STRING, "bind name")
    name = _text(op, s, e2, "bind name")
    tag, s, e3 = read_tlv(op, e2, end)
    if e3 != end:
        raise ProtocolError("trailing bytes in BindRequest")
    if tag == AUTH_SIMPLE:
        return BindRequest(version, name, None, op[s:e3])
    if tag == AUTH_SASL:
        ms, me = _expect(op, s, e3, OCTET_STRING, "SASL mechanism")
        return BindRequest(version, name, _text(op, ms, me, "SASL mechanism"), b"")
    raise ProtocolError(f"unknown authentication choice 0x{tag:02x}")


def parse_extended_name(op: bytes) -> str:
    """The requestName of an ExtendedRequest."""
    s, e = _expect(op, 0, len(op), 0x80, "requestName")
    return _text(op, s, e, "requestName")


@dataclass(frozen=True)
class Result:
    """An LDAPResult (BindResponse, SearchResultDone, ExtendedResponse, ...)."""

    code: int
    matched_dn: str
    message: str


def parse_result(op: bytes) -> Result:
    """The LDAPResult at the start of a response's contents."""
    end = len(op)
    s, e = _expect(op, 0, end, ENUMERATED, "resultCode")
    code = _int(op, s, e)
    s, e2 = _expect(op, e, end, OCTET_STRING, "matchedDN")
    s3, e3 = _expect(op, e2, end, OCTET_STRING, "diagnosticMessage")
    return Result(code, op[s:e2].decode("utf-8", "replace"), op[s3:e3].decode("utf-8", "replace"))


def parse_entry(op: bytes) -> tuple[str, dict[str, list[str]]]:
    """A SearchResultEntry: (DN, {lower-case attribute type: values})."""
    end = len(op)
    s, e = _expect(op, 0, end, OCTET_STRING, "objectName")
    dn = _text(op, s, e, "objectName")
    s, attrs_end = _expect(op, e, end, SEQUENCE, "attributes")
    attrs: dict[str, list[str]] = {}
    pos = s
    while pos < attrs_end:
        a_start, a_end = _expect(op, pos, attrs_end, SEQUENCE, "attribute")
        ts, te = _expect(op, a_start, a_end, OCTET_STRING, "attribute type")
        vs, ve = _expect(op, te, a_end, SET, "attribute values")
        values, vpos = [], vs
        while vpos < ve:
            s2, e2 = _expect(op, vpos, ve, OCTET_STRING, "attribute value")
            values.append(op[s2:e2].decode("utf-8", "replace"))
            vpos = e2
        attrs.setdefault(_text(op, ts, te, "attribute type").lower(), []).extend(values)
        pos = a_end
    return dn, attrs


# -- encoding --

_BYTE = tuple(bytes((i,)) for i in range(256))


def _length(n: int) -> bytes:
    if n < 0x80:
        return _BYTE[n]
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return _BYTE[0x80 | len(raw)] + raw


def tlv(tag: int, value: bytes) -> bytes:
    """One element."""
    n = len(value)
    if n < 0x80:  # short form: most elements of a login's requests
        return bytes((tag, n)) + value
    return _BYTE[tag] + _length(n) + value


def integer(value: int, tag: int = INTEGER) -> bytes:
    """An INTEGER (or ENUMERATED with ``tag``)."""
    return tlv(tag, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def octets(value: str | bytes, tag: int = OCTET_STRING) -> bytes:
    """An OCTET STRING (UTF-8 for text)."""
    return tlv(tag, value.encode("utf-8") if isinstance(value, str) else value)


def message(message_id: int, op_tag: int, op: bytes) -> bytes:
    """A whole LDAPMessage."""
    return tlv(SEQUENCE, integer(message_id) + tlv(op_tag, op))


def result(code: int, diagnostic: str = "", matched: str = "") -> bytes:
    """The contents of an LDAPResult."""
    return integer(code, ENUMERATED) + octets(matched) + octets(diagnostic)


def bind_request(message_id: int, name: str, password: str) -> bytes:
    """A simple BindRequest (LDAPv3)."""
    return message(message_id, BIND_REQUEST,
                   integer(3) + octets(name) + octets(password, AUTH_SIMPLE))


def bind_response(message_id: int, code: int, diagnostic: str = "") -> bytes:
    """A BindResponse."""
    return message(message_id, BIND_RESPONSE, result(code, diagnostic))


def extended_request(message_id: int, oid: str) -> bytes:
    """An ExtendedRequest without a value (StartTLS)."""
    return message(message_id, EXTENDED_REQUEST, octets(oid, 0x80))


def extended_response(message_id: int, code: int, diagnostic: str = "",
                      name: str | None = None) -> bytes:
    """An ExtendedResponse, with responseName when given."""
    body = result(code, diagnostic) + (octets(name, 0x8A) if name else b"")
    return message(message_id, EXTENDED_RESPONSE, body)


def notice_of_disconnection(code: int, diagnostic: str) -> bytes:
    """The unsolicited notification sent before the server closes a connection (4.4.1)."""
    return extended_response(0, code, diagnostic, NOTICE_OF_DISCONNECTION_OID)


# Search filters (only the kinds the proxy needs)

def f_present(attr: str) -> bytes:
    """(attr=*)"""
    return octets(attr, 0x87)


def f_equal(attr: str, value: str) -> bytes:
    """(attr=value), the value taken literally (no escaping needed in BER)."""
    return tlv(0xA3, octets(attr) + octets(value))


def f_or(*filters: bytes) -> bytes:
    """(|...)"""
    return tlv(0xA1, b"".join(filters))


def f_extensible(rule: str, attr: str, value: str) -> bytes:
    """(attr:rule:=value)"""
    return tlv(0xA9, octets(rule, 0x81) + octets(attr, 0x82) + octets(value, 0x83))


def search_request(message_id: int, base: str, filter_: bytes, attributes: list[str], *,
                   scope: int = 0, size_limit: int = 0, time_limit: int = 0) -> bytes:
    """A SearchRequest (scope 0: base object), never dereferencing aliases."""
    body = (octets(base) + _search_limits(scope, size_limit, time_limit) + filter_
            + _attribute_list(tuple(attributes)))
    return message(message_id, SEARCH_REQUEST, body)


@functools.lru_cache(maxsize=64)
def _search_limits(scope: int, size_limit: int, time_limit: int) -> bytes:
    """scope, derefAliases (never), sizeLimit, timeLimit, typesOnly (false): the same
    few for every search the daemon sends, so encoded once each (issue 16)."""
    return (integer(scope, ENUMERATED) + integer(0, ENUMERATED) + integer(size_limit)
            + integer(time_limit) + tlv(BOOLEAN, b"\x00"))


@functools.lru_cache(maxsize=64)
def _attribute_list(attributes: tuple[str, ...]) -> bytes:
    """The AttributeSelection (a login asks for the same list every time)."""
    return tlv(SEQUENCE, b"".join(octets(a) for a in attributes))
