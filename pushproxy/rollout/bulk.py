"""Bulk enrollment by mail: who gets a link (`plan`, pure) and the sending loop (`run`).

Safe to re-run: a user with an active device, or with an open link (mailed or
printed by ``pushproxy enroll``), gets nothing unless asked (``resend`` for open
links, ``include_enrolled`` for a second device). A link is created just before
its mail and deleted again if the SMTP server does not accept the mail, and the
send is recorded only after the server accepted it: nothing is marked sent that
was not, and the next run tries again. After a resend, the user's older open
links stop working (only the newest mail's link is valid).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterable

from pushproxy.approval import crypto
from pushproxy.approval.rolloutstore import UserRollout
from pushproxy.approval.service import enrollment_link
from pushproxy.approval.store import StoreError
from pushproxy.rollout.directory import DirectoryUser, UserStatus
from pushproxy.rollout.mailer import SendError, enrollment_message


class Action(Enum):
    """What the bulk command does for one user."""

    SEND = "send"
    RESEND = "resend"  # has an open link, --resend: a new link, the old ones end
    ENROLLED = "skipped: has a device"
    PENDING = "skipped: has an open link"
    NO_MAIL = "no mail address"
    REFUSED = "refused"  # unknown, ambiguous or not allowed to log in
    UNAVAILABLE = "directory unavailable"


SENDS = (Action.SEND, Action.RESEND)


@dataclass(frozen=True)
class Planned:
    """One user's planned action, with what the store knew."""

    user: DirectoryUser
    action: Action
    state: UserRollout | None


@dataclass(frozen=True)
class Outcome:
    """What happened to one planned user."""

    planned: Planned
    sent: bool = False
    error: str | None = None  # a send that failed, or why nothing was planned


def plan(users: Iterable[DirectoryUser], overview: dict[str, UserRollout], *,
         resend: bool = False, include_enrolled: bool = False) -> list[Planned]:
    """Decide per user; one entry per account (a name listed twice is planned once)."""
    result: list[Planned] = []
    seen: set[str] = set()
    for user in users:
        if user.status is UserStatus.UNAVAILABLE:
            result.append(Planned(user, Action.UNAVAILABLE, None))
            continue
        if user.status is not UserStatus.FOUND or not user.account:
            result.append(Planned(user, Action.REFUSED, None))
            continue
        if user.account in seen:
            continue
        seen.add(user.account)
        state = overview.get(user.account)
        if state is not None and state.devices and not include_enrolled:
            action = Action.ENROLLED
        elif state is not None and state.link_expires is not None:
            action = Action.RESEND if resend else Action.PENDING
        else:
            action = Action.SEND
        if action in SENDS and not user.mail:
            action = Action.NO_MAIL
        result.append(Planned(user, action, state))
    return result


def run(planned: list[Planned], *, store, sender, mail_config, templates, public_url: str,
        validity: float, clock: Callable[[], float],
        progress: Callable[[int, int, Outcome], None] = lambda i, n, o: None,
        pause: Callable[[], None] = lambda: None) -> list[Outcome]:
    """Send every planned mail; after a fatal SMTP failure the rest are reported unsent.

    ``pause`` runs before every send after the first (``--per-minute``: providers
    such as Microsoft 365 refuse more than about 30 mails a minute from one account).
    """
    outcomes: list[Outcome] = []
    to_send = sum(1 for p in planned if p.action in SENDS)
    done = 0
    stopped: str | None = None
    for p in planned:
        if p.action not in SENDS:
            outcomes.append(Outcome(p, error=_why(p)))
            continue
        done += 1
        if stopped is not None:
            outcome = Outcome(p, error=f"not sent: {stopped}")
        else:
            if done > 1:
                pause()
            outcome, fatal = _send_one(p, store, sender, mail_config, templates,
                                       public_url, validity, clock)
            if fatal:
                stopped = outcome.error
        outcomes.append(outcome)
        progress(done, to_send, outcome)
    return outcomes


def _send_one(p: Planned, store, sender, mail_config, templates, public_url, validity,
              clock) -> tuple[Outcome, bool]:
    """Create the link, send it, record the send; (outcome, whether to stop sending)."""
    account, now = p.user.account, clock()
    token = secrets.token_urlsafe(32)
    hashed = crypto.token_hash(token)
    try:
        store.create_enrollment(account, hashed, now, now + validity)
    except StoreError as exc:
        return Outcome(p, error=f"store: {exc}"), True
    link = enrollment_link(public_url, token)
    try:
        try:
            msg = enrollment_message(mail_config, templates, user=account, address=p.user.mail,
                                     link=link, expires=now + validity, now=now)
        except (ValueError, TypeError) as exc:  # e.g. a line break in the directory's value
            raise SendError(f"unusable mail address {p.user.mail!r}: {exc}", fatal=False) \
                from None
        sender.send(msg)
    except BaseException as exc:
        # The link reached nobody (or, interrupted with Ctrl-C mid-send, perhaps
        # somebody: then the user asks again): it must not count as "has an open link".
        try:
            store.delete_unused_enrollment(hashed)
        except StoreError:
            pass  # it expires by itself; the mail is still reported unsent
        if not isinstance(exc, SendError):
            raise
        return Outcome(p, error=str(exc)), exc.fatal
    try:
        store.record_enrollment_mail(account, hashed, p.user.mail,
                                     "resend" if p.action is Action.RESEND else "bulk", now)
        if p.action is Action.RESEND:
            store.end_open_enrollments(account, now, keep=hashed)
    except StoreError as exc:
        # the mail went out; only its record is missing (the link itself is stored)
        return Outcome(p, sent=True, error=f"sent, but not recorded: {exc}"), False
    return Outcome(p, sent=True), False


def _why(p: Planned) -> str | None:
    user = p.user
    if p.action is Action.REFUSED:
        return {UserStatus.UNKNOWN: f"no user {user.name!r} in the directory (ldap.user_base, "
                                    "ldap.user_filter)",
                UserStatus.AMBIGUOUS: f"{user.name!r} matches more than one directory entry",
                UserStatus.NOT_ALLOWED: f"{user.name!r} is in none of ldap.required_groups",
                }.get(user.status, f"{user.name!r}: {user.detail}")
    if p.action is Action.UNAVAILABLE:
        return f"cannot look {user.name!r} up: {user.detail}"
    if p.action is Action.NO_MAIL:
        return "the directory entry has no mail address"
    return None
