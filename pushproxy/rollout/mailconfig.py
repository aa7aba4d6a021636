"""The ``mail:`` config section: how enrollment links reach users by mail.

```yaml
mail:
  host: smtp.example.com
  port: 587                      # default: 587 (starttls), 465 (tls), 25 (none)
  security: starttls             # starttls | tls (implicit, "SMTPS") | none
  username: pushproxy@example.com
  password_file: /etc/pushproxy/smtp-password   # or password_env
  from: "VPN sign-in <mfa@example.com>"
  link_validity_days: 14
```

The password, like every secret, comes from a file or the environment. Without
``username`` nothing is authenticated (a relay that trusts our address). A
password is never sent over a connection without TLS: ``security: none`` with
``username`` is refused unless the host is the local machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.headerregistry import Address
from email.utils import parseaddr
from enum import Enum

from pushproxy.checker import Checker
from pushproxy.netaddr import is_loopback

DEFAULT_SUBJECT = "Set up sign-in approval on your phone"


class MailSecurity(Enum):
    """How the SMTP connection is protected."""

    STARTTLS = "starttls"  # plain connect, then STARTTLS (required: no fallback)
    TLS = "tls"  # TLS from the first byte (port 465)
    NONE = "none"  # a local relay only


DEFAULT_PORTS = {MailSecurity.STARTTLS: 587, MailSecurity.TLS: 465, MailSecurity.NONE: 25}


@dataclass(frozen=True)
class MailConfig:
    """The validated ``mail:`` section."""

    host: str
    port: int
    security: MailSecurity
    username: str | None
    password: str | None = field(repr=False)
    sender: str  # the From: header, "Name <addr>" or "addr"
    link_validity: float  # seconds an enrollment link sent by mail stays valid
    subject: str = DEFAULT_SUBJECT
    ca_file: str | None = None  # None: the system's trust store
    templates: str | None = None  # a folder with enroll.txt / enroll.html overriding ours
    timeout: float = 30.0  # seconds for connect and each SMTP reply
    mail_attribute: str = "mail"  # the directory attribute holding the address
    login_mail_interval: float = 86400.0  # no_device: enroll: at most one mail per user per
    service_name: str = "the VPN"  # what the mail says the user signs in to


def parse_mail(c: Checker, value) -> MailConfig | None:
    """Validate the ``mail:`` section (None when absent or wrong; problems go to ``c``)."""
    if value is None:
        return None
    m = c.mapping(value, "mail", required=("host", "from"),
                  optional=("port", "security", "username", "password_file", "password_env",
                            "link_validity_days", "subject", "ca_file", "templates",
                            "timeout", "mail_attribute", "login_mail_interval",
                            "service_name"),
                  secret_keys=("password",))
    if m is None:
        return None
    host = c.string(m, "host", "mail.host") or ""
    security = MailSecurity(c.choice(m, "security", "mail.security",
                                     [e.value for e in MailSecurity], "starttls"))
    port = c.number(m, "port", "mail.port", DEFAULT_PORTS[security], minimum=1,
                    maximum=65535, integer=True)
    username = c.string(m, "username", "mail.username", required=False)
    password = c.secret(m, "mail", "password", required=username is not None)
    if password is not None and username is None:
        c.problem("mail.username", "missing (a password was given)")
    if username and security is MailSecurity.NONE and host and not is_loopback(host):
        c.problem("mail.security", "none would send mail.username's password in clear text "
                                   f"to {host}: use starttls or tls")
    sender = c.string(m, "from", "mail.from") or ""
    if sender:
        _name, addr = parseaddr(sender)
        try:
            Address(addr_spec=addr)
            ok = "@" in addr
        except (ValueError, IndexError):
            ok = False
        if not ok or "\n" in sender or "\r" in sender:
            c.problem("mail.from", f"not a mail address: {sender!r} "
                                   "(\"Name <user@example.com>\" or \"user@example.com\")")
    templates = None
    if "templates" in m:
        raw = c.string(m, "templates", "mail.templates")
        if raw is not None:
            folder = c.resolve(raw)
            if not folder.is_dir():
                c.problem("mail.templates", f"not a folder: {folder}")
            else:
                templates = str(folder)
                from pushproxy.rollout.mailer import TemplateError, Templates  # imports us

                try:  # a typo in the admin's template shows now, not mid-rollout
                    Templates.load(templates).check()
                except TemplateError as exc:
                    c.problem("mail.templates", str(exc))
    subject = c.string(m, "subject", "mail.subject", required=False) or DEFAULT_SUBJECT
    if "\n" in subject or "\r" in subject:
        c.problem("mail.subject", "must be one line")
        subject = DEFAULT_SUBJECT
    return MailConfig(
        host=host, port=port, security=security, username=username, password=password,
        sender=sender,
        link_validity=c.number(m, "link_validity_days", "mail.link_validity_days", 14,
                               minimum=0.01, maximum=90) * 86400.0,
        subject=subject,
        ca_file=c.readable_file(m, "ca_file", "mail.ca_file"),
        templates=templates,
        timeout=c.number(m, "timeout", "mail.timeout", 30, minimum=1, maximum=300),
        mail_attribute=c.string(m, "mail_attribute", "mail.mail_attribute",
                                required=False) or "mail",
        login_mail_interval=c.number(m, "login_mail_interval", "mail.login_mail_interval",
                                     86400, minimum=60, maximum=30 * 86400),
        service_name=c.string(m, "service_name", "mail.service_name",
                              required=False) or "the VPN",
    )
