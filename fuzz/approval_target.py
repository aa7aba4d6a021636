"""The approval API fuzz target: raw HTTP through the real Site, service and SQLite store.

`Harness` is a complete approval service (in-memory SQLite, `Clock`, inline
store runner) behind the real `ApiSite`, with one enrolled phone, one unused
enrollment link and two logins waiting for an answer (one plain, one with
number matching). `Harness.exchange` feeds raw request bytes to an
`HTTPChannel` over a `StringTransport` and returns the status codes sent.

The harness can sign what a fuzzer cannot forge (a device request's
X-Signature, an answer's signature, the real enrollment token), so fuzzed
fields reach the code behind those checks. `check` is the oracle:

- no answer is a 5xx (an exception escaped a handler), and every request gets one;
- a waiting login is approved only when the harness itself signed an
  ``approve`` for it with the phone's key (and the right number, for number
  matching): hostile JSON, wrong types, forged or replayed signatures never
  approve anything;
- a device is enrolled only with the real enrollment token;
- the third login needs presence (a passkey assertion, docs/presence.md) and the
  phone has a passkey whose private key nobody holds: it is never approved.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.test.proto_helpers import StringTransport

from pushproxy.approval import crypto
from pushproxy.approval.api import build_site
from pushproxy.approval.asyncstore import AsyncStore
from pushproxy.approval.passkeystore import Passkey
from pushproxy.approval.presence import RelyingParty
from pushproxy.approval.webpush import b64url_encode
from pushproxy.approval.service import ApprovalService, new_enrollment
from pushproxy.approval.store import SQLiteStore
from pushproxy.decision import PushStatus
from pushproxy.metrics import Counters
from pushproxy.push import ApprovalRequest

T0 = 1_800_000_000
NUMBER = "42"
PHONE_KEY = ec.generate_private_key(ec.SECP256R1())
PHONE_PUBLIC = crypto.public_key_text(PHONE_KEY.public_key())
NEW_KEY = ec.generate_private_key(ec.SECP256R1())
NEW_PUBLIC = crypto.public_key_text(NEW_KEY.public_key())
# The phone's passkey: a real ES256 COSE key whose private half is thrown away.
_PASSKEY = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
PASSKEY_COSE = b64url_encode(
    b"\xa5\x01\x02\x03\x26\x20\x01\x21\x58\x20" + _PASSKEY.x.to_bytes(32, "big")
    + b"\x22\x58\x20" + _PASSKEY.y.to_bytes(32, "big"))
PASSKEY_ID = b64url_encode(b"fuzz-passkey-id!")
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3}) ")


class OracleFailure(AssertionError):
    """The API did something the oracle forbids."""


@dataclass
class Harness:
    """One approval service with a phone, an unused link and two waiting logins."""

    source: str = "198.51.100.20"
    clock: Clock = field(default_factory=Clock)
    signed_approvals: set = field(default_factory=set)  # txids the harness validly approved
    token_sent: bool = False  # a request carried the real enrollment token

    def __post_init__(self):
        self.clock.advance(T0)
        self.store = SQLiteStore(":memory:")
        self.counters = Counters()
        self.service = ApprovalService(
            store=AsyncStore.inline(self.store), reactor=self.clock, counters=self.counters,
            vapid_public_key="vapid",
            relying_party=RelyingParty.from_public_url("https://mfa.example"))
        self.site = build_site(self.service, max_body=16384, reactor=self.clock, app=None)
        link = new_enrollment(self.store, "alice", "https://mfa.example", 900, T0)
        token = link.split("#", 1)[1]
        sig = crypto.sign(PHONE_KEY, crypto.enroll_text(token, PHONE_PUBLIC, "phone"))
        self.device = _value(self.service.enroll(token, PHONE_PUBLIC, "phone", None, sig))
        self.token = new_enrollment(self.store, "alice", "https://mfa.example", 900,
                                    T0).split("#", 1)[1]
        self.store.add_passkey(Passkey(PASSKEY_ID, self.device.id, PASSKEY_COSE, 0, True,
                                       False, False, T0))
        self.results = {}
        for txid, verification, presence in (("tx-plain", "none", None),
                                             ("tx-number", "number_match", None),
                                             ("tx-presence", "none", "refuse")):
            got = []
            self.service.request_approval(ApprovalRequest(
                txid=txid, username="alice", application="vpn", client_ip="198.51.100.7",
                nas="gw1", created=T0, expires=T0 + 600, verification=verification,
                number=NUMBER if verification == "number_match" else None,
                user_verification=presence)).addBoth(got.append)
            self.results[txid] = got
        self.nonces = {tx.id: tx.nonce for tx in self.store.pending_transactions("alice", T0)}

    # -- what the harness can sign

    def sign_request(self, method: str, path: str, body: bytes, nonce: str,
                     timestamp: str | None = None) -> dict[str, str]:
        """Valid device-authentication headers for this request."""
        stamp = timestamp if timestamp is not None else str(int(self.clock.seconds()))
        return crypto.device_headers(PHONE_KEY, self.device.id, method, path, body,
                                     timestamp=stamp, nonce=nonce)

    def sign_answer(self, txid: str, decision: str, number: str | None) -> str | None:
        """The phone's signature over an answer (None if no device could sign it as UTF-8).

        Records a valid approval, which the oracle then allows.
        """
        if not all(_utf8(v) for v in (txid, decision, number or "")):
            return None
        nonce = self.nonces.get(txid, "no-such-nonce")
        matching = txid == "tx-number" and decision == "approve"
        text = crypto.answer_text(txid, nonce, decision, "alice", self.device.id,
                                  number if matching else None)
        if decision == "approve" and txid == "tx-plain":
            self.signed_approvals.add(txid)
        if matching and number == NUMBER:
            self.signed_approvals.add(txid)
        return crypto.sign(PHONE_KEY, text)

    @staticmethod
    def sign_enroll(token: str, public_key: str, name: str) -> str | None:
        """A new device's self-signature over its enrollment (None if not UTF-8 text)."""
        if not all(_utf8(v) for v in (token, public_key, name)):
            return None
        return crypto.sign(NEW_KEY, crypto.enroll_text(token, public_key, name))

    # -- talking HTTP

    def exchange(self, raw: bytes, settle: float = 31.0, source: str | None = None) -> list[int]:
        """Feed raw request bytes on one connection; the status codes answered.

        ``settle``: seconds the Clock advances afterwards (31 ends any long-poll).
        """
        transport = StringTransport(peerAddress=IPv4Address("TCP", source or self.source, 40000),
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 8443))
        channel = self.site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        channel.dataReceived(raw)
        self.clock.advance(settle)
        channel.connectionLost(Failure(ConnectionDone()))
        self.last_response = transport.value()
        return [int(code) for code in _STATUS.findall(self.last_response)]

    def check(self, statuses: list[int], expect_answer: bool = True) -> None:
        """The oracle (see the module docstring)."""
        if expect_answer and not statuses:
            raise OracleFailure("no answer at all")
        if any(code >= 500 for code in statuses):
            raise OracleFailure(f"server error {statuses}")
        for txid, got in self.results.items():
            approved = got and getattr(got[0], "status", None) is PushStatus.APPROVED
            if approved and txid not in self.signed_approvals:
                raise OracleFailure(f"{txid} approved without a valid signed approve")
        devices = self.store.devices("alice")
        if len(devices) > 1 and self.token_sent is not True:
            raise OracleFailure("a device enrolled without the real token")


def http_request(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    """Raw HTTP/1.1 request bytes (header values encoded as UTF-8, as a hostile client may)."""
    lines = [f"{method} {path} HTTP/1.1".encode("utf-8", "surrogatepass"), b"Host: mfa.example",
             b"Content-Length: %d" % len(body), b"Connection: close"]
    for name, value in headers.items():
        lines.append(name.encode("ascii") + b": " + value.encode("utf-8", "surrogatepass"))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def json_body(value) -> bytes:
    """JSON text of ``value`` (lone surrogates kept as \\u escapes, as an attacker may send)."""
    return json.dumps(value).encode("ascii")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: valid in JSON, not in UTF-8
        return False
    return True


def _value(d):
    out = []
    d.addBoth(out.append)
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]
