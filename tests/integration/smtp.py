"""A real SMTP server on loopback for tests: aiosmtpd with STARTTLS (required) or
implicit TLS, and AUTH.

`SmtpServer` runs aiosmtpd's Controller (its own thread and asyncio loop) on
127.0.0.1 with the test CA's server certificate, requires STARTTLS before
anything else, accepts exactly one user/password, and keeps every accepted
mail as a parsed ``email.message.EmailMessage``. ``refuse`` names recipients
it answers 550 to (a mailbox the server refuses).
"""

from __future__ import annotations

import email
import email.policy
import ssl
import threading
import time
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

USER = "pushproxy-mailer"
PASSWORD = "smtp-secret-pw"


class _Handler:
    def __init__(self, server: "SmtpServer"):
        self.server = server

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.server.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.original_content or envelope.content,
                                       policy=email.policy.default)
        with self.server.lock:
            self.server.received.append((session.authenticated, list(envelope.rcpt_tos), msg))
        return "250 OK queued"


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode() \
        and auth_data.password == PASSWORD.encode()
    return AuthResult(success=ok, handled=False)


class SmtpServer:
    """aiosmtpd on 127.0.0.1:``port`` with STARTTLS and AUTH; ``received`` holds the mails."""

    def __init__(self, cert: str | Path, key: str | Path, port: int, *,
                 implicit_tls: bool = False):
        self.port = port
        self.refuse: set[str] = set()
        self.received: list[tuple[bool, list[str], email.message.EmailMessage]] = []
        self.lock = threading.Lock()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(cert), str(key))
        # STARTTLS required, or (implicit_tls) TLS from the first byte, as on port 465.
        # aiosmtpd 1.4 counts only STARTTLS as TLS for auth_require_tls (it would offer
        # no AUTH at all on an implicit-TLS session), so that check is off there: the
        # whole session is TLS anyway.
        tls = {"ssl_context": context, "auth_require_tls": False} if implicit_tls else {
            "tls_context": context, "require_starttls": True, "auth_require_tls": True}
        self._controller = Controller(
            _Handler(self), hostname="127.0.0.1", port=port, authenticator=_authenticator,
            auth_required=True, server_hostname="localhost", ready_timeout=10, **tls)

    def start(self) -> "SmtpServer":
        """Listen (returns once the server answers)."""
        self._controller.start()
        return self

    def stop(self) -> None:
        """Stop listening (idempotent)."""
        try:
            self._controller.stop()
        except AssertionError:  # already stopped
            pass

    def mails(self) -> list[email.message.EmailMessage]:
        """The accepted mails so far, oldest first."""
        with self.lock:
            return [m for _, _, m in self.received]

    def wait_for(self, count: int, deadline: float = 10.0) -> list:
        """The mails once at least ``count`` arrived (AssertionError after ``deadline``)."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            mails = self.mails()
            if len(mails) >= count:
                return mails
            time.sleep(0.05)
        raise AssertionError(f"{len(self.mails())} mail(s) arrived, expected {count}")
