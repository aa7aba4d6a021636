"""The push seam: what the engine asks of any approval provider.

A provider gets one `ApprovalRequest` per login and returns a Deferred that
fires with a `PushResult` (approved, denied, fraud, no device). It errbacks
with `ProviderUnavailable` when it cannot reach the user's devices at all; the
engine then follows ``push.failmode``. The engine enforces the timeout by
cancelling the Deferred, and a provider closes the transaction when that
happens, so the phone stops showing a request nobody waits for.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from twisted.internet.defer import Deferred

from pushproxy.decision import PushResult


class ProviderUnavailable(Exception):
    """The push layer cannot be reached; classified here, mapped by failmode."""


@dataclass(frozen=True)
class ApprovalRequest:
    """Everything a user needs on the phone to judge a login."""

    txid: str
    username: str
    application: str  # the RADIUS client's configured name
    client_ip: str | None  # Calling-Station-Id: where the user connects from
    nas: str | None  # NAS-Identifier or NAS-IP-Address
    created: float  # epoch seconds
    expires: float  # epoch seconds; the engine's timeout
    verification: str = "none"  # none | number_match | code_to_login
    number: str | None = None  # number_match: the number the login screen shows (never sent)
    # Cluster mode: an HMAC of the login's session and credential, equal on every
    # node for the same login (a NAS failing over); a provider joins a pending
    # push with the same key instead of sending a second one. None: never joins.
    join_key: str | None = None
    # Where the client address is (`pushproxy.geoip.Location.as_dict`) and the
    # risk warnings to show ("First login from Portugal"); None/(): not known.
    location: dict | None = None
    warnings: tuple[str, ...] = ()
    # Presence (docs/presence.md): an Approve needs a passkey assertion with user
    # verification. "refuse": a device without a passkey cannot approve; "allow":
    # it can, and the result says presence not_verified. None: not required.
    user_verification: str | None = None


class PasscodeVerdict(enum.Enum):
    """What became of one passcode attempt (`SecondFactors.verify_passcode`)."""

    TOTP = "totp"  # a valid TOTP code, now used up
    BYPASS = "bypass"  # a valid bypass code, now used up
    WRONG = "wrong"  # checked, and not a valid unused code (counted as a failure)
    USER_PAUSED = "user_paused"  # not checked: the user's passcodes are paused (counted)
    SOURCE_PAUSED = "source_paused"  # not checked: passcodes from this source are paused
    LOCKED = "locked"  # not checked: the user is locked after a fraud report
    LOCKED_GUESSING = "locked_guessing"  # not checked: the user is locked after guessing


class PushProvider(Protocol):
    """Asks a user's devices to approve a login."""

    def request_approval(self, request: ApprovalRequest) -> Deferred[PushResult]:
        """Start the approval; cancel the Deferred to withdraw it."""


class SecondFactors(Protocol):
    """Offline passcodes, fraud locks and fatigue alerts (the approval service implements it).

    Each method errbacks with ProviderUnavailable when its store cannot be reached.
    """

    def verify_passcode(self, username: str, code: str, now: float, *, source: str,
                        limits) -> Deferred[PasscodeVerdict]:
        """Check ``code`` within the guessing ``limits`` (`pushproxy.passcode_limits`);
        ``source`` names where the attempt came from (client and calling station)."""

    def lock_of(self, username: str) -> Deferred[object | None]:
        """The user's fraud lock, or None."""

    def fatigue_alert(self, username: str, now: float) -> None:
        """Pushes for ``username`` were paused after repeated denials: raise an alert."""
