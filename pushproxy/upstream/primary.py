"""The first factor of a ``primary: radius`` login: the request itself, forwarded upstream.

`UpstreamPrimary` is what the engine calls instead of the directory: it
forwards the original request and turns the upstream's answer into a
`PrimaryResult` (Accept: OK with the attributes to pass on; Reject: bad
credentials with what to relay; Challenge: another round trip; silence:
unavailable).

`UpstreamStates` remembers the State of every Challenge relayed from an
upstream server, so that the follow-up request (EAP's next round, a
password-change prompt) goes back to THAT server and not to the engine's own
challenge table (verified push uses State too).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from twisted.internet import defer

from pushproxy import logs
from pushproxy.adstate import AccountState, mschap_error_state
from pushproxy.decision import PrimaryResult, PrimaryStatus
from pushproxy.upstream.client import UpstreamClient
from pushproxy.upstream.packets import (ACCESS_ACCEPT, ACCESS_CHALLENGE, MICROSOFT, relayed,
                                        reply_user_name, state_of)

log = logging.getLogger("pushproxy.upstream")

MS_CHAP_ERROR = 2  # Microsoft vendor attribute (RFC 2548 2.1.5)
STATE_TTL = 120.0  # seconds a relayed Challenge's State stays valid for its follow-up


@dataclass(frozen=True)
class _StateEntry:
    client: str
    server: int
    expires: float


class UpstreamStates:
    """State values of relayed upstream Challenges: client + server, single use, expiring."""

    def __init__(self, max_open: int = 100_000):
        self.max_open = max_open
        self._open: OrderedDict[bytes, _StateEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._open)

    def remember(self, state: bytes, client: str, server: int, now: float) -> None:
        """A Challenge with ``state`` from ``server`` was relayed to ``client``."""
        self._expire(now)
        while len(self._open) >= self.max_open:
            self._open.popitem(last=False)
        self._open.pop(state, None)
        self._open[state] = _StateEntry(client, server, now + STATE_TTL)

    def take(self, state: bytes, client: str, now: float) -> int | None:
        """The server a follow-up with ``state`` from ``client`` must go to, or None (not ours)."""
        self._expire(now)
        entry = self._open.get(state)
        if entry is None or entry.client != client:
            return None
        # Single use: a NAS resend of the same follow-up is caught by the
        # retransmit table; a replay later finds nothing here.
        del self._open[state]
        return entry.server

    def _expire(self, now: float) -> None:
        while self._open:
            state, entry = next(iter(self._open.items()))
            if entry.expires > now:
                break
            del self._open[state]


class UpstreamPrimary:
    """One login's first factor: its original request, forwarded by ``client``."""

    def __init__(self, client: UpstreamClient, raw_request: bytes, *, states: UpstreamStates,
                 eap: bool, pinned: int | None = None, directory=None):
        self.client = client
        # With groups_from_ldap: the directory looks the user up after the Accept.
        self.directory = directory
        self.raw_request = raw_request
        self.states = states
        self.eap = eap
        self.pinned = pinned

    @defer.inlineCallbacks
    def authenticate(self, username: str, password: str | None):
        """Forward the request; never errbacks (the engine's contract for a directory)."""
        settings = self.client.settings
        exchange = yield self.client.exchange(self.raw_request, password, pinned=self.pinned)
        if exchange.reply is None:
            return PrimaryResult(PrimaryStatus.UNAVAILABLE,
                                 detail=f"no upstream answered ({exchange.attempts} sent)")
        server = settings.servers[exchange.server].name
        reply = exchange.reply
        attributes = relayed(reply, settings.pass_attributes)
        if reply.code == ACCESS_CHALLENGE:
            state = state_of(reply)
            if state is not None:
                self.states.remember(state, self.client.client_name, exchange.server,
                                     self.client.clock.seconds())
            return PrimaryResult(PrimaryStatus.CHALLENGE, server=server, attributes=attributes)
        if reply.code != ACCESS_ACCEPT:
            # An MS-CHAP-Error naming the account's state (E=648 expired, 647
            # disabled...) gets that audit reason; the Reject is relayed as
            # it came, so the client still sees the upstream's own code.
            state = mschap_state(reply.attributes)
            if state is not None:
                return PrimaryResult(PrimaryStatus.ACCOUNT_REFUSED, server=server,
                                     detail="upstream Access-Reject (MS-CHAP-Error)",
                                     attributes=attributes, account_state=state,
                                     password_proved=state is not AccountState.ACCOUNT_LOCKED)
            return PrimaryResult(PrimaryStatus.BAD_CREDENTIALS, server=server,
                                 detail="upstream Access-Reject", attributes=attributes)
        proved = reply_user_name(reply)
        if self.eap and proved is None and not settings.trust_outer_identity:
            # The outer EAP identity is whatever the device wrote; pushing to it
            # would let one user's password open another user's push.
            logs.event(log, logging.WARNING, "upstream.eap_without_identity",
                       client=self.client.client_name, server=server, user=username)
            return PrimaryResult(PrimaryStatus.UNKNOWN_USER, server=server,
                                 detail="EAP Accept without User-Name")
        identity = proved if self.eap else None
        if not settings.groups_from_ldap:
            return PrimaryResult(PrimaryStatus.OK, server=server, username=identity,
                                 attributes=attributes)
        if self.directory is None or not hasattr(self.directory, "lookup"):
            return PrimaryResult(PrimaryStatus.UNAVAILABLE, server=server,
                                 detail="groups_from_ldap without a directory")
        name = identity or username
        if getattr(getattr(self.directory, "config", None), "active_directory", None) is None:
            name = directory_name(name)  # with AD domains the lookup reads DOMAIN\user itself
        found = yield self.directory.lookup(name)
        if found.status is not PrimaryStatus.OK:
            # Unknown in the directory, not in ldap.required_groups, or the
            # directory is down: the groups decide policy, so fail closed.
            return PrimaryResult(found.status, dn=found.dn, server=server,
                                 detail=f"directory lookup: {found.detail}",
                                 account=found.account, account_state=found.account_state,
                                 password_proved=True)
        # The entry's stored name is the account (as for primary: ldap).
        return PrimaryResult(PrimaryStatus.OK, dn=found.dn, server=server, username=identity,
                             groups=found.groups, attributes=attributes, account=found.account)


def mschap_state(attributes) -> AccountState | None:
    """The account state the first MS-CHAP-Error in an upstream's Reject names, if any."""
    for attr in attributes:
        if attr.key == (MICROSOFT, MS_CHAP_ERROR):
            return mschap_error_state(attr.value)
    return None


def directory_name(username: str) -> str:
    """The name to look up in the directory.

    MS-CHAP clients often send ``DOMAIN\\user`` where the directory knows
    ``user``; an ``@realm`` suffix is kept (user_filter may match
    userPrincipalName).
    """
    return username.rsplit("\\", 1)[-1]
