"""The RADIUS front end: a thin UDP layer between datagrams and the engine.

    datagram -> client by source address -> header -> retransmit table
    -> decode + verify -> engine.login -> encoded reply (cached for retransmits)

Bad input is dropped here with a log line and a counter, never answered and
never able to stop the listener.
"""

from __future__ import annotations

import dataclasses
import logging
import socket

from twisted.internet.protocol import DatagramProtocol
from twisted.python.failure import Failure

from pushproxy import logs
from pushproxy.config import RadiusClient
from pushproxy.decision import Decision, Outcome, Reason
from pushproxy.engine import Engine, LoginRequest
from pushproxy.metrics import Counters
from pushproxy.netaddr import holds, peer_address
from pushproxy.radius import codec
from pushproxy.radius.attributes import AttributeError_
from pushproxy.radius.loglimit import LogLimiter
from pushproxy.radius.codec import DropPacket, DropReason
from pushproxy.radius.retransmit import RequestKey, RetransmitTable, State
from pushproxy.upstream import packets as upstream_packets
from pushproxy.upstream.primary import UpstreamPrimary, UpstreamStates

log = logging.getLogger("pushproxy.radius")

# Shown on the user's VPN client; deliberately vague about which factor failed.
REPLY_MESSAGES = {
    Outcome.ACCEPT: "Login approved",
    Outcome.REJECT: "Login denied",
    Outcome.CHALLENGE: "Continue in your authenticator app",
}
_CODES = {Outcome.ACCEPT: codec.ACCESS_ACCEPT, Outcome.REJECT: codec.ACCESS_REJECT,
          Outcome.CHALLENGE: codec.ACCESS_CHALLENGE}


class ClientTable:
    """Finds the configured client for a source address; the most specific network wins."""

    #: sources remembered (known or not) before the memory is cleared: a flood of
    #: spoofed addresses cannot grow it
    REMEMBER = 4096

    def __init__(self, clients: tuple[RadiusClient, ...]):
        self._clients = sorted(clients, key=lambda c: c.network.prefixlen, reverse=True)
        # host text -> its client (or None): every datagram asked again, and
        # parsing the address was a few percent of a login (issue 16). A reload
        # builds a new table, so nothing here outlives the clients it names.
        self._known: dict[str, RadiusClient | None] = {}

    def match(self, host: str) -> RadiusClient | None:
        """The client for ``host``, or None for an unknown source."""
        try:
            return self._known[host]
        except KeyError:
            pass
        client = self._match(host)
        if len(self._known) >= self.REMEMBER:
            self._known.clear()
        self._known[host] = client
        return client

    def _match(self, host: str) -> RadiusClient | None:
        addr = peer_address(host)
        if addr is None:
            return None
        for client in self._clients:
            if holds(client.network, addr):
                return client
        return None


class RadiusProtocol(DatagramProtocol):
    """One UDP listener; several may share one table, engine and counters."""

    def __init__(self, *, clients: ClientTable, engine: Engine, dictionary,
                 table: RetransmitTable, clock, counters: Counters,
                 default_no_device, max_pending: int = 100_000,
                 receive_buffer: int | None = None, upstreams: dict | None = None,
                 upstream_states: UpstreamStates | None = None, admission=None):
        self.clients = clients
        self.engine = engine
        self.dictionary = dictionary
        self.table = table
        self.clock = clock
        self.counters = counters
        self.default_no_device = default_no_device
        self.max_pending = max_pending
        self.receive_buffer = receive_buffer
        # client name -> UpstreamClient, for ``primary: radius`` clients (shared
        # with the daemon, which replaces entries on reload).
        self.upstreams = upstreams if upstreams is not None else {}
        self.upstream_states = upstream_states or UpstreamStates()
        self._drop_log = LogLimiter()
        self.accepting = True
        # pushproxy.overload.Admission: sheds new requests while the daemon is busy
        self.admission = admission
        self._shed_log = LogLimiter(every=10.0)

    def startProtocol(self) -> None:
        """Enlarge the receive buffer: a login storm arrives in bursts."""
        if self.receive_buffer and self.transport is not None:
            try:
                self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF,
                                                 self.receive_buffer)
            except (OSError, AttributeError) as exc:
                logs.event(log, logging.WARNING, "radius.rcvbuf_failed", error=str(exc))

    def datagramReceived(self, data: bytes, addr) -> None:
        """Every datagram ends here: answered, handed off, or dropped and counted."""
        host, port = addr[0], addr[1]
        client = self.clients.match(host)
        if client is None:
            self._drop(DropReason.UNKNOWN_CLIENT, host, None)
            return
        self.receive(data, host, port, client, _SendTo(self, addr))

    def receive(self, data: bytes, host: str, port: int, client: RadiusClient, send, *,
                v11: bool = False) -> DropReason | None:
        """One request from a known ``client``; replies go to ``send(bytes)``.

        The UDP listener and the RadSec connections (pushproxy.radsec) share this
        path: retransmit table, decode and verify, admission, engine. ``v11``:
        RADIUS/1.1 inside TLS. Returns why the request was dropped, else None.
        """
        try:
            code, ident, authenticator = codec.peek_header(data)
        except DropPacket as exc:
            return self._drop(exc.reason, host, client, exc.detail)
        key = RequestKey(host, port, ident, authenticator)
        now = self.clock.seconds()
        lookup = self.table.receive(key, now)
        if lookup.state is State.ANSWERED:
            self.counters.inc("radius_retransmits", client=client.name, state="answered")
            send(lookup.reply)
            return None
        if lookup.state is State.IN_FLIGHT:
            self.counters.inc("radius_retransmits", client=client.name, state="in_flight")
            return self._drop(DropReason.RETRANSMIT_IN_FLIGHT, host, client,
                              level=logging.DEBUG)
        if not self.accepting:
            # Stopping: answered retransmits above still get their reply, but
            # nothing new starts (the NAS fails over to another server).
            self.table.abandon(key)
            return self._drop(DropReason.SHUTTING_DOWN, host, client)
        if code != codec.STATUS_SERVER and self.admission is not None:
            shed = self.admission.admit(key, now)
            if shed is not None:
                # Not answered and not remembered: the NAS's retransmit is a new
                # request again, served once there is room (issue 22).
                self.table.abandon(key)
                return self._shed(shed, host, client)
        try:
            request = codec.decode_request(
                data, client.secret, self.dictionary,
                require_message_authenticator=client.require_message_authenticator, v11=v11,
                limit_proxy_state=getattr(client, "limit_proxy_state", False))
            if request.code != codec.STATUS_SERVER and self.engine.pending >= self.max_pending:
                raise DropPacket(DropReason.OVERLOADED, f"{self.engine.pending} pending")
        except DropPacket as exc:
            self.table.abandon(key)
            return self._drop(exc.reason, host, client, exc.detail)
        self.counters.inc("radius_requests", client=client.name)
        if request.code == codec.STATUS_SERVER:
            # RFC 5997: a verified Status-Server is answered with Access-Accept.
            return self._send(key, send, codec.encode_reply(request, codec.ACCESS_ACCEPT))
        reply = _Reply(self, request, host, key, send)
        # One LoginRequest per login (a pending login keeps it): made with its
        # reply's hooks, not copied to add them.
        login = LoginRequest(
            protocol="radius", username=request.username,
            password=request.password, client_name=client.name, source=host,
            calling_station=request.calling_station, nas=request.nas,
            nas_ip=request.nas_ip, port=request.nas_port,
            no_device=client.no_device or self.default_no_device,
            state=request.state, verification=client.verification, requires=client.requires,
            finalize=reply.finalize, deliver=reply.deliver)
        upstream = self.upstreams.get(client.name) if client.upstream is not None else None
        if upstream is not None:
            try:
                login, reply.eap = self._upstream_login(login, request, upstream, now)
            except AttributeError_ as exc:
                # pyrad tolerates a last attribute running past the end; the
                # raw parse for forwarding does not.
                self.table.abandon(key)
                return self._drop(DropReason.MALFORMED, host, client, str(exc))
        # Bound methods of the reply, no arguments: the cheapest callbacks a
        # pending login can hold (issue 16).
        self.engine.login(login).addCallbacks(reply.decided, reply.failed)
        return None

    def _upstream_login(self, login: LoginRequest, request: codec.AccessRequest,
                        upstream, now: float) -> tuple[LoginRequest, bool]:
        """A ``primary: radius`` login: the upstream checks the first factor.

        A State that belongs to a Challenge we relayed from an upstream server
        sends the follow-up back to that server (EAP's next round); any other
        State is the engine's own (verified push).
        """
        raw = request.raw
        pinned = None
        if request.state is not None:
            pinned = self.upstream_states.take(request.state, login.client_name, now)
            if pinned is None:
                return login, False
        eap = upstream_packets.is_eap(raw)
        primary = UpstreamPrimary(upstream, raw, states=self.upstream_states, eap=eap,
                                  pinned=pinned, directory=self.engine.directory)
        return dataclasses.replace(login, state=None, primary=primary,
                                   credential=upstream_packets.proof_of(raw)), eap

    def _decided(self, decision: Decision, reply: "_Reply", key, send) -> None:
        if reply.sent:  # written once the decision was recorded (`_Reply.deliver`)
            return None
        data = reply.encoded(decision)
        if data is None:
            self.table.abandon(key)
            self._drop(DropReason.MALFORMED, key.host, None, "no reply fits in 4096 octets")
            return None
        self._send(key, send, data)
        return None

    def _send(self, key: RequestKey, send, reply: bytes) -> None:
        self.table.answer(key, reply, self.clock.seconds())
        self.counters.inc("radius_replies")
        try:
            send(reply)
        except (OSError, AttributeError) as exc:
            # The listener closed while this login was decided (shutdown).
            logs.event(log, logging.WARNING, "radius.send_failed", error=str(exc))

    def _failed(self, failure, key: RequestKey) -> None:
        # The engine never errbacks; if it did, no reply (the NAS retries),
        # and never an Accept.
        log.error("radius.reply_failed %s", failure.getTraceback())
        self.counters.inc("internal_errors")
        if self.table.state(key, self.clock.seconds()) is State.IN_FLIGHT:
            self.table.abandon(key)  # (a reply already delivered stays cached)

    def _shed(self, reason, host: str, client: RadiusClient) -> DropReason:
        self.counters.inc("radius_drops", reason=DropReason.OVERLOADED.value)
        self.counters.inc("radius_overloaded", reason=reason.value)
        suppressed = self._shed_log.note(reason, self.clock.seconds())
        if suppressed is not None:
            logs.event(log, logging.WARNING, "radius.overloaded", reason=reason.value,
                       source=host, client=client.name, suppressed=suppressed or None,
                       load=dataclasses.asdict(self.admission.load()))
        return DropReason.OVERLOADED

    def _drop(self, reason: DropReason, host: str, client: RadiusClient | None,
              detail: str = "", level: int = logging.INFO) -> DropReason:
        self.counters.inc("radius_drops", reason=reason.value)
        # Counted always, logged once a minute per source and reason: a flood
        # of junk must not turn into a flood of log lines.
        suppressed = self._drop_log.note((reason, host), self.clock.seconds())
        if suppressed is None:
            return reason
        logs.event(log, level, "radius.drop", reason=reason.value, source=host,
                   client=client.name if client else None, detail=detail or None,
                   suppressed=suppressed or None)
        return reason


class _SendTo:
    """``send(bytes)`` to one NAS address through the listener (a slotted record:
    every pending login holds one)."""

    __slots__ = ("proto", "addr")

    def __init__(self, proto: RadiusProtocol, addr):
        self.proto = proto
        self.addr = addr

    def __call__(self, data: bytes) -> None:
        self.proto.transport.write(data, self.addr)


class _Reply:
    """One request's reply: encoded when the engine finalizes its decision.

    Encoding happens before the decision is audited, so a reply that cannot
    be sent as decided (relayed upstream attributes next to the NAS's
    Proxy-State passing RFC 2865's 4096 octets) is audited as what the NAS
    really gets: a plain Reject, reason ``reply_too_large``.
    """

    # Slotted: one of these lives for every pending login (issue 16).
    __slots__ = ("proto", "host", "key", "send", "sent", "request", "eap", "decision", "data")

    def __init__(self, proto: RadiusProtocol, request: codec.AccessRequest,
                 host: str, key: RequestKey | None = None, send=None, eap: bool = False):
        self.proto = proto
        self.host = host
        self.key = key
        self.send = send  # bytes -> None: to the NAS's address, or its RadSec connection
        self.sent = False
        self.request = request
        self.eap = eap  # an EAP conversation relayed upstream (set after the upstream parse)
        self.decision: Decision | None = None
        self.data: bytes | None = None

    def finalize(self, decision: Decision) -> Decision:
        """Encode ``decision``; what the NAS will get, which may be a plain Reject."""
        try:
            self.data = self._encode(decision)
        except DropPacket as exc:
            # No answer would make the NAS resend, and each resend would run
            # the login (and its push) again: a plain Reject grants nothing.
            self.proto.counters.inc("radius_replies_too_large")
            logs.event(log, logging.WARNING, "radius.reply_too_large", source=self.host,
                       outcome=decision.outcome.value, detail=exc.detail)
            decision = dataclasses.replace(Decision.of(Reason.REPLY_TOO_LARGE),
                                           txid=decision.txid, device=decision.device,
                                           rule=decision.rule, user=decision.user)
            try:
                self.data = self._encode(decision)
            except DropPacket:
                self.data = None
        self.decision = decision
        return decision

    def deliver(self) -> None:
        """Send the finalized reply now: the engine calls this once the decision is
        audited and logged, before the rest of the login's end (issue 16)."""
        if self.data is not None and self.key is not None and not self.sent:
            self.sent = True
            self.proto._send(self.key, self.send, self.data)

    def decided(self, decision: Decision) -> None:
        """The engine's Deferred fired: send the reply unless `deliver` already did."""
        try:
            return self.proto._decided(decision, self, self.key, self.send)
        except Exception:  # as an errback after this callback would see it
            return self.proto._failed(Failure(), self.key)

    def failed(self, failure) -> None:
        """The engine's Deferred failed (it never should): no reply, never an Accept."""
        return self.proto._failed(failure, self.key)

    def encoded(self, decision: Decision) -> bytes | None:
        """The bytes for ``decision``: those made at finalize, or made now."""
        if self.decision is not decision:
            self.finalize(decision)
        return self.data

    def _encode(self, decision: Decision) -> bytes:
        request, eap = self.request, self.eap
        relayed = decision.reason is Reason.UPSTREAM_CHALLENGE or (
            decision.outcome is not Outcome.ACCEPT and bool(decision.attributes))
        message = decision.message or REPLY_MESSAGES[decision.outcome]
        if eap or relayed or any(a.key == (0, 18) for a in decision.attributes):
            # The upstream speaks for itself; and RFC 3579 2.6.5: no Reply-Message
            # of ours next to EAP.
            message = None
        attributes = decision.attributes
        if eap and decision.outcome is Outcome.REJECT and not relayed:
            # Our own Reject (push denied) ends the EAP conversation with an
            # EAP-Failure for the device (RFC 3579 2.6.3).
            failure = upstream_packets.eap_failure(request.raw)
            attributes = (failure,) if failure is not None else ()
        return codec.encode_reply(request, _CODES[decision.outcome], reply_message=message,
                                  state=decision.state, raw=attributes)
