"""Listening sockets shared by several worker processes (SO_REUSEPORT).

With ``daemon.workers`` > 1 every worker binds the same RADIUS UDP ports and
the same approval TCP port with SO_REUSEPORT; the kernel then spreads
datagrams and connections over the workers by a hash of the 4-tuple. So a
NAS's retransmits from one source port reach the worker that holds the first
copy, as long as the set of sockets is unchanged (a worker that dies and is
restarted changes it; then the shared store is what keeps a retransmit from
starting a second push). Linux lets only sockets of the same effective user
join a SO_REUSEPORT group, so another account cannot steal a share.

Twisted has no reuse-port flag: the socket is made and bound here, then
adopted by the reactor (which duplicates the descriptor; ours is closed).
"""

from __future__ import annotations

import ipaddress
import socket

#: Twisted's listenTCP backlog.
BACKLOG = 50


def _family(host: str) -> socket.AddressFamily:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host or "0.0.0.0").version == 6 \
            else socket.AF_INET
    except ValueError:  # a name: Twisted's listenUDP/listenTCP would take IPv4 too
        return socket.AF_INET


def bound_socket(host: str, port: int, kind: socket.SocketKind) -> socket.socket:
    """A non-blocking socket of ``kind`` bound to (host, port) with SO_REUSEPORT set."""
    family = _family(host)
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            # What Twisted sets on every listening TCP socket (restart during TIME_WAIT).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind((host or ("::" if family == socket.AF_INET6 else ""), port))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def listen_udp(reactor, port: int, protocol, interface: str = "", max_packet: int = 8192):
    """Like ``reactor.listenUDP`` but with SO_REUSEPORT: other workers share the port."""
    sock = bound_socket(interface, port, socket.SOCK_DGRAM)
    try:
        return reactor.adoptDatagramPort(sock.fileno(), sock.family, protocol,
                                         maxPacketSize=max_packet)
    finally:
        sock.close()  # the reactor holds its own duplicate


def listen_tcp(reactor, port: int, factory, interface: str = ""):
    """Like ``reactor.listenTCP`` but with SO_REUSEPORT: other workers share the port."""
    sock = bound_socket(interface, port, socket.SOCK_STREAM)
    try:
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)
    finally:
        sock.close()
