"""RFC 4515 search filter strings to their BER encoding (RFC 4511 4.5.1.7).

The directory client sends filters that the configuration spells as strings
(``ldap.user_filter``, the group queries). ldap3 turns them into pyasn1
objects, which costs more than the rest of a search; this parser writes the
BER bytes directly with the encoder the LDAP front end already has.

A filter is parsed with an explicit depth limit (no unbounded recursion on a
hostile configuration), and every error is a `FilterError` naming the offset.
"""

from __future__ import annotations

from pushproxy.ldapfront.ber import octets, tlv

MAX_DEPTH = 32

# Filter CHOICE tags (context-specific; constructed unless the value is an OCTET STRING)
_AND, _OR, _NOT = 0xA0, 0xA1, 0xA2
_EQUAL, _SUBSTRINGS, _GREATER, _LESS, _PRESENT, _APPROX, _EXTENSIBLE = (
    0xA3, 0xA4, 0xA5, 0xA6, 0x87, 0xA8, 0xA9)
_SUB_INITIAL, _SUB_ANY, _SUB_FINAL = 0x80, 0x81, 0x82
_MR_RULE, _MR_TYPE, _MR_VALUE, _MR_DN = 0x81, 0x82, 0x83, 0x84


class FilterError(ValueError):
    """A filter string that is not valid RFC 4515."""


def compile_filter(text: str) -> bytes:
    """The BER encoding of the filter ``text`` (e.g. ``(&(objectClass=person)(uid=a\\2a))``)."""
    encoded, end = _filter(text, 0, 0)
    if end != len(text):
        raise FilterError(f"unexpected text after the filter at offset {end}")
    return encoded


def _filter(text: str, pos: int, depth: int) -> tuple[bytes, int]:
    if depth > MAX_DEPTH:
        raise FilterError(f"filter nested deeper than {MAX_DEPTH}")
    if pos >= len(text) or text[pos] != "(":
        raise FilterError(f"expected '(' at offset {pos}")
    pos += 1
    if pos >= len(text):
        raise FilterError("filter ends after '('")
    kind = text[pos]
    if kind in "&|":
        parts, pos = [], pos + 1
        while pos < len(text) and text[pos] == "(":
            part, pos = _filter(text, pos, depth + 1)
            parts.append(part)
        if not parts:
            raise FilterError(f"empty {kind} at offset {pos}")
        encoded = tlv(_AND if kind == "&" else _OR, b"".join(parts))
    elif kind == "!":
        inner, pos = _filter(text, pos + 1, depth + 1)
        encoded = tlv(_NOT, inner)
    else:
        close = text.find(")", pos)
        if close < 0:
            raise FilterError(f"unterminated item at offset {pos}")
        encoded, pos = _item(text[pos:close], pos), close
    if pos >= len(text) or text[pos] != ")":
        raise FilterError(f"expected ')' at offset {pos}")
    return encoded, pos + 1


def _item(item: str, offset: int) -> bytes:
    """One simple item: attr=value, attr~=, >=, <=, attr=*, substrings or extensible."""
    eq = item.find("=")
    if eq <= 0:
        raise FilterError(f"no attribute=value at offset {offset}")
    attr, value = item[:eq], item[eq + 1:]
    if attr.endswith(("~", ">", "<")):
        tag = {"~": _APPROX, ">": _GREATER, "<": _LESS}[attr[-1]]
        return tlv(tag, octets(_attr(attr[:-1], offset)) + octets(unescape(value)))
    if attr.endswith(":"):
        return _extensible(attr[:-1], value, offset)
    attr = _attr(attr, offset)
    if value == "*":
        return octets(attr, _PRESENT)
    if "*" not in value:
        return tlv(_EQUAL, octets(attr) + octets(unescape(value)))
    pieces = value.split("*")
    subs = []
    if pieces[0]:
        subs.append(octets(unescape(pieces[0]), _SUB_INITIAL))
    subs.extend(octets(unescape(p), _SUB_ANY) for p in pieces[1:-1] if p)
    if pieces[-1]:
        subs.append(octets(unescape(pieces[-1]), _SUB_FINAL))
    return tlv(_SUBSTRINGS, octets(attr) + tlv(0x30, b"".join(subs)))


def _extensible(spec: str, value: str, offset: int) -> bytes:
    """attr:dn:rule:=value, attr:=value, :rule:=value (RFC 4515 extensible match)."""
    parts = spec.split(":")
    attr, rest = parts[0], parts[1:]
    dn = "dn" in [p.lower() for p in rest]
    rules = [p for p in rest if p.lower() != "dn"]
    if len(rules) > 1 or (not attr and not rules):
        raise FilterError(f"bad extensible match at offset {offset}")
    body = b""
    if rules:
        body += octets(rules[0], _MR_RULE)
    if attr:
        body += octets(_attr(attr, offset), _MR_TYPE)
    body += octets(unescape(value), _MR_VALUE)
    if dn:
        body += tlv(_MR_DN, b"\xff")
    return tlv(_EXTENSIBLE, body)


def _attr(attr: str, offset: int) -> str:
    if not attr or not all(c.isalnum() or c in "-.;" for c in attr):
        raise FilterError(f"bad attribute description {attr!r} at offset {offset}")
    return attr


def unescape(value: str) -> bytes:
    """An assertion value's bytes: ``\\XX`` hex escapes decoded, the rest UTF-8."""
    if "\\" not in value:
        if "(" in value or ")" in value:
            raise FilterError("unescaped parenthesis in a value")
        return value.encode("utf-8")
    out, pos = bytearray(), 0
    while pos < len(value):
        c = value[pos]
        if c == "\\":
            pair = value[pos + 1:pos + 3]
            try:
                if len(pair) != 2:
                    raise ValueError
                out.append(int(pair, 16))
            except ValueError:
                raise FilterError(f"bad escape {value[pos:pos + 3]!r} in a value") from None
            pos += 3
        else:
            if c in "()":
                raise FilterError("unescaped parenthesis in a value")
            out += c.encode("utf-8")
            pos += 1
    return bytes(out)



_SENTINEL = "\ue000"  # a private-use character: stands for the username while parsing
_SENTINEL_BYTES = _SENTINEL.encode("utf-8")


class FilterTemplate:
    """A filter with a ``{username}`` placeholder, parsed once, rendered per login.

    ``render(name)`` equals ``compile_filter(template)`` with the username
    put in escaped (RFC 4515) and unescaped again, i.e. its UTF-8 bytes taken
    literally; only the elements that hold it are encoded again.
    """

    def __init__(self, template: str, placeholder: str = "{username}"):
        self.template, self.placeholder = template, placeholder
        compile_filter(template.replace(placeholder, "x"))  # a FilterError names the problem
        self._tree = None
        if _SENTINEL not in template:
            try:
                tree = _tree(compile_filter(template.replace(placeholder, _SENTINEL)))
            except FilterError:
                tree = None  # the placeholder outside a value: parsed per login
            if tree is not None and _count(tree) == template.count(placeholder):
                self._tree = tree

    def render(self, username: str) -> bytes:
        """The BER filter for ``username``."""
        if self._tree is None or not username:  # (an empty substring piece is left out)
            return compile_filter(self.template.replace(self.placeholder, _escape(username)))
        return _render(self._tree, username.encode("utf-8"))


def _escape(value: str) -> str:
    """RFC 4515 escaping of an assertion value (the characters with a meaning in a filter)."""
    return "".join(f"\\{ord(c):02x}" if c in "\\*()\0" else c for c in value)


def _tree(data: bytes):
    """Split BER into (tag, children) where the sentinel is, constant bytes elsewhere."""
    from pushproxy.ldapfront.ber import read_tlv

    if _SENTINEL_BYTES not in data:
        return data
    tag, start, end = read_tlv(data, 0, len(data))
    if end != len(data):
        raise FilterError("trailing bytes")
    if not tag & 0x20:  # primitive: the value holding the username
        return (tag, data[start:end])
    children, pos = [], start
    while pos < end:
        _, _, stop = read_tlv(data, pos, end)
        children.append(_tree(data[pos:stop]))
        pos = stop
    return (tag, children)


def _count(tree) -> int:
    if isinstance(tree, bytes):
        return 0
    tag, body = tree
    if isinstance(body, bytes):
        return body.count(_SENTINEL_BYTES)
    return sum(_count(child) for child in body)


def _render(tree, name: bytes) -> bytes:
    if isinstance(tree, bytes):
        return tree
    tag, body = tree
    if isinstance(body, bytes):
        return tlv(tag, body.replace(_SENTINEL_BYTES, name))
    return tlv(tag, b"".join(_render(child, name) for child in body))
