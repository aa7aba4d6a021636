"""Peer addresses as the sockets report them, matched against configured networks.

One rule for every listener (RADIUS clients, the approval API's trusted
proxies, the LDAP front end's peers): a scope suffix (``fe80::1%eth0``) is
dropped, and an IPv4 peer that a dual-stack socket reports as
``::ffff:a.b.c.d`` is taken as the IPv4 address, so ``10.0.0.0/8`` in the
config matches it.
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_address(host: str) -> Address | None:
    """``host`` as an IP address (IPv4-mapped IPv6 unmapped), or None when it is not one."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def holds(network: Network, address: Address) -> bool:
    """Whether ``network`` holds ``address`` (an address of the other IP version never)."""
    return address.version == network.version and address in network


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback name or address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
