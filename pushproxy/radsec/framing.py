"""RADIUS packets out of a TCP byte stream, cut by the Length field (RFC 6613). Pure.

A stream has no datagram boundaries: a packet may come in pieces, several may
come in one read. A Length outside 20..4096 means the stream is not RADIUS (or
has lost its framing) and nothing after it can be trusted: `FramingError`, and
the listener closes that one connection.
"""

from __future__ import annotations

import struct

MIN_PACKET = 20
MAX_PACKET = 4096  # RFC 2865 section 3


class FramingError(Exception):
    """The stream cannot be RADIUS; ``detail`` says why (for the log).

    ``packets``: the whole packets that came before the junk in the same read
    (they are served like any others; only what follows is lost).
    """

    def __init__(self, detail: str, packets: list[bytes] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.packets = packets or []


class Framer:
    """Accumulates bytes; `feed` returns the complete packets received so far."""

    def __init__(self, max_buffer: int = MAX_PACKET):
        self._buffer = bytearray()
        self.max_buffer = max_buffer

    @property
    def buffered(self) -> int:
        """Octets of an incomplete packet held."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; the whole packets now available, in order (FramingError on junk)."""
        self._buffer += data
        packets = []
        while len(self._buffer) >= 4:
            length = struct.unpack_from("!H", self._buffer, 2)[0]
            if not MIN_PACKET <= length <= MAX_PACKET:
                raise FramingError(f"length field {length} is outside {MIN_PACKET}.."
                                   f"{MAX_PACKET}", packets)
            if len(self._buffer) < length:
                break
            packets.append(bytes(self._buffer[:length]))
            del self._buffer[:length]
        return packets
