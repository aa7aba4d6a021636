"""The enrollment mail: a plain-text and an HTML body with the QR code inline, and SMTP.

The bodies come from ``enroll.txt`` and ``enroll.html`` (``string.Template``,
``$name`` placeholders): ours in ``pushproxy/rollout/templates``, or the
admin's from ``mail.templates`` (either file, or both). Placeholders: ``$user``,
``$link``, ``$expires``, ``$days``, ``$service``; the HTML also has ``$qr_cid``
(``<img src="cid:$qr_cid">``) and ``$qr_size``. Values are HTML-escaped in the
HTML body. A template with an unknown placeholder is refused before anything is
sent (`Templates.check`).

`SmtpSender` is blocking smtplib, for the command line (and a worker thread of
the daemon): STARTTLS is required when configured (no silent fallback to clear
text), certificates are verified, AUTH only after TLS.
"""

from __future__ import annotations

import html
import io
import smtplib
import socket
import ssl
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from importlib import resources
from pathlib import Path
from string import Template

import segno

from pushproxy.audit import utc_stamp
from pushproxy.rollout.mailconfig import MailConfig, MailSecurity

QR_SCALE = 6


class TemplateError(Exception):
    """An admin's template cannot be used (unreadable, unknown placeholder)."""


class SendError(Exception):
    """The SMTP server did not accept a mail. ``fatal``: no later mail can go either
    (server down, TLS or authentication refused), so the caller stops trying."""

    def __init__(self, message: str, *, fatal: bool):
        super().__init__(message)
        self.fatal = fatal


@dataclass(frozen=True)
class Templates:
    """The text and HTML templates in use, and where each came from."""

    text: str
    html: str
    text_source: str
    html_source: str

    @classmethod
    def load(cls, folder: str | None) -> "Templates":
        """Ours, with any of enroll.txt / enroll.html found in ``folder`` instead."""
        found = {}
        for name in ("enroll.txt", "enroll.html"):
            custom = Path(folder, name) if folder else None
            if custom is not None and custom.is_file():
                try:
                    found[name] = (custom.read_text(encoding="utf-8"), str(custom))
                except (OSError, UnicodeDecodeError) as exc:
                    raise TemplateError(f"{custom}: {exc}") from None
            else:
                ours = resources.files("pushproxy.rollout").joinpath("templates", name)
                found[name] = (ours.read_text(encoding="utf-8"), f"built-in {name}")
        return cls(found["enroll.txt"][0], found["enroll.html"][0],
                   found["enroll.txt"][1], found["enroll.html"][1])

    def check(self) -> None:
        """TemplateError if a template names a placeholder we do not fill."""
        for body, source, values in ((self.text, self.text_source, _values("u", "l", 0, "s")),
                                     (self.html, self.html_source,
                                      _values("u", "l", 0, "s", html=True))):
            try:
                Template(body).substitute(values)
            except (KeyError, ValueError) as exc:
                raise TemplateError(f"{source}: unknown or malformed placeholder {exc} "
                                    f"(known: {', '.join('$' + k for k in sorted(values))})"
                                    ) from None


def _values(user: str, link: str, expires: float, service: str, *, html: bool = False,
            days: float = 0) -> dict:
    values = {"user": user, "link": link, "expires": utc_stamp(expires)[:16].replace("T", " "),
              "days": f"{days:g}", "service": service}
    if html:
        values = {k: _escape(v) for k, v in values.items()}
        values.update(qr_cid="qr", qr_size="0")
    return values


def _escape(value: str) -> str:
    return html.escape(value, quote=True)


def qr_png(link: str) -> tuple[bytes, int]:
    """The link as a PNG QR code, and its width in pixels."""
    qr = segno.make(link, error="m")
    out = io.BytesIO()
    qr.save(out, kind="png", scale=QR_SCALE, border=4)
    width, _ = qr.symbol_size(scale=QR_SCALE, border=4)
    return out.getvalue(), width


def enrollment_message(config: MailConfig, templates: Templates, *, user: str, address: str,
                       link: str, expires: float, now: float) -> EmailMessage:
    """The complete mail for one user (text + HTML alternative, QR code inline)."""
    days = max(0.0, round((expires - now) / 86400.0, 1))
    msg = EmailMessage()
    msg["Subject"] = config.subject
    msg["From"] = config.sender
    msg["To"] = address
    msg["Date"] = formatdate(now, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=config.sender.rpartition("@")[2].rstrip(">")
                                   or None)
    # RFC 3834: no out-of-office replies to a robot
    msg["Auto-Submitted"] = "auto-generated"
    msg.set_content(Template(templates.text).substitute(
        _values(user, link, expires, config.service_name, days=days)))
    png, width = qr_png(link)
    cid = make_msgid(domain="pushproxy.invalid")
    values = _values(user, link, expires, config.service_name, html=True, days=days)
    values.update(qr_cid=cid[1:-1], qr_size=str(width))
    msg.add_alternative(Template(templates.html).substitute(values), subtype="html")
    msg.get_payload()[1].add_related(png, maintype="image", subtype="png", cid=cid,
                                     filename="enrollment-qr.png")
    return msg


class SmtpSender:
    """One SMTP session for many mails; reconnects once if the server hangs up."""

    def __init__(self, config: MailConfig):
        self.config = config
        self._smtp: smtplib.SMTP | None = None

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.config.ca_file)

    def _connect(self) -> smtplib.SMTP:
        c = self.config
        where = f"{c.host}:{c.port}"
        try:
            if c.security is MailSecurity.TLS:
                smtp = smtplib.SMTP_SSL(c.host, c.port, timeout=c.timeout,
                                        context=self._context())
            else:
                smtp = smtplib.SMTP(c.host, c.port, timeout=c.timeout)
            try:
                smtp.ehlo()
                if c.security is MailSecurity.STARTTLS:
                    if not smtp.has_extn("starttls"):
                        raise SendError(f"{where} offers no STARTTLS (mail.security: starttls "
                                        "never falls back to clear text)", fatal=True)
                    smtp.starttls(context=self._context())
                    smtp.ehlo()
                if c.username is not None:
                    smtp.login(c.username, c.password or "")
            except BaseException:
                smtp.close()
                raise
        except SendError:
            raise
        except smtplib.SMTPNotSupportedError:
            raise SendError(f"{where} offers no AUTH, but mail.username is set", fatal=True) \
                from None
        except smtplib.SMTPAuthenticationError as exc:
            raise SendError(f"{where} refused mail.username {c.username!r}: "
                            f"{_reply(exc)}", fatal=True) from None
        except (smtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise SendError(f"cannot reach {where}: {type(exc).__name__}: {exc}",
                            fatal=True) from None
        return smtp

    def send(self, msg: EmailMessage) -> None:
        """Hand one mail over; SendError unless the server accepted it for its recipient."""
        for attempt in range(2):
            if self._smtp is None:
                self._smtp = self._connect()
            try:
                refused = self._smtp.send_message(msg)
            except smtplib.SMTPRecipientsRefused as exc:
                (code, text), = exc.recipients.values()
                raise SendError(f"recipient refused: {code} {_text(text)}", fatal=False) \
                    from None
            except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
                raise SendError(f"mail refused: {_reply(exc)}", fatal=False) from None
            except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException,
                    OSError, socket.timeout) as exc:
                self.close()
                if attempt == 0 and not isinstance(exc, socket.timeout):
                    continue  # a session closed for idling: once more on a new one
                raise SendError(f"the server stopped answering: {type(exc).__name__}: {exc}",
                                fatal=True) from None
            if refused:
                raise SendError(f"recipient refused: {refused}", fatal=False)
            return
        raise AssertionError("unreachable")

    def close(self) -> None:
        """End the session (QUIT if the server still listens)."""
        if self._smtp is not None:
            try:
                self._smtp.quit()
            except (smtplib.SMTPException, OSError):
                self._smtp.close()
            self._smtp = None


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _reply(exc) -> str:
    code = getattr(exc, "smtp_code", "")
    return f"{code} {_text(getattr(exc, 'smtp_error', exc))}".strip()
