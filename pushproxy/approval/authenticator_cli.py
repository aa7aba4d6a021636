"""The command line of the CLI authenticator: ``pushproxy authenticator enroll|watch|...``.

`pushproxy.approval.authenticator` is the device (state, keys, the signed
protocol); this module shows requests in the terminal and asks the user.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Callable, TextIO

from pushproxy.argtypes import seconds, whole_number
from pushproxy.approval.authenticator import (MAX_BACKOFF, WATCH_WAIT, ApiError,
                                              AuthenticatorError, DeviceClient, Verify,
                                              current_code, default_name, enroll,
                                              find_request, request_seconds_left)


# -- showing requests


def _clean(value: Any) -> str:
    """Printable text of a server-supplied value.

    Client IP and NAS come from RADIUS attributes anyone can send; escape
    sequences in them must not reach the terminal.
    """
    if value is None:
        return "-"
    text = str(value)
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


_VERIFICATION = {
    "number_match": "number matching: type the number shown on the login screen",
    "code_to_login": "after approving, type the code shown here at the login prompt",
}


def _location(entry: dict) -> str:
    """The request's location line ("-" when the server sent none); bounded, printable."""
    location = entry.get("location")
    label = location.get("label") if isinstance(location, dict) else None
    return _clean(label)[:160] if isinstance(label, str) else "-"


def _warnings(entry: dict) -> list[str]:
    """The request's risk warnings ("First login from Portugal"), at most 5, printable."""
    found = entry.get("warnings")
    if not isinstance(found, list):
        return []
    return [f"  WARNING:     {_clean(w)[:160]}" for w in found[:5] if isinstance(w, str)]


def describe(entry: dict, server_time: float) -> str:
    """A multi-line, terminal-safe description of one pending request."""
    created = entry.get("created")
    when = (time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(created))
            if isinstance(created, (int, float)) else "-")
    # presence (docs/presence.md): this authenticator has no passkey
    presence = (["  presence:    needs a face or fingerprint on a phone with a passkey: an "
                 "approve from here counts only if the policy allows it"]
                if entry.get("user_verification") == "required" else [])
    return "\n".join([
        f"request {_clean(entry.get('txid'))}",
        f"  user:        {_clean(entry.get('username'))}",
        f"  application: {_clean(entry.get('application'))}",
        f"  client IP:   {_clean(entry.get('client_ip'))}",
        f"  location:    {_location(entry)}",
        *_warnings(entry),
        f"  NAS:         {_clean(entry.get('nas'))}",
        f"  check:       {_VERIFICATION.get(entry.get('verification'), 'approve or deny')}",
        f"  time:        {when}",
        f"  expires in:  {request_seconds_left(entry, server_time):.0f} s",
    ] + presence)


# -- the command line


def _args_verify(args: argparse.Namespace) -> Verify:
    if getattr(args, "insecure", False):
        print("warning: not verifying the server's TLS certificate (--insecure)",
              file=sys.stderr)
        return False
    return getattr(args, "ca_file", None)  # None: the CA recorded at enrollment, else system


def _fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 1


def cmd_enroll(args: argparse.Namespace) -> int:
    """``authenticator enroll URL``."""
    verify = _args_verify(args)
    try:
        state = enroll(args.url, args.state, args.name, True if verify is None else verify)
    except (AuthenticatorError, OSError) as exc:
        return _fail(exc)
    print(f"enrolled device {state['device_id']} ({state['name']}) for user {state['username']}")
    print(f"state saved in {os.path.abspath(args.state)}")
    return 0


def cmd_code(args: argparse.Namespace) -> int:
    """``authenticator code``: the current offline code (for ``password,CODE``)."""
    try:
        code, left = current_code(args.state)
    except AuthenticatorError as exc:
        return _fail(exc)
    print(f"{code}  ({left} s left)")
    return 0


def cmd_pending(args: argparse.Namespace) -> int:
    """``authenticator pending``: list the open requests."""
    try:
        with DeviceClient(args.state, _args_verify(args)) as device:
            entries, server_time = device.pending(args.wait)
    except AuthenticatorError as exc:
        return _fail(exc)
    if not entries:
        print("no pending requests")
    for entry in entries:
        print(describe(entry, server_time))
    return 0


def cmd_add_device(args: argparse.Namespace) -> int:
    """``authenticator add-device``: a one-time link (and QR code) for another device."""
    try:
        with DeviceClient(args.state, _args_verify(args)) as device:
            answer = device.device_link()
    except AuthenticatorError as exc:
        return _fail(exc)
    link = answer.get("link")
    if not isinstance(link, str):
        return _fail(AuthenticatorError("the server's answer has no link"))
    if not args.no_qr:
        import segno

        segno.make(link, error="m").terminal(out=sys.stdout, compact=True)
    print(f"Open this link on the new device (works once, valid until "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(answer.get('expires', 0)))}):")
    print(link)
    return 0


def _cmd_answer(args: argparse.Namespace, decision: str) -> int:
    try:
        with DeviceClient(args.state, _args_verify(args)) as device:
            entries, server_time = device.pending(0)
            if args.txid is not None:
                entry = find_request(entries, args.txid)
            elif not entries:
                raise AuthenticatorError("no pending request to answer")
            elif len(entries) > 1:
                listing = "\n".join(describe(e, server_time) for e in entries)
                raise AuthenticatorError(f"{len(entries)} pending requests; name one by its "
                                         f"TXID:\n{listing}")
            else:
                entry = entries[0]
            result = device.answer(entry, decision, getattr(args, "number", None))
    except AuthenticatorError as exc:
        return _fail(exc)
    print(f"{decision}: {_clean(entry.get('txid'))}: {_clean(result.get('status'))}")
    if result.get("code"):
        print(f"enter this code at the login prompt: {_clean(result.get('code'))}")
    return 0 if result.get("status") == "recorded" else 1


def cmd_approve(args: argparse.Namespace) -> int:
    """``authenticator approve [TXID]``."""
    return _cmd_answer(args, "approve")


def cmd_deny(args: argparse.Namespace) -> int:
    """``authenticator deny [TXID] [--fraud]``."""
    return _cmd_answer(args, "fraud" if args.fraud else "deny")


def cmd_watch(args: argparse.Namespace) -> int:
    """``authenticator watch``: long-poll and answer requests as they come."""
    try:
        device = DeviceClient(args.state, _args_verify(args))
    except AuthenticatorError as exc:
        return _fail(exc)
    with device:
        try:
            return watch(device, auto=args.auto, count=args.count, timeout=args.timeout)
        except KeyboardInterrupt:
            print("", file=sys.stderr)
            return 130


def _ask(entry: dict, stdin: TextIO, out: TextIO) -> str | None:
    """y/n/f from the user; None when stdin is closed."""
    while True:
        out.write("approve this login? [y]es / [n]o / [f]raud, it wasn't me: ")
        out.flush()
        line = stdin.readline()
        if not line:
            out.write("\n")
            return None
        reply = line.strip().lower()
        if reply in ("y", "yes"):
            return "approve"
        if reply in ("n", "no"):
            return "deny"
        if reply in ("f", "fraud"):
            return "fraud"


def watch(device: DeviceClient, *, auto: str | None = None, count: int | None = None,
          timeout: float | None = None, stdin: TextIO | None = None,
          out: TextIO | None = None, err: TextIO | None = None,
          sleep: Callable[[float], None] = time.sleep,
          clock: Callable[[], float] = time.monotonic) -> int:
    """Long-poll for requests and answer each new one (``auto`` or asking on ``stdin``).

    Runs until ``count`` requests are answered, ``timeout`` seconds pass, stdin
    closes, or the server refuses the device. Network and server errors are
    retried with back-off. Returns 0, or 1 if ``count`` was not reached or the
    device was refused.
    """
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    err = err or sys.stderr
    deadline = None if timeout is None else clock() + timeout
    seen: set[str] = set()
    handled = 0
    backoff = 1.0

    def remaining() -> float:
        return float("inf") if deadline is None else deadline - clock()

    def done(code_if_short: int = 1) -> int:
        return 0 if count is None or handled >= count else code_if_short

    def pause(seconds: float) -> bool:
        """Sleep within the deadline; False when the deadline has come."""
        seconds = min(seconds, remaining())
        if seconds <= 0:
            return False
        sleep(seconds)
        return remaining() > 0

    print(f"watching for requests for {device.state.username} (device {device.state.device_id})",
          file=out, flush=True)
    while count is None or handled < count:
        left = remaining()
        if left <= 0:
            print("watch: time is up", file=err, flush=True)
            return done()
        try:
            entries, server_time = device.pending(min(WATCH_WAIT, left))
        except ApiError as exc:
            if exc.status < 500:
                # Revoked device, bad clock, wrong server: retrying cannot help.
                print(f"watch: the server refused this device: {exc}", file=err, flush=True)
                return 1
            print(f"watch: server error: {exc}; retrying in {backoff:.0f} s", file=err, flush=True)
            if not pause(backoff):
                return done()
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        except AuthenticatorError as exc:
            print(f"watch: {exc}; retrying in {backoff:.0f} s", file=err, flush=True)
            if not pause(backoff):
                return done()
            backoff = min(backoff * 2, MAX_BACKOFF)
            continue
        backoff = 1.0
        current = {e.get("txid") for e in entries}
        seen &= current  # forget what closed: the set stays small in a long run
        fresh = [e for e in entries if e.get("txid") not in seen]
        for entry in fresh:
            if count is not None and handled >= count:
                break
            seen.add(entry.get("txid"))
            print(describe(entry, server_time), file=out, flush=True)
            number = None
            if auto is not None:
                decision = auto
                if decision == "approve" and entry.get("verification") == "number_match":
                    # Only a person who sees the login screen can approve this one.
                    print("  -> left open: number matching needs the number from the "
                          "login screen", file=out, flush=True)
                    continue
            else:
                decision = _ask(entry, stdin, out)
                if decision is None:
                    print("watch: stdin closed, stopping", file=err, flush=True)
                    return done()
                if decision == "approve" and entry.get("verification") == "number_match":
                    out.write("number shown on the login screen: ")
                    out.flush()
                    number = stdin.readline().strip()
            try:
                result = device.answer(entry, decision, number)
                print(f"  -> {decision}: {_clean(result.get('status'))}", file=out, flush=True)
                if result.get("code"):
                    print(f"  -> enter this code at the login prompt: "
                          f"{_clean(result.get('code'))}", file=out, flush=True)
            except ApiError as exc:
                print(f"  -> {decision} refused: {exc}", file=out, flush=True)
            except AuthenticatorError as exc:
                # Not answered: let the next poll show it again.
                seen.discard(entry.get("txid"))
                print(f"  -> {decision} not sent: {exc}", file=err, flush=True)
                if not pause(backoff):
                    return done()
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            handled += 1
        if entries and not fresh:
            # The server answers at once while anything is open, even what we already
            # showed: slow down instead of spinning on it.
            if not pause(2.0):
                return done()
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``authenticator`` and its commands on an argparse subparsers object."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state", required=True, metavar="DIR",
                        help="the device's state directory (device.json, key.pem)")
    tls = common.add_mutually_exclusive_group()
    tls.add_argument("--ca-file", metavar="FILE",
                     help="verify the server's certificate against this CA bundle")
    tls.add_argument("--insecure", action="store_true",
                     help="do not verify the server's TLS certificate (testing only)")

    parser = subparsers.add_parser(
        "authenticator", help="a command-line approval device (headless users, demos, tests)",
        description="A command-line approval device: enroll it with a link from "
                    "'pushproxy enroll USER', then approve or deny logins.")
    sub = parser.add_subparsers(dest="authenticator_command", required=True, metavar="COMMAND")

    p = sub.add_parser("enroll", parents=[common], help="enroll this device with a one-time link")
    p.add_argument("url", metavar="URL", help="the enrollment link, .../app/enroll#TOKEN")
    p.add_argument("--name", help=f"the device's name (default: {default_name()})")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("pending", parents=[common], help="list the open requests")
    p.add_argument("--wait", type=seconds(0, 30, allow_low=True), default=0.0, metavar="N",
                   help="wait up to N seconds (0-30) for a request to appear")
    p.set_defaults(func=cmd_pending)

    p = sub.add_parser("approve", parents=[common], help="approve a request")
    p.add_argument("txid", nargs="?", metavar="TXID",
                   help="the request (default: the only open one)")
    p.add_argument("--number", metavar="N",
                   help="number matching: the number shown on the login screen")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("deny", parents=[common], help="deny a request")
    p.add_argument("txid", nargs="?", metavar="TXID",
                   help="the request (default: the only open one)")
    p.add_argument("--fraud", action="store_true",
                   help="report it: this login attempt was not me")
    p.set_defaults(func=cmd_deny)

    p = sub.add_parser("add-device", parents=[common],
                       help="a one-time link for another device of the same user")
    p.add_argument("--no-qr", action="store_true", help="print the link only")
    p.set_defaults(func=cmd_add_device)

    # Offline: no server, so no TLS options.
    p = sub.add_parser("code", help="show the current passcode (works offline)",
                       description="Print the current 6-digit passcode and the seconds it "
                                   "stays valid. Type it after your password, "
                                   "e.g. 'password,123456', when no push arrives.")
    p.add_argument("--state", required=True, metavar="DIR",
                   help="the device's state directory (device.json, key.pem)")
    p.set_defaults(func=cmd_code)

    p = sub.add_parser("watch", parents=[common], help="wait for requests and answer them")
    p.add_argument("--auto", choices=("approve", "deny"),
                   help="answer every request this way instead of asking")
    p.add_argument("--count", type=whole_number(1), metavar="N",
                   help="stop after answering N requests")
    p.add_argument("--timeout", type=seconds(), metavar="SECONDS",
                   help="stop after this many seconds")
    p.set_defaults(func=cmd_watch)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the authenticator alone: ``python -m pushproxy.approval.authenticator_cli enroll ...``."""
    parser = argparse.ArgumentParser(prog="pushproxy")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["authenticator", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
