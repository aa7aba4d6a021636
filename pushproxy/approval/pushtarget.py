"""Where the daemon may send Web Push: HTTPS endpoints on public addresses only.

A device chooses its push endpoint, so without a check any enrolled device
could make the daemon connect to 127.0.0.1, 10.x, 169.254.169.254 or an
internal admin port on every push (blind SSRF). Two checks close that:

- at registration (enroll, ``PUT /v1/device/subscription``): the URL must be
  ``https://`` with a host name or IP literal, no user info, and an IP literal
  must be public; a host name is resolved (through the reactor's resolver,
  asynchronously, bounded by ``REGISTRATION_DNS_TIMEOUT``) and refused when it
  resolves only to non-public addresses. No answer, or a DNS failure, does
  not refuse: the connect-time check below is the one that holds.
- at every delivery: `CheckedEndpointFactory` resolves the name itself and
  connects only to an address it has just checked, with the name for TLS
  (SNI, certificate check) and the Host header, so a name that changes its
  answer after registration (DNS rebinding) still reaches no private address.

"Public" is `is_public`. ``approval.allow_private_push_endpoints`` (for an
in-house push relay) lifts the address rule, never the HTTPS rule; the
test-only ``allow_http`` also allows ``http://``.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IResolutionReceiver, IStreamClientEndpoint
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from pushproxy.netaddr import Address, peer_address
from pushproxy.tlsnames import NameCheckedPolicy

#: Seconds registration waits for DNS before accepting on the syntactic checks alone.
REGISTRATION_DNS_TIMEOUT = 5.0
_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class EndpointRefused(ValueError):
    """A push endpoint the daemon will not send to; ``str()`` says why (no secrets)."""


@dataclass(frozen=True)
class EndpointRules:
    """Which push endpoints are allowed.

    ``allow_private``: addresses that are not public too (an in-house push relay;
    ``approval.allow_private_push_endpoints``). ``allow_http``: plain ``http://``
    too, which only tests on loopback should set.
    """

    allow_private: bool = False
    allow_http: bool = False

    def allows(self, address: Address) -> bool:
        """Whether a connection to ``address`` is allowed."""
        return self.allow_private or is_public(address)


@dataclass(frozen=True)
class Target:
    """A push endpoint URL taken apart: scheme, host (lowercase, no brackets), port."""

    scheme: str
    host: str
    port: int
    literal: Address | None  # the host as an address, when it is an IP literal


def is_public(address: Address) -> bool:
    """Whether ``address`` is a public unicast address (IPv4-mapped IPv6 unmapped first).

    Loopback, private (RFC 1918, fc00::/7), link-local (169.254/16, fe80::/10),
    shared (100.64/10), documentation, benchmarking, multicast, reserved and
    unspecified addresses are not; nor a 6to4 address around a non-public IPv4.
    """
    address = peer_address(str(address)) or address
    if (not address.is_global or address.is_multicast or address.is_reserved
            or address.is_loopback or address.is_link_local or address.is_unspecified
            or address.is_private):
        return False
    if address.version == 6 and address.sixtofour is not None:
        return is_public(address.sixtofour)
    return True


def parse_endpoint(url: object, rules: EndpointRules) -> Target:
    """The syntactic check of a push endpoint; raises EndpointRefused.

    An IP literal is checked against ``rules`` here; a host name only at
    resolution (`check_registration`, `CheckedEndpointFactory`).
    """
    if not isinstance(url, str):
        raise EndpointRefused("the endpoint is not a string")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise EndpointRefused("the endpoint is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and rules.allow_http):
        raise EndpointRefused("the endpoint must be an https:// URL")
    if "@" in parts.netloc:
        raise EndpointRefused("the endpoint must not carry user info")
    host = parts.hostname or ""
    if not host:
        raise EndpointRefused("the endpoint has no host")
    if port == 0:
        raise EndpointRefused("the endpoint's port is 0")
    port = port or (443 if scheme == "https" else 80)
    literal = peer_address(host) if ":" in host or host[-1].isdigit() else None
    if literal is None and ":" in host:
        raise EndpointRefused("the endpoint's host is not a valid IPv6 address")
    if literal is None:
        if _legacy_ipv4(host):
            # "127.1", "0x7f000001", "2130706433": getaddrinfo takes them as 127.0.0.1.
            raise EndpointRefused("the endpoint's host is an IPv4 address in a legacy form")
        labels = host.rstrip(".").split(".")
        if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
            raise EndpointRefused("the endpoint's host is not a valid DNS name")
    elif not rules.allows(literal):
        raise EndpointRefused(f"the endpoint's address {literal} is not public")
    return Target(scheme, host, port, literal)


def _legacy_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


@implementer(IResolutionReceiver)
class _Collector:
    """Gathers one resolution's addresses into a Deferred list."""

    def __init__(self) -> None:
        self.addresses: list[Address] = []
        self.done: defer.Deferred[list[Address]] = defer.Deferred()

    def resolutionBegan(self, resolution) -> None:  # noqa: N802 (Twisted's interface)
        """Nothing to keep."""

    def addressResolved(self, address) -> None:  # noqa: N802
        """Keep the address, unmapped and without a scope."""
        parsed = peer_address(address.host)
        if parsed is not None:
            self.addresses.append(parsed)

    def resolutionComplete(self) -> None:  # noqa: N802
        """Hand over what came (possibly nothing)."""
        if not self.done.called:
            self.done.callback(self.addresses)


def resolve(resolver, target: Target) -> defer.Deferred[list[Address]]:
    """The addresses ``target``'s host has now (an IP literal: itself), via an IHostnameResolver."""
    if target.literal is not None:
        return defer.succeed([target.literal])
    collector = _Collector()
    resolver.resolveHostName(collector, target.host, target.port)
    return collector.done


async def check_registration(url: object, rules: EndpointRules, resolver=None, reactor=None,
                             timeout: float = REGISTRATION_DNS_TIMEOUT) -> Target:
    """`parse_endpoint`, then (with a resolver) refuse a name with only non-public addresses.

    A lookup that fails, times out or finds nothing does not refuse: DNS may be
    down while a phone registers, and every delivery checks again.
    """
    target = parse_endpoint(url, rules)
    if target.literal is not None or resolver is None or rules.allow_private:
        return target
    d = resolve(resolver, target)
    if reactor is not None:
        d.addTimeout(timeout, reactor)
    try:
        addresses = await d
    except Exception:  # noqa: BLE001 - a lookup failure is "no answer", see above
        return target
    if addresses and not any(rules.allows(a) for a in addresses):
        shown = ", ".join(sorted({str(a) for a in addresses})[:4])
        raise EndpointRefused(f"the endpoint's host resolves only to non-public addresses "
                              f"({shown})")
    return target


@implementer(IStreamClientEndpoint)
class _CheckedEndpoint:
    """Resolve, keep the allowed addresses, connect to the first one that answers."""

    def __init__(self, factory: CheckedEndpointFactory, target: Target):
        self._factory = factory
        self._target = target

    def connect(self, protocol_factory):
        """Connect ``protocol_factory`` to a checked address (TLS with the name for https)."""
        return defer.ensureDeferred(self._connect(protocol_factory))

    async def _connect(self, protocol_factory):
        f, target = self._factory, self._target
        addresses = await resolve(f.resolver, target)
        allowed = [a for a in addresses if f.rules.allows(a)]
        if not allowed:
            shown = ", ".join(sorted({str(a) for a in addresses})[:4]) or "no address"
            raise EndpointRefused(f"push endpoint host {target.host} resolves to {shown}: "
                                  "no public address")
        last: Exception | None = None
        for address in allowed:
            kind = TCP4ClientEndpoint if address.version == 4 else TCP6ClientEndpoint
            endpoint = kind(f.reactor, str(address), target.port, timeout=f.connect_timeout)
            if target.scheme == "https":
                creator = f.tls_policy.creatorForNetloc(target.host.encode("ascii"), target.port)
                endpoint = wrapClientTLS(creator, endpoint)
            try:
                return await endpoint.connect(protocol_factory)
            except defer.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - try the next address, report the last
                last = exc
        raise last


@implementer(IAgentEndpointFactory)
class CheckedEndpointFactory:
    """An Agent endpoint factory that connects only to addresses ``rules`` allow.

    ``resolver`` is an IHostnameResolver (the daemon: ``reactor.nameResolver``;
    tests: a fixed table). The URL's scheme and host were checked at registration,
    but a stored subscription is checked again here (`parse_endpoint`).
    """

    def __init__(self, reactor, rules: EndpointRules, resolver=None, tls_policy=None,
                 connect_timeout: float = 10.0):
        self.reactor = reactor
        self.rules = rules
        self.resolver = resolver if resolver is not None else reactor.nameResolver
        self.tls_policy = tls_policy or NameCheckedPolicy()
        self.connect_timeout = connect_timeout

    def endpointForURI(self, uri):  # noqa: N802 (Twisted's interface)
        """The checked endpoint for one request's URI."""
        url = uri.toBytes().decode("ascii")
        return _CheckedEndpoint(self, parse_endpoint(url, self.rules))
