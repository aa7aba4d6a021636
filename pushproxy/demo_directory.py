"""An in-process LDAP directory for ``pushproxy demo``.

The demo must run with no outside server, yet exercise the daemon's real LDAP
client (ldap3 in worker threads). So ldaptor serves a small in-memory tree on
127.0.0.1 from the reactor the daemon itself runs on.

ldaptor's stock server has no access control at all: anyone may read
``userPassword`` and add, modify or delete entries. This one models what a
sane production directory does instead: the tree is read-only, only bound
clients may search, ``userPassword`` is never returned nor usable in a
filter (it would be a guessing oracle), a failed bind leaves the connection
anonymous, and a DN with an empty password never authenticates.
"""

from __future__ import annotations

import base64
import hashlib
import io
import ipaddress
import os

from twisted.internet import defer, protocol
from twisted.python import components
from ldaptor import inmemory, interfaces
from ldaptor._encoder import to_bytes
from ldaptor.protocols import pureldap
from ldaptor.protocols.ldap import ldaperrors
from ldaptor.protocols.ldap.ldapserver import LDAPServer

#: Demo users and their passwords (the demo prints them for the person trying it).
DEMO_USERS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}
#: Groups and their members; carol is deliberately in none.
DEMO_GROUPS = {"vpn-users": ("alice", "bob")}
#: The suffix of the demo tree.
DEMO_BASE = "dc=demo,dc=pushproxy"
#: Where the daemon searches for users, and where the groups live.
DEMO_PEOPLE_BASE = f"ou=people,{DEMO_BASE}"
DEMO_GROUPS_BASE = f"ou=groups,{DEMO_BASE}"
#: The service account the daemon binds as to search.
DEMO_SERVICE_DN = f"cn=svc-pushproxy,ou=services,{DEMO_BASE}"
DEMO_SERVICE_PASSWORD = "svc-demo-pw"


def demo_user_dn(uid: str) -> str:
    """The DN of demo user ``uid``."""
    return f"uid={uid},{DEMO_PEOPLE_BASE}"


def demo_group_dn(cn: str) -> str:
    """The DN of demo group ``cn``."""
    return f"cn={cn},{DEMO_GROUPS_BASE}"


def _ssha(password: str) -> str:
    # RFC 2307 {SSHA}: the one hashed scheme ldaptor's bind checks (anything
    # else is compared as plain text). Base64 without line breaks, which is
    # what ldaptor re-computes and compares against.
    salt = os.urandom(8)
    digest = hashlib.sha1(password.encode("utf-8") + salt).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def demo_ldif() -> str:
    """The seed LDIF: people, groups and the service account.

    Passwords are fresh {SSHA} hashes (new salt on every call). Users carry
    ``memberOf`` values computed here, since ldaptor has no memberOf overlay.
    """
    entries = [
        [("dn", DEMO_BASE), ("objectClass", "dcObject"), ("objectClass", "organization"),
         ("dc", "demo"), ("o", "pushproxy demo")],
    ]
    for ou in ("people", "groups", "services"):
        entries.append([("dn", f"ou={ou},{DEMO_BASE}"), ("objectClass", "organizationalUnit"),
                        ("ou", ou)])
    entries.append([("dn", DEMO_SERVICE_DN), ("objectClass", "applicationProcess"),
                    ("objectClass", "simpleSecurityObject"), ("cn", "svc-pushproxy"),
                    ("userPassword", _ssha(DEMO_SERVICE_PASSWORD))])
    for uid, password in DEMO_USERS.items():
        entry = [("dn", demo_user_dn(uid)), ("objectClass", "inetOrgPerson"), ("uid", uid),
                 ("cn", f"{uid.capitalize()} Demo"), ("sn", "Demo"),
                 ("userPassword", _ssha(password))]
        entry += [("memberOf", demo_group_dn(cn))
                  for cn, members in DEMO_GROUPS.items() if uid in members]
        entries.append(entry)
    for cn, members in DEMO_GROUPS.items():
        entries.append([("dn", demo_group_dn(cn)), ("objectClass", "groupOfNames"), ("cn", cn)]
                       + [("member", demo_user_dn(uid)) for uid in members])
    # ldaptor's LDIF reader only finishes an entry on a blank line, the last one too.
    return "".join("".join(f"{k}: {v}\n" for k, v in e) + "\n" for e in entries)


def _is_password(attribute) -> bool:
    # Attribute options ("userPassword;binary") name the same attribute.
    return to_bytes(attribute).split(b";")[0].strip().lower() == b"userpassword"


def _filter_uses_password(f) -> bool:
    if isinstance(f, (pureldap.LDAPFilter_and, pureldap.LDAPFilter_or)):
        return any(_filter_uses_password(part) for part in f)
    if isinstance(f, pureldap.LDAPFilter_not):
        return _filter_uses_password(f.value)
    if isinstance(f, pureldap.LDAPFilter_present):
        return _is_password(f.value)
    # Value assertions name the attribute in attributeDesc; substring and
    # extensible matches in type (None: "any attribute", which ldaptor rejects).
    name = getattr(f, "attributeDesc", None)
    if name is None:
        name = getattr(f, "type", None)
    return name is not None and _is_password(getattr(name, "value", name))


class _DemoLDAPServer(LDAPServer):
    """ldaptor's LDAPServer with the access rules of the module docstring."""

    def connectionMade(self):
        super().connectionMade()
        self.closed = defer.Deferred()
        self.factory.connections.add(self)

    def connectionLost(self, reason=protocol.connectionDone):
        super().connectionLost(reason)
        self.factory.connections.discard(self)
        self.closed.callback(None)

    def handle_LDAPBindRequest(self, request, controls, reply):
        # RFC 4511 4.2.1: a bind in progress or failed leaves the connection
        # anonymous; ldaptor would keep the previous identity.
        self.boundUser = None
        if request.sasl:
            raise ldaperrors.LDAPAuthMethodNotSupported("simple binds only")
        if request.dn and not request.auth:
            # A DN with no password is an "unauthenticated bind" (RFC 4513
            # 5.1.2), a classic way to fool naive password checks. 49, not
            # slapd's 53, because the daemon reads 53 as "server broken".
            raise ldaperrors.LDAPInvalidCredentials("empty password")
        return super().handle_LDAPBindRequest(request, controls, reply)

    def handle_LDAPSearchRequest(self, request, controls, reply):
        root_dse = (request.baseObject in (b"", "")
                    and request.scope == pureldap.LDAP_SCOPE_baseObject)
        if self.boundUser is None and not root_dse:
            raise ldaperrors.LDAPInsufficientAccessRights("bind first")
        if _filter_uses_password(request.filter):
            raise ldaperrors.LDAPInsufficientAccessRights("userPassword is not searchable")

        def without_password(response):
            if isinstance(response, pureldap.LDAPSearchResultEntry):
                response = pureldap.LDAPSearchResultEntry(
                    objectName=response.objectName,
                    attributes=[(k, v) for k, v in response.attributes if not _is_password(k)])
            reply(response)

        return super().handle_LDAPSearchRequest(request, controls, without_password)

    def _read_only(self, request, controls, reply):
        raise ldaperrors.LDAPUnwillingToPerform("the demo directory is read-only")

    # Compare is refused too: on userPassword it would be a guessing oracle,
    # and nothing in pushproxy uses it.
    handle_LDAPAddRequest = handle_LDAPDelRequest = handle_LDAPModifyRequest = _read_only
    handle_LDAPModifyDNRequest = handle_LDAPExtendedRequest = _read_only
    handle_LDAPCompareRequest = _read_only


class _DemoFactory(protocol.ServerFactory):
    protocol = _DemoLDAPServer

    def __init__(self, root):
        self.root = root
        self.connections: set[_DemoLDAPServer] = set()


# How LDAPServer finds the tree: it adapts its factory to IConnectedLDAPEntry.
components.registerAdapter(lambda factory: factory.root, _DemoFactory,
                           interfaces.IConnectedLDAPEntry)


class DemoDirectory:
    """A listening demo directory: ``port``, ``url``; ``stop()`` to shut it."""

    def __init__(self, listener, factory: _DemoFactory):
        self._listener = listener
        self._factory = factory
        host = listener.getHost()
        self.port: int = host.port
        self.url = f"ldap://[{host.host}]:{self.port}" if ":" in host.host else \
            f"ldap://{host.host}:{self.port}"
        self._closing: list[defer.Deferred] | None = None

    def stop(self) -> defer.Deferred:
        """Close the listener and every open connection; fires when all are gone."""
        if self._closing is None:
            self._closing = [defer.maybeDeferred(self._listener.stopListening)]
            for conn in list(self._factory.connections):
                self._closing.append(conn.closed)
                # abort, not loseConnection: a client that stops reading must
                # not hold up shutdown.
                conn.transport.abortConnection()
        # A fresh Deferred per call, so that callers cannot disturb each other.
        return defer.gatherResults(self._closing, consumeErrors=True).addCallback(lambda _: None)


def start_demo_directory(reactor, port: int = 0,
                         interface: str = "127.0.0.1") -> defer.Deferred:
    """Load the seed and listen on ``interface``:``port`` (0: any free port).

    Fires with a :class:`DemoDirectory`. Raises ValueError for a non-loopback
    ``interface``: the demo's passwords are public.
    """
    if not ipaddress.ip_address(interface).is_loopback:
        raise ValueError(f"the demo directory listens on loopback only, not {interface!r}")
    d = inmemory.fromLDIFFile(io.BytesIO(demo_ldif().encode("utf-8")))

    def listen(root):
        factory = _DemoFactory(root)
        return DemoDirectory(reactor.listenTCP(port, factory, interface=interface), factory)

    return d.addCallback(listen)
