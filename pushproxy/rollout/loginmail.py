"""``push.no_device: enroll``: a login of a user without a device mails them a link.

The login itself is rejected at once (its Reply-Message says to check the mail);
the mail goes out afterwards, off the login's path. Per user, at most one mail
per ``mail.login_mail_interval`` (default a day), counted in the store so every
worker and node of a cluster shares the limit: the slot is claimed before
anything else (a burst of logins sends one mail), and freed again if the send
fails. The directory read (the entry's mail address) and SMTP are blocking:
they run in one dedicated thread, never the reactor's pool, with a bounded
queue (a flood of logins is dropped and counted, not queued without end).

Risk, said plainly (docs/rollout.md): whoever knows a user's password and can
read that user's mailbox can enroll a device for them. Use it for a rollout
period, for users who log in from a trusted network, paired with policy rules.
"""

from __future__ import annotations

import logging
import secrets

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from pushproxy import logs
from pushproxy.approval import crypto
from pushproxy.approval.service import enrollment_link
from pushproxy.rollout.directory import DirectoryError, RolloutDirectory
from pushproxy.rollout.mailer import SendError, SmtpSender, Templates, enrollment_message

log = logging.getLogger("pushproxy.rollout")
MAX_QUEUED = 100  # mails waiting for the one sending thread; more are dropped and counted


class LoginEnrollMailer:
    """A daemon component: ``request(account, dn)`` mails ``account`` a fresh link."""

    def __init__(self, config, reactor, store, counters):
        self.config = config
        self.mail = config.mail
        self.reactor = reactor
        self.store = store  # the daemon's AsyncStore (pushproxy.approval.asyncstore)
        self.counters = counters
        self.templates = Templates.load(self.mail.templates)
        self.pool = ThreadPool(minthreads=1, maxthreads=1, name="enroll-mail")
        self._directory = None  # made in the pool's thread, used only there
        self._queued = 0

    def start(self):
        """Start the sending thread."""
        self.templates.check()  # a broken admin template stops start-up, not a login
        self.pool.start()
        return defer.succeed(None)

    def stop(self):
        """Close the directory connections, then stop the sending thread (a send under
        way finishes first)."""
        d = self._in_pool(self._close_directory)
        d.addErrback(lambda _: None)  # closing broken sockets: nothing left to do
        d.addCallback(lambda _: threads.deferToThread(self.pool.stop))
        return d

    def _close_directory(self) -> None:
        if self._directory is not None:
            self._directory.close()
            self._directory = None

    def request(self, account: str, dn: str | None) -> None:
        """Mail ``account`` an enrollment link, unless it got one recently. Never raises."""
        if self._queued >= MAX_QUEUED:
            self.counters.inc("enroll_mails", outcome="dropped")
            logs.event(log, logging.WARNING, "enroll_mail.dropped", user=account,
                       queued=self._queued)
            return
        self._queued += 1
        d = defer.ensureDeferred(self._mail(account, dn))

        def done(_):
            self._queued -= 1

        def crashed(failure):
            self.counters.inc("enroll_mails", outcome="error")
            logs.event(log, logging.ERROR, "enroll_mail.internal_error", user=account,
                       error=failure.getErrorMessage())

        d.addErrback(crashed).addBoth(done)

    async def _mail(self, account: str, dn: str | None) -> None:
        now = self.reactor.seconds()
        claim = await self.store.claim_enrollment_mail(account, now,
                               self.mail.login_mail_interval, 1)
        if claim is None:
            self.counters.inc("enroll_mails", outcome="rate_limited")
            logs.event(log, logging.INFO, "enroll_mail.rate_limited", user=account)
            return
        hashed = None
        try:
            address = await self._in_pool(self._address, account)
            if not address:
                self.counters.inc("enroll_mails", outcome="no_address")
                logs.event(log, logging.WARNING, "enroll_mail.no_address", user=account, dn=dn)
                return  # the claim stays: asking the directory again at every login helps nobody
            token = secrets.token_urlsafe(32)
            hashed = crypto.token_hash(token)
            expires = now + self.mail.link_validity
            await self.store.create_enrollment(account, hashed, now, expires)
            msg = enrollment_message(self.mail, self.templates, user=account, address=address,
                                     link=enrollment_link(self.config.approval.public_url, token),
                                     expires=expires, now=now)
            await self._in_pool(self._send, msg)
        except (SendError, DirectoryError, ValueError) as exc:  # ValueError: a bad address
            if hashed is not None:
                await self.store.delete_unused_enrollment(hashed)
            await self.store.forget_enrollment_mail(claim)
            self.counters.inc("enroll_mails", outcome="failed")
            logs.event(log, logging.WARNING, "enroll_mail.failed", user=account, error=str(exc))
            return
        await self.store.mail_sent(claim, hashed, address, self.reactor.seconds())
        self.counters.inc("enroll_mails", outcome="sent")
        logs.event(log, logging.INFO, "enroll_mail.sent", user=account, address=address)

    def _in_pool(self, fn, *args):
        return threads.deferToThreadPool(self.reactor, self.pool, fn, *args)

    def _address(self, account: str) -> str | None:
        # in the pool's one thread: its LDAP connection never crosses threads
        if self._directory is None:
            self._directory = RolloutDirectory(self.config.ldap, self.mail.mail_attribute)
        user = self._directory.user(account)
        if user.account != account:
            return None  # the entry now proves another account: mail nobody
        return user.mail

    def _send(self, msg) -> None:
        sender = SmtpSender(self.mail)
        try:
            sender.send(msg)
        finally:
            sender.close()
