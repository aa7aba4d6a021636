"""Pure decision logic: typed results in, one `Decision` out.

Every way a login can end is a `Reason`; `decide` is the single function that
maps the primary-auth result and the push result (or push error) to Accept or
Reject. Nothing here does I/O or reads the clock, so every branch is a plain
unit test.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pushproxy.adstate import AccountState
from pushproxy.config import FailMode, NoDeviceMode

if TYPE_CHECKING:
    from pushproxy.geoip import Location


class Outcome(enum.Enum):
    """The answer the client gets."""

    ACCEPT = "accept"
    REJECT = "reject"
    CHALLENGE = "challenge"  # Access-Challenge: the login continues with a second request


class Reason(enum.Enum):
    """Why a login ended the way it did (the audit trail's ``reason``)."""

    PUSH_APPROVED = "push_approved"
    PUSH_DENIED = "push_denied"
    PUSH_FRAUD = "push_reported_fraud"
    PUSH_TIMEOUT = "push_timeout"
    PUSH_UNAVAILABLE_SECURE = "push_unavailable_failmode_secure"
    PUSH_UNAVAILABLE_SAFE = "push_unavailable_failmode_safe"
    NO_DEVICE = "no_enrolled_device"
    NO_DEVICE_ALLOWED = "no_enrolled_device_allowed"
    NO_DEVICE_ENROLL = "no_enrolled_device_link_mailed"  # no_device: enroll (rate-limited)
    BAD_CREDENTIALS = "bad_credentials"
    UNKNOWN_USER = "unknown_user"
    AMBIGUOUS_USER = "ambiguous_user"
    UNKNOWN_DOMAIN = "unknown_domain"  # CORP\user or user@suffix for a domain not served
    NOT_IN_GROUP = "not_in_required_group"
    INVALID_USERNAME = "invalid_username"
    EMPTY_PASSWORD = "empty_password"
    NO_PASSWORD = "no_usable_password"
    DIRECTORY_UNAVAILABLE = "directory_unavailable"
    DIRECTORY_BUSY = "directory_busy"
    SHUTTING_DOWN = "shutting_down"
    INTERNAL_ERROR = "internal_error"
    POLICY_ALLOW = "policy_allow"
    POLICY_DENY = "policy_deny"
    RISK_DENY = "risk_signal_deny"  # a risk signal set to deny (context.signals)
    REMEMBERED = "remembered_login"
    PASSCODE_TOTP = "passcode_totp"
    PASSCODE_BYPASS = "passcode_bypass"
    BAD_PASSCODE = "bad_passcode"
    USER_LOCKED = "user_locked_after_fraud_report"
    USER_LOCKED_GUESSING = "user_locked_after_passcode_guessing"
    PASSCODES_PAUSED = "passcodes_paused_after_failures"
    PASSCODES_PAUSED_SOURCE = "passcodes_paused_for_source"
    PASSWORDS_THROTTLED = "source_throttled_after_bad_passwords"
    PUSHES_PAUSED = "pushes_paused_after_denials"
    TOO_MANY_PENDING = "too_many_pending_pushes"
    RATE_LIMITED = "push_rate_limited"
    CHALLENGE_SENT = "challenge_sent"
    CHALLENGE_INVALID = "challenge_state_invalid"
    NUMBER_MISMATCH = "number_mismatch"
    WRONG_LOGIN_CODE = "wrong_login_code"
    UPSTREAM_CHALLENGE = "upstream_challenge"  # relayed: the upstream server wants another round
    REPLY_TOO_LARGE = "reply_too_large"  # the answer would not fit in a RADIUS packet
    # The directory refuses the account itself (pushproxy.adstate.AccountState): no push.
    PASSWORD_EXPIRED = "password_expired"
    MUST_CHANGE_PASSWORD = "must_change_password"
    ACCOUNT_DISABLED = "account_disabled"
    ACCOUNT_LOCKED = "account_locked"
    ACCOUNT_EXPIRED = "account_expired"
    LOGON_HOURS = "logon_hours"
    LOGON_WORKSTATION = "logon_workstation"
    # presence required (docs/presence.md): the approval came without a valid passkey assertion
    PRESENCE_NOT_VERIFIED = "presence_not_verified"


ACCEPT_REASONS = frozenset({Reason.PUSH_APPROVED, Reason.PUSH_UNAVAILABLE_SAFE,
                            Reason.NO_DEVICE_ALLOWED, Reason.POLICY_ALLOW, Reason.REMEMBERED,
                            Reason.PASSCODE_TOTP, Reason.PASSCODE_BYPASS})
# The Reply-Message of a login rejected with no_device: enroll. The same words whether or
# not a mail went out this time (rate limit): they must not tell a password guesser
# anything about the mailbox.
ENROLL_MESSAGE = ("No sign-in device is set up for you yet. Check your mail for a link "
                  "to set one up, then sign in again.")
# Reasons that count as the user saying no (MFA-fatigue accounting).
DENIAL_REASONS = frozenset({Reason.PUSH_DENIED, Reason.PUSH_FRAUD, Reason.NUMBER_MISMATCH,
                            Reason.WRONG_LOGIN_CODE})


class PrimaryStatus(enum.Enum):
    """Result of the first factor (password against the directory)."""

    OK = "ok"
    BAD_CREDENTIALS = "bad_credentials"
    UNKNOWN_USER = "unknown_user"
    AMBIGUOUS_USER = "ambiguous_user"
    UNKNOWN_DOMAIN = "unknown_domain"  # the name's domain is not in ldap.active_directory
    NOT_IN_GROUP = "not_in_group"
    UNAVAILABLE = "unavailable"
    BUSY = "busy"
    CHALLENGE = "challenge"  # an upstream RADIUS server asked for another round trip (EAP)
    ACCOUNT_REFUSED = "account_refused"  # disabled, locked, expired...: see account_state


@dataclass(frozen=True, slots=True)
class PrimaryResult:
    """What the directory said about a username and password (slotted: a pending
    login keeps it for its reply attributes)."""

    status: PrimaryStatus
    dn: str | None = None
    server: str | None = None
    detail: str = ""
    groups: frozenset[str] = frozenset()  # normalized DNs of the groups asked about that hold the user
    # The identity the first factor proved, when it may differ from the
    # User-Name sent (EAP: the inner identity in the upstream's Accept).
    username: str | None = None
    # Reply attributes from an upstream server, already filtered for the client:
    # go into our Accept (and are relayed with its Reject or Challenge).
    attributes: tuple = ()
    # The account the directory proved, as every piece of per-user state is
    # keyed: the casefolded value of the username attribute stored in the
    # user's entry, never the spelling typed (slapd matches "alİce" to alice;
    # Python folds it to "ali̇ce"). None: the first factor read no entry, and
    # the engine keys on the proved or sent name, casefolded.
    account: str | None = None
    # ACCOUNT_REFUSED: the directory's reason (AD's bind diagnostic, the
    # entry's flags, an upstream's MS-CHAP-Error), and whether the password
    # was proved right (AD says 775 "locked out" for any password).
    account_state: AccountState | None = None
    password_proved: bool = False

    @property
    def wrong_password(self) -> bool:
        """Whether this answer counts as a wrong password (the source's throttle)."""
        return self.status is PrimaryStatus.BAD_CREDENTIALS or (
            self.status is PrimaryStatus.ACCOUNT_REFUSED and not self.password_proved)


class PushStatus(enum.Enum):
    """What the push layer answered."""

    APPROVED = "approved"
    DENIED = "denied"
    FRAUD = "fraud"  # denied and reported as "this wasn't me"
    NUMBER_MISMATCH = "number_mismatch"  # number matching: the user typed another number
    # presence required: an Approve without a valid WebAuthn assertion (refused, not a "no")
    PRESENCE_NOT_VERIFIED = "presence_not_verified"
    NO_DEVICE = "no_device"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class PushResult:
    """The push layer's answer for one approval request."""

    status: PushStatus
    txid: str | None = None
    device: str | None = None
    detail: str = ""
    code: str | None = None  # code_to_login: what the device showed after approval
    # presence (docs/presence.md): "verified" (a passkey assertion with user
    # verification came with the approval), "not_verified" (allowed without one
    # by policy), None (not asked for)
    presence: str | None = None


@dataclass(frozen=True)
class Decision:
    """The final answer for one login."""

    outcome: Outcome
    reason: Reason
    txid: str | None = None
    device: str | None = None
    rule: str | None = None  # the policy rule that decided, if one did
    message: str | None = None  # Access-Challenge: what the gateway shows the user
    state: bytes | None = None  # Access-Challenge: the State the follow-up must return
    # Reply attributes for the front end: on an Accept, the upstream's passed
    # attributes and the group-mapped ones; on an upstream's Reject or
    # Challenge, what it sent. Never set on a Reject of our own (a denied push).
    attributes: tuple = ()
    user: str | None = None  # the account the login was decided for, when the primary proved one
    signals: tuple[str, ...] = ()  # risk signals this login raised (pushproxy.risk)
    presence: str | None = None  # the push's `PushResult.presence`, for the audit trail
    # where the context step located the login (`pushproxy.geoip.Location`), so
    # the audit does not look the address up a second time; None: not located
    location: Location | None = None

    def but(self, **changes) -> "Decision":
        """A copy with ``changes``, as `dataclasses.replace` makes it, at a seventh
        of its cost: every login's decision is copied once on its way to the reply
        (issue 16). Field values are not checked by either; names are."""
        if not changes.keys() <= _DECISION_FIELDS:
            raise TypeError(f"not fields of Decision: {sorted(changes.keys() - _DECISION_FIELDS)}")
        new = object.__new__(Decision)
        state = new.__dict__  # a frozen dataclass's fields live in its __dict__
        state.update(self.__dict__)
        state.update(changes)
        return new

    @classmethod
    def of(cls, reason: Reason, push: PushResult | None = None, *,
           rule: str | None = None) -> "Decision":
        """A decision whose outcome follows from its reason."""
        outcome = Outcome.ACCEPT if reason in ACCEPT_REASONS else Outcome.REJECT
        return cls(outcome, reason, push.txid if push else None,
                   push.device if push else None, rule=rule,
                   presence=push.presence if push else None)


_DECISION_FIELDS = frozenset(f.name for f in dataclasses.fields(Decision))

_PRIMARY_REASONS = {
    PrimaryStatus.BAD_CREDENTIALS: Reason.BAD_CREDENTIALS,
    PrimaryStatus.UNKNOWN_USER: Reason.UNKNOWN_USER,
    PrimaryStatus.AMBIGUOUS_USER: Reason.AMBIGUOUS_USER,
    PrimaryStatus.UNKNOWN_DOMAIN: Reason.UNKNOWN_DOMAIN,
    PrimaryStatus.NOT_IN_GROUP: Reason.NOT_IN_GROUP,
    PrimaryStatus.UNAVAILABLE: Reason.DIRECTORY_UNAVAILABLE,
    PrimaryStatus.BUSY: Reason.DIRECTORY_BUSY,
}


# C0 controls and DEL (one search, not a test per character: every login asks).
_CONTROL = re.compile("[\x00-\x1f\x7f]")


def check_credentials(username: str | None, password: str | None, *,
                      own_proof: bool = False) -> Reason | None:
    """Input that must be refused before any directory traffic, or None.

    ``own_proof``: the login carries its own proof for an upstream RADIUS
    server (MS-CHAP, CHAP or EAP) instead of a cleartext password; a password
    that IS present is still checked as for PAP.
    """
    if not username or len(username) > 253:
        return Reason.INVALID_USERNAME
    if _CONTROL.search(username) is not None:
        # NUL and control characters: truncation tricks in C directories and logs.
        return Reason.INVALID_USERNAME
    if (username != username.strip() or "  " in username
            or not unicodedata.is_normalized("NFKC", username)):
        # The directory matches "alice ", " alice" and fullwidth "ａlice" to alice
        # (LDAP string preparation), but devices, fraud locks and fatigue limits
        # are keyed on the name as typed: such a variant would find no device,
        # and with no_device: allow, log in without a push (tests/test_adversarial_radius.py).
        return Reason.INVALID_USERNAME
    if password is None:
        return None if own_proof else Reason.NO_PASSWORD
    if password == "":
        # An empty password turns an LDAP simple bind into an anonymous bind
        # that "succeeds" (RFC 4513 5.1.2).
        return Reason.EMPTY_PASSWORD
    if "\x00" in password:
        return Reason.NO_PASSWORD
    return None


def primary_decision(result: PrimaryResult) -> Decision | None:
    """The decision when the first factor already ends the login, else None."""
    if result.status is PrimaryStatus.OK:
        return None
    if result.status is PrimaryStatus.CHALLENGE:
        return Decision(Outcome.CHALLENGE, Reason.UPSTREAM_CHALLENGE,
                        attributes=result.attributes)
    if result.status is PrimaryStatus.ACCOUNT_REFUSED:
        # Each state its own reason; a refusal that names none is a wrong password.
        state = result.account_state
        reason = Reason(state.value) if state is not None else Reason.BAD_CREDENTIALS
        return dataclasses.replace(Decision.of(reason), attributes=result.attributes)
    # An upstream's Reject is relayed with its attributes (MS-CHAP-Error:
    # password expired, retry allowed...).
    return dataclasses.replace(Decision.of(_PRIMARY_REASONS[result.status]),
                               attributes=result.attributes)


def push_decision(result: PushResult, failmode: FailMode, no_device: NoDeviceMode) -> Decision:
    """The decision once the push layer answered (or failed to)."""
    status = result.status
    if status is PushStatus.APPROVED:
        return Decision.of(Reason.PUSH_APPROVED, result)
    if status is PushStatus.DENIED:
        return Decision.of(Reason.PUSH_DENIED, result)
    if status is PushStatus.FRAUD:
        return Decision.of(Reason.PUSH_FRAUD, result)
    if status is PushStatus.NUMBER_MISMATCH:
        return Decision.of(Reason.NUMBER_MISMATCH, result)
    if status is PushStatus.TIMEOUT:
        return Decision.of(Reason.PUSH_TIMEOUT, result)
    if status is PushStatus.PRESENCE_NOT_VERIFIED:
        return Decision.of(Reason.PRESENCE_NOT_VERIFIED, result)
    if status is PushStatus.NO_DEVICE and no_device is NoDeviceMode.ENROLL:
        return dataclasses.replace(Decision.of(Reason.NO_DEVICE_ENROLL, result),
                                   message=ENROLL_MESSAGE)
    if status is PushStatus.NO_DEVICE:
        allowed = no_device is NoDeviceMode.ALLOW
        return Decision.of(Reason.NO_DEVICE_ALLOWED if allowed else Reason.NO_DEVICE, result)
    safe = failmode is FailMode.SAFE
    return Decision.of(Reason.PUSH_UNAVAILABLE_SAFE if safe else Reason.PUSH_UNAVAILABLE_SECURE,
                       result)
