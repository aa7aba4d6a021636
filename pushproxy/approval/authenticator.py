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

The commands themselves (argument parsing, the terminal prompts of ``watch``)
are in `pushproxy.approval.authenticator_cli`.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pushproxy import passcodes
from pushproxy.approval import crypto

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
        prepared.headers.update(crypto.device_headers(
            self._key, self.state.device_id, method, prepared.path_url, prepared.body or b""))
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

    def device_link(self) -> dict:
        """A one-time link for another device of this user ("add a device"): link, expires."""
        return self.request("POST", "/v1/device/enrollment", {})

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
    return [dict(entry, seconds_left=request_seconds_left(entry, server_time)) for entry in entries]


def answer(state_dir: str, txid: str, decision: str, verify: Verify = None,
           number: str | None = None) -> dict:
    """Answer the open request ``txid`` (``approve``, ``deny`` or ``fraud``).

    Returns the server's answer (``{"status": "recorded"}``, with ``code`` for an
    approved code-to-login request); raises ApiError when the server refuses,
    AuthenticatorError when ``txid`` is not open for this user.
    """
    with DeviceClient(state_dir, verify) as device:
        entries, _ = device.pending(0)
        entry = find_request(entries, txid)
        return device.answer(entry, decision, number)


def find_request(entries: list[dict], txid: str) -> dict:
    """The open request ``txid`` among ``entries``; AuthenticatorError when it is not open."""
    for entry in entries:
        if entry.get("txid") == txid:
            return entry
    # Its nonce is needed to sign an answer, and only open requests show it.
    raise AuthenticatorError(f"no open request {txid} for this user "
                             "(unknown, already answered or expired)")


def request_seconds_left(entry: dict, server_time: float) -> float:
    """Seconds until a request expires, by the server's clock (never negative)."""
    expires = entry.get("expires")
    return max(0.0, float(expires) - server_time) if isinstance(expires, (int, float)) else 0.0
