"""The command-line authenticator: a device of the approval API (docs/approval-protocol.md).

For users without a browser on hand, for demos and for tests. It holds its
P-256 key in a state directory and speaks the same signed protocol as the web
authenticator, over `requests`::

    pushproxy authenticator enroll 'https://mfa.example.com/app/enroll#TOKEN' --state ~/.mfa
    pushproxy authenticator watch --state ~/.mfa
    pushproxy authenticator approve --state ~/.mfa
    pushproxy authenticator code --state ~/.mfa   # offline: the current TOTP code

The state directory holds ``device.json`` (where the server is, who this
device is, and its TOTP secret for offline codes; mode 0600) and ``key.pem``
(the private key, PKCS#8, mode 0600). A key file that others can read is
refused: whoever reads it can approve logins.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import stat
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, TextIO
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushproxy import passcodes
from pushproxy.approval import crypto
from pushproxy.argtypes import seconds, whole_number
from pushproxy.approval.webpush import b64url_encode

STATE_FILE = "device.json"
KEY_FILE = "key.pem"
#: How long a long-poll of ``watch`` asks the server to hold the answer (the protocol allows 30).
WATCH_WAIT = 25
#: Seconds to connect, and to read beyond any long-poll wait.
CONNECT_TIMEOUT = 10.0
READ_MARGIN = 15.0
#: Ceiling of the retry back-off of ``watch`` after network or server errors.
MAX_BACKOFF = 30.0
_ENROLL_PATH = "/app/enroll"

#: A `requests` verify= value; None: the CA recorded at enrollment, else the system CAs.
Verify = bool | str | None


class AuthenticatorError(Exception):
    """Something the user has to know about; ``str()`` is the whole message."""


class ApiError(AuthenticatorError):
    """The server refused: HTTP ``status``, protocol ``code`` and the server's ``message``."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{message} ({code}, HTTP {status})" if message
                         else f"{code} (HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class NetworkError(AuthenticatorError):
    """The server could not be reached or did not answer in time."""


@dataclass(frozen=True)
class DeviceState:
    """What ``device.json`` records about the enrolled device."""

    base_url: str  # public_url of the approval service, without trailing slash
    device_id: str
    username: str
    name: str
    public_key: str  # b64u uncompressed point, as registered
    ca_file: str | None = None  # the private CA given at enrollment, reused later
    # base32 TOTP secret from the enroll answer (None: the server sent none); kept
    # out of repr: whoever has it can log in with the user's password
    totp_secret: str | None = field(default=None, repr=False)


# -- the state directory


def _state_paths(state_dir: str) -> tuple[str, str]:
    return os.path.join(state_dir, STATE_FILE), os.path.join(state_dir, KEY_FILE)


def _write_private(path: str, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the start (never briefly readable); never overwrite."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def load_state(state_dir: str) -> tuple[DeviceState, ec.EllipticCurvePrivateKey]:
    """Read the device state and its key; AuthenticatorError if missing, unsafe or broken."""
    state_path, key_path = _state_paths(state_dir)
    try:
        with open(state_path, encoding="utf-8") as f:
            raw = json.load(f)
        secret = raw.get("totp_secret")
        state = DeviceState(**{k: raw[k] for k in ("base_url", "device_id", "username", "name",
                                                   "public_key")}, ca_file=raw.get("ca_file"),
                            totp_secret=secret if isinstance(secret, str) else None)
    except FileNotFoundError:
        raise AuthenticatorError(f"{state_path}: not enrolled (run 'enroll' first)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuthenticatorError(f"{state_path}: unreadable device state: {exc}") from None
    try:
        fd = os.open(key_path, os.O_RDONLY)
    except OSError as exc:
        raise AuthenticatorError(f"{key_path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        # fstat of the opened file: no window between the check and the read.
        mode = os.fstat(f.fileno()).st_mode
        if mode & 0o077:
            raise AuthenticatorError(
                f"{key_path}: permissions {stat.filemode(mode)} let others use this device's "
                f"key; refusing it (chmod 600 {key_path})")
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise AuthenticatorError(f"{key_path}: not a usable private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise AuthenticatorError(f"{key_path}: not a P-256 key")
    if crypto.public_key_text(key.public_key()) != state.public_key:
        raise AuthenticatorError(f"{key_path}: does not match the key in {state_path}")
    return state, key


def parse_enrollment_url(url: str) -> tuple[str, str]:
    """Split ``{public_url}/app/enroll#{token}`` into (base_url, token)."""
    head, sep, token = url.strip().partition("#")
    parts = urlsplit(head)
    if not sep or not token or parts.scheme not in ("http", "https") or not parts.netloc \
            or parts.query or not parts.path.rstrip("/").endswith(_ENROLL_PATH):
        raise AuthenticatorError(
            "not an enrollment link: expected https://HOST/.../app/enroll#TOKEN "
            "(quote it in the shell: '#' starts a comment)")
    base_url = head.rstrip("/")[: -len(_ENROLL_PATH)]
    return base_url, token


def default_name() -> str:
    """The device name used when none is given: 'cli@HOSTNAME', within the 64-character limit."""
    return f"cli@{socket.gethostname()}"[:64]


# -- HTTP


def _session(verify: bool | str) -> requests.Session:
    session = requests.Session()
    session.verify = verify
    if verify is False:
        # The user asked for it explicitly; one line at the start beats a warning per request.
        from urllib3.exceptions import InsecureRequestWarning

        warnings.simplefilter("ignore", InsecureRequestWarning)
    return session


def _send(session: requests.Session, prepared: requests.PreparedRequest,
          read_timeout: float) -> dict:
    try:
        response = session.send(prepared, timeout=(CONNECT_TIMEOUT, read_timeout),
                                allow_redirects=False)
    except requests.exceptions.SSLError as exc:
        raise NetworkError(f"TLS failure talking to {prepared.url}: {exc} "
                           "(for a private CA use --ca-file)") from None
    except requests.RequestException as exc:
        raise NetworkError(f"cannot reach {prepared.url}: {exc}") from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code >= 400 or not isinstance(data, dict):
        error = data if isinstance(data, dict) else {}
        code = error.get("error")
        message = error.get("message")
        raise ApiError(response.status_code,
                       code if isinstance(code, str) else f"http_{response.status_code}",
                       message if isinstance(message, str) else (response.reason or ""))
    return data


def _resolve_verify(verify: Verify, state: DeviceState | None) -> bool | str:
    if verify is not None:
        return verify
    if state is not None and state.ca_file:
        return state.ca_file
    return True


class DeviceClient:
    """An enrolled device talking to its server: the signed requests of the protocol."""

    def __init__(self, state_dir: str, verify: Verify = None):
        self.state_dir = state_dir
        self.state, self._key = load_state(state_dir)
        self._session = _session(_resolve_verify(verify, self.state))

    def close(self) -> None:
        """Close the HTTP connections."""
        self._session.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, body: dict | None = None,
                read_timeout: float = READ_MARGIN) -> dict:
        """A device-authenticated request of ``path`` (with query) under the base URL."""
        data = b"" if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        prepared = self._session.prepare_request(
            requests.Request(method, self.state.base_url + path, data=data, headers=headers))
        # Sign exactly what goes on the wire: requests may re-quote the path.
        timestamp = str(int(time.time()))
        nonce = b64url_encode(os.urandom(16))
        text = crypto.request_text(method, prepared.path_url, timestamp, nonce,
                                   prepared.body or b"")
        prepared.headers.update({
            "X-Device-Id": self.state.device_id,
            "X-Timestamp": timestamp,
            "X-Nonce": nonce,
            "X-Signature": crypto.sign(self._key, text),
        })
        return _send(self._session, prepared, read_timeout)

    def pending(self, wait: float = 0) -> tuple[list[dict], float]:
        """The open requests and the server's time (long-polls up to ``wait`` seconds)."""
        wait_text = f"{wait:.3f}".rstrip("0").rstrip(".")
        data = self.request("GET", f"/v1/device/pending?wait={wait_text}",
                            read_timeout=wait + READ_MARGIN)
        requests_ = data.get("requests")
        server_time = data.get("server_time")
        if not isinstance(requests_, list) or not all(isinstance(r, dict) for r in requests_) \
                or not isinstance(server_time, (int, float)):
            raise AuthenticatorError("the server's pending list is malformed")
        return requests_, float(server_time)

    def answer(self, entry: dict, decision: str, number: str | None = None) -> dict:
        """Answer one entry of the pending list with ``approve``, ``deny`` or ``fraud``.

        A number-matching request needs ``number``: what the login screen shows.
        The server's answer carries ``code`` for an approved code-to-login request.
        """
        if decision not in crypto.DECISIONS:
            raise AuthenticatorError(f"decision must be one of {', '.join(crypto.DECISIONS)}")
        txid, nonce, username = entry.get("txid"), entry.get("nonce"), entry.get("username")
        if not all(isinstance(v, str) for v in (txid, nonce, username)):
            raise AuthenticatorError("the server sent a request without txid, nonce or username")
        matching = entry.get("verification") == "number_match" and decision == "approve"
        if matching and not (number and number.isdigit()):
            raise AuthenticatorError("this request uses number matching: give the number shown "
                                     "on the login screen (--number N)")
        # The signature binds this answer to this transaction, user and device only.
        text = crypto.answer_text(txid, nonce, decision, username, self.state.device_id,
                                  number if matching else None)
        body = {"txid": txid, "decision": decision, "signature": crypto.sign(self._key, text)}
        if matching:
            body["number"] = number
        return self.request("POST", "/v1/device/answer", body)

    def set_subscription(self, subscription: dict | None) -> dict:
        """Replace this device's Web Push subscription (None: long-poll only)."""
        return self.request("PUT", "/v1/device/subscription", {"push_subscription": subscription})


# -- plain functions, for tests and the demo


def enroll(url: str, state_dir: str, name: str | None = None, verify: bool | str = True) -> dict:
    """Enroll a new device with the link ``url``; writes the state into ``state_dir``.

    Returns the saved state (``base_url``, ``device_id``, ``username``, ``name``,
    ``public_key``, ``ca_file``, ``totp_secret``). Raises ApiError if the server
    refuses the link.
    """
    base_url, token = parse_enrollment_url(url)
    name = default_name() if name is None else name
    state_path, key_path = _state_paths(state_dir)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    for path in (state_path, key_path):
        if os.path.lexists(path):
            raise AuthenticatorError(f"{path} exists: this directory already holds a device "
                                     "(use another --state directory)")
    key = ec.generate_private_key(ec.SECP256R1())
    public_key = crypto.public_key_text(key.public_key())
    # The key is on disk before the one-time link is spent, so a success never loses it.
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    try:
        session = _session(verify)
        with session:
            body = {"token": token, "public_key": public_key, "name": name,
                    "push_subscription": None,
                    "signature": crypto.sign(key, crypto.enroll_text(token, public_key, name))}
            prepared = session.prepare_request(
                requests.Request("POST", base_url + "/v1/enroll", json=body,
                                 headers={"Accept": "application/json"}))
            answer = _send(session, prepared, READ_MARGIN)
        device_id, username = answer.get("device_id"), answer.get("username")
        if not isinstance(device_id, str) or not isinstance(username, str):
            raise AuthenticatorError("the server's enrollment answer is malformed")
    except BaseException:
        os.unlink(key_path)  # not enrolled: the key is worthless
        raise
    ca_file = os.path.abspath(verify) if isinstance(verify, str) else None
    state = DeviceState(base_url=base_url, device_id=device_id, username=username, name=name,
                        public_key=public_key, ca_file=ca_file,
                        totp_secret=_totp_secret(answer.get("totp_secret")))
    _write_private(state_path, (json.dumps(asdict(state), indent=2) + "\n").encode("utf-8"))
    return asdict(state)


def _totp_secret(value: Any) -> str | None:
    """The enroll answer's TOTP secret if usable; the server sends it only this once."""
    if not isinstance(value, str) or not value:
        return None
    try:
        passcodes.totp(value, 0)
    except ValueError:
        # Enrolled anyway (the link is spent): the device still works for pushes.
        return None
    return value


def current_code(state_dir: str, now: float | None = None) -> tuple[str, int]:
    """The device's current TOTP code and the seconds it stays valid; no network needed."""
    state, _ = load_state(state_dir)
    if state.totp_secret is None:
        raise AuthenticatorError("this device has no TOTP secret (its server did not send "
                                 "one at enrollment): enroll it again for offline codes")
    now = time.time() if now is None else now
    return (passcodes.totp(state.totp_secret, passcodes.totp_step(now)),
            passcodes.totp_seconds_left(now))


def pending(state_dir: str, wait: float = 0, verify: Verify = None) -> list[dict]:
    """The open requests for this device's user (long-polls up to ``wait`` seconds).

    Each entry is the server's, plus ``seconds_left`` reckoned on the server's clock.
    """
    with DeviceClient(state_dir, verify) as device:
        entries, server_time = device.pending(wait)
    return [dict(entry, seconds_left=_seconds_left(entry, server_time)) for entry in entries]


def answer(state_dir: str, txid: str, decision: str, verify: Verify = None,
           number: str | None = None) -> dict:
    """Answer the open request ``txid`` (``approve``, ``deny`` or ``fraud``).

    Returns the server's answer (``{"status": "recorded"}``, with ``code`` for an
    approved code-to-login request); raises ApiError when the server refuses,
    AuthenticatorError when ``txid`` is not open for this user.
    """
    with DeviceClient(state_dir, verify) as device:
        entries, _ = device.pending(0)
        entry = _find(entries, txid)
        return device.answer(entry, decision, number)


def _find(entries: list[dict], txid: str) -> dict:
    for entry in entries:
        if entry.get("txid") == txid:
            return entry
    # Its nonce is needed to sign an answer, and only open requests show it.
    raise AuthenticatorError(f"no open request {txid} for this user "
                             "(unknown, already answered or expired)")


def _seconds_left(entry: dict, server_time: float) -> float:
    expires = entry.get("expires")
    return max(0.0, float(expires) - server_time) if isinstance(expires, (int, float)) else 0.0


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


def describe(entry: dict, server_time: float) -> str:
    """A multi-line, terminal-safe description of one pending request."""
    created = entry.get("created")
    when = (time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(created))
            if isinstance(created, (int, float)) else "-")
    return "\n".join([
        f"request {_clean(entry.get('txid'))}",
        f"  user:        {_clean(entry.get('username'))}",
        f"  application: {_clean(entry.get('application'))}",
        f"  client IP:   {_clean(entry.get('client_ip'))}",
        f"  NAS:         {_clean(entry.get('nas'))}",
        f"  check:       {_VERIFICATION.get(entry.get('verification'), 'approve or deny')}",
        f"  time:        {when}",
        f"  expires in:  {_seconds_left(entry, server_time):.0f} s",
    ])


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


def _cmd_answer(args: argparse.Namespace, decision: str) -> int:
    try:
        with DeviceClient(args.state, _args_verify(args)) as device:
            entries, server_time = device.pending(0)
            if args.txid is not None:
                entry = _find(entries, args.txid)
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
    """Run the authenticator alone: ``python -m pushproxy.approval.authenticator enroll ...``."""
    parser = argparse.ArgumentParser(prog="pushproxy")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["authenticator", *(sys.argv[1:] if argv is None else argv)])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
