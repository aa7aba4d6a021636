"""``pushproxy radius-test``: send one PAP login to a RADIUS server and print the answer.

A small radtest for admins and for the demo: it signs the request with a
Message-Authenticator, waits as long as a push may take, retransmits the very
same packet like a NAS would, and verifies the reply (Response Authenticator
and Message-Authenticator) before believing it.
"""

from __future__ import annotations

import socket
import sys
import time
from dataclasses import dataclass

from pyrad import packet as rpacket

from pushproxy.radius import codec

EXIT_ACCEPT, EXIT_REJECT, EXIT_NO_ANSWER = 0, 1, 2


@dataclass(frozen=True)
class Outcome:
    """What one radius-test exchange saw: the answer, or enough to say why there was none."""

    code: str  # "Access-Accept", "Access-Reject", "Access-Challenge", ... or "no answer"
    message: str | None  # Reply-Message
    sent: int = 0  # datagrams sent (the first and the retransmits)
    refused: int = 0  # ICMP port unreachable: nothing listens at the address
    unverified: int = 0  # replies whose authenticators do not verify with our secret
    source: str = ""  # the address this machine sent from (what the server sees)


def login(server: str, secret: bytes, username: str, password: str, *,
          calling_station: str | None = None, nas_identifier: str = "pushproxy-radius-test",
          timeout: float = 75.0, retry_every: float = 5.0) -> tuple[str, str | None]:
    """Send the login; returns (code name or "no answer", Reply-Message)."""
    outcome = exchange(server, secret, username, password, calling_station=calling_station,
                       nas_identifier=nas_identifier, timeout=timeout, retry_every=retry_every)
    return outcome.code, outcome.message


def exchange(server: str, secret: bytes, username: str, password: str, *,
             calling_station: str | None = None, nas_identifier: str = "pushproxy-radius-test",
             timeout: float = 75.0, retry_every: float = 5.0) -> Outcome:
    """Send the login, retransmitting like a NAS; the typed outcome."""
    host, _, port = server.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    pkt = rpacket.AuthPacket(code=rpacket.AccessRequest, secret=secret,
                             dict=codec.load_dictionary())
    pkt["User-Name"] = username
    pkt["User-Password"] = pkt.PwCrypt(password)
    pkt["NAS-Identifier"] = nas_identifier
    if calling_station:
        pkt["Calling-Station-Id"] = calling_station
    pkt.add_message_authenticator()
    raw = pkt.RequestPacket()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    deadline = time.monotonic() + timeout
    sent = refused = unverified = 0
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((host, int(port)))
        source = sock.getsockname()[0]
        while time.monotonic() < deadline:
            try:
                sock.send(raw)
                sent += 1
            except ConnectionRefusedError:  # the ICMP error of the previous send
                refused += 1
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                continue
            sock.settimeout(min(retry_every, max(0.1, deadline - time.monotonic())))
            try:
                data = sock.recv(4096)
            except socket.timeout:
                continue
            except ConnectionRefusedError:
                refused += 1
                time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                continue
            try:
                reply = pkt.CreateReply(packet=data)
            except rpacket.PacketError:
                unverified += 1
                continue
            if not pkt.VerifyReply(reply, data, enforce_ma=True):
                unverified += 1
                continue  # not from a server that knows the secret: ignore, as a NAS would
            message = dict.get(reply, 18)
            text = message[0].decode("utf-8", "replace") if message else None
            names = {rpacket.AccessAccept: "Access-Accept", rpacket.AccessReject: "Access-Reject",
                     rpacket.AccessChallenge: "Access-Challenge"}
            return Outcome(names.get(reply.code, f"code {reply.code}"), text, sent, refused,
                           unverified, source)
    return Outcome("no answer", None, sent, refused, unverified, source)


def explain(outcome: Outcome, server: str, timeout: float) -> list[str]:
    """Why there was no (believable) answer, from what this side could see."""
    if outcome.code != "no answer":
        return []
    if outcome.unverified:
        return [f"{outcome.unverified} reply(ies) came back but did not verify (Response "
                "Authenticator / Message-Authenticator): the shared secret is wrong. The "
                f"server has another secret for this client ({outcome.source}); compare "
                "the secret file with the client's secret_file on the server."]
    if outcome.refused and outcome.refused >= outcome.sent // 2:
        return [f"{server} refused the datagrams (ICMP port unreachable): nothing listens on "
                "that port. Is the daemon running, and is this its radius.listen address "
                "and port?"]
    return [
        f"no answer within {timeout:g} s ({outcome.sent} sends). pushproxy answers nothing, "
        "on purpose, when:",
        f"  - this machine's address ({outcome.source}) is in no radius.clients entry "
        "(the server logs radius.drop reason=unknown_client);",
        "  - the shared secret is wrong (the request's Message-Authenticator does not "
        "verify: radius.drop reason=bad_message_authenticator);",
        "  - a firewall drops UDP to the port (or the replies back); or the login still waits "
        "for the phone, if --timeout is below push.timeout + the directory's time.",
    ]


def cmd_radius_test(args) -> int:
    """CLI handler: exit 0 on Accept, 1 on Reject or Challenge, 2 on no answer."""
    if args.secret_file:
        with open(args.secret_file, encoding="utf-8") as f:
            secret = f.read().rstrip("\r\n")
    else:
        secret = sys.stdin.readline().rstrip("\r\n") if args.secret is None else args.secret
    password = args.password if args.password is not None else sys.stdin.readline().rstrip("\n")
    print(f"Sending a login for {args.username!r} to {args.server}; "
          f"approve it on the phone (waiting up to {args.timeout:g} s)...", flush=True)
    outcome = exchange(args.server, secret.encode("utf-8"), args.username, password,
                       calling_station=args.calling_station, timeout=args.timeout)
    print(outcome.code + (f" ({outcome.message})" if outcome.message else ""))
    for line in explain(outcome, args.server, args.timeout):
        print(line)
    if outcome.code == "Access-Accept":
        return EXIT_ACCEPT
    return EXIT_NO_ANSWER if outcome.code == "no answer" else EXIT_REJECT


def add_parser(sub) -> None:
    """Register ``radius-test`` on the CLI's subparsers."""
    p = sub.add_parser("radius-test", help="send one PAP login and print the answer")
    p.add_argument("username")
    p.add_argument("password", nargs="?", help="default: read from standard input")
    p.add_argument("--server", default="127.0.0.1:1812", help="HOST:PORT (default %(default)s)")
    p.add_argument("--secret-file", help="file holding the RADIUS shared secret")
    p.add_argument("--secret", help="the shared secret (visible in ps; prefer --secret-file)")
    p.add_argument("--calling-station", default="192.0.2.10",
                   help="Calling-Station-Id to send (the client IP the phone shows)")
    p.add_argument("--timeout", type=float, default=75.0, help="seconds to wait (default 75)")
    p.set_defaults(func=cmd_radius_test)
