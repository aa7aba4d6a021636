"""Per-client sensitivity: what a RADIUS, RadSec or LDAP front-end client demands of a push.

A client may require verified push (number matching or a code to log in),
presence (a passkey assertion with user verification, docs/presence.md), or
both, whatever the user-level policy rules say: the requirement is a floor the
rules can raise but never lower. `apply` is the one place it is combined with
the policy's decision; the engine and ``pushproxy policy explain`` both call it.

Config (on a client, under ``radius.clients[]``, ``radius.radsec.clients[]`` /
``psk_clients[]`` or ``ldap_front``)::

    require_verification: number_match     # or code_to_login
    require_user_verification: true
"""

from __future__ import annotations

from dataclasses import dataclass

from pushproxy.policy import Verification

#: The config keys a client block may carry for its sensitivity.
KEYS = ("require_verification", "require_user_verification")


@dataclass(frozen=True)
class ClientRequirements:
    """What a client requires of every push for its logins (the default: nothing)."""

    verification: Verification | None = None  # None: no verified push required
    user_verification: bool = False  # presence: a passkey with user verification

    @property
    def any(self) -> bool:
        """Whether this client requires anything at all."""
        return self.verification is not None or self.user_verification


@dataclass(frozen=True)
class PushNeeds:
    """What one push must have once policy and client are combined."""

    verification: Verification
    user_verification: bool
    # the client raised the verification (None: the policy's choice stood)
    raised_by_client: bool = False
    presence_by_client: bool = False


def apply(requires: ClientRequirements, verification: Verification,
          user_verification: bool) -> PushNeeds:
    """Combine the policy's choice with the client's floor.

    A plain push becomes the client's verified mode; a push that is already
    verified (number matching or code to login) stays as the rule chose, since
    either proves the user is at the login screen. Presence is required when
    either side requires it.
    """
    raised = requires.verification is not None and verification is Verification.NONE
    return PushNeeds(verification=requires.verification if raised else verification,
                     user_verification=user_verification or requires.user_verification,
                     raised_by_client=raised,
                     presence_by_client=requires.user_verification and not user_verification)


def needs_for(decision, requires: ClientRequirements,
              client_verification: Verification | None = None) -> PushNeeds:
    """What the push for a login the policy decided to push (``decision``, a
    `pushproxy.policy.PolicyDecision` with action PUSH) must have.

    The verification is the rule's when it named one, else the client's own
    ``verification`` setting, else the policy's default; then the client's floor.
    """
    chosen = decision.verification if decision.rule_sets_verification \
        else (client_verification or decision.verification)
    return apply(requires, chosen, decision.user_verification)


def parse(c, m: dict, path: str, *, verification_allowed: bool = True) -> ClientRequirements:
    """The client block ``m``'s sensitivity keys (absent: nothing required).

    ``verification_allowed`` is False for the LDAP front end: a bind cannot
    carry an Access-Challenge, so verified push cannot be required there.
    """
    verification = None
    if "require_verification" in m:
        value = c.choice(m, "require_verification", f"{path}.require_verification",
                         [v.value for v in Verification if v is not Verification.NONE],
                         "number_match")
        verification = Verification(value) if value is not None else None
        if not verification_allowed:
            c.problem(f"{path}.require_verification",
                      "an LDAP bind cannot carry the number or code of a verified push; "
                      "require_user_verification can be required here")
    presence = c.boolean(m, "require_user_verification", f"{path}.require_user_verification",
                         False)
    return ClientRequirements(verification=verification, user_verification=bool(presence))
