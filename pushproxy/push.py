"""The push seam: what the engine asks of any approval provider.

A provider gets one `ApprovalRequest` per login and returns a Deferred that
fires with a `PushResult` (approved, denied, fraud, no device). It errbacks
with `ProviderUnavailable` when it cannot reach the user's devices at all; the
engine then follows ``push.failmode``. The engine enforces the timeout by
cancelling the Deferred, and a provider closes the transaction when that
happens, so the phone stops showing a request nobody waits for.
"""

from __future__ import annotations

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


class PushProvider(Protocol):
    """Asks a user's devices to approve a login."""

    def request_approval(self, request: ApprovalRequest) -> Deferred[PushResult]:
        """Start the approval; cancel the Deferred to withdraw it."""
