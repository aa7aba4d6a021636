"""The engine: one login from credentials to decision, readable top to bottom.

    split "password,passcode" -> check input -> join a pending login of the
    same session and credential? (`join_key`) -> source throttled after wrong
    passwords? -> primary auth (directory)
    -> from here on the account it proved, never the name typed (`user_key`)
    -> policy (allow / deny / push + verification)
    -> lock (fraud, guessing)? -> passcode (within the guessing limits)?
    -> remembered login? -> fatigue limits
    -> push (plain: wait here; verified: Access-Challenge now, the follow-up
       request with the State waits) -> decision -> one audit event

This module and its two halves, `pushproxy.pushes` (the push, its limits and
joins) and `pushproxy.verified` (the Access-Challenge and its answer), are the
only ones that turn decisions into Deferreds and timers. The decisions
themselves come from the pure functions in `pushproxy.decision`,
`pushproxy.policy` and `pushproxy.fatigue`; the state they need lives behind
`pushproxy.loginstate` (in memory, or the shared store in cluster mode); the
clock and every backend are passed in, so tests drive time with
`twisted.internet.task.Clock`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from pushproxy import logs
from pushproxy.audit import AuditEvent, AuditLog, utc_stamp
from pushproxy.config import NoDeviceMode, PushConfig
from pushproxy.decision import (DENIAL_REASONS, Decision, Outcome, PrimaryResult,
                                PushResult, PushStatus, Reason, check_credentials,
                                primary_decision, push_decision)
from pushproxy.fatigue import FatigueLimits
from pushproxy.loginstate import LocalState, LoginState
from pushproxy.metrics import Counters
from pushproxy.passcode_limits import LOCK_REASON
from pushproxy.passcodes import Credential, Factor, parse_password
from pushproxy.password_throttle import PasswordThrottle
from pushproxy.policy import Action, LoginContext, Policy, Verification, evaluate
from pushproxy import sensitivity
from pushproxy.sensitivity import ClientRequirements
from pushproxy.push import (PasscodeVerdict, ProviderUnavailable, PushProvider,
                            SecondFactors)
from pushproxy.pushes import Fanout, Pushes
from pushproxy.risk import RiskAction
from pushproxy.timers import TimerWheel
from pushproxy.verified import VerifiedPush

if TYPE_CHECKING:
    from pushproxy.contextcheck import ContextChecks, LoginRisk

log = logging.getLogger("pushproxy.engine")

_PASSCODE_REASONS = {
    PasscodeVerdict.TOTP: Reason.PASSCODE_TOTP, PasscodeVerdict.BYPASS: Reason.PASSCODE_BYPASS,
    PasscodeVerdict.WRONG: Reason.BAD_PASSCODE,
    PasscodeVerdict.USER_PAUSED: Reason.PASSCODES_PAUSED,
    PasscodeVerdict.SOURCE_PAUSED: Reason.PASSCODES_PAUSED_SOURCE,
    PasscodeVerdict.LOCKED: Reason.USER_LOCKED,
    PasscodeVerdict.LOCKED_GUESSING: Reason.USER_LOCKED_GUESSING}


class Directory(Protocol):
    """The first factor: checks a username and password."""

    def authenticate(self, username: str, password: str) -> Deferred[PrimaryResult]:
        """Fires with a PrimaryResult; never errbacks."""


@dataclass(frozen=True, slots=True)
class LoginRequest:
    """A login as any front end (RADIUS, later LDAP) hands it to the engine.

    Slotted: a pending login keeps it until the phone answers (issue 16).
    """

    protocol: str
    username: str | None
    password: str | None
    client_name: str
    source: str
    calling_station: str | None
    nas: str | None
    no_device: NoDeviceMode
    state: bytes | None = None  # the answer to an Access-Challenge carries its State
    verification: Verification | None = None  # the client's setting; None: policy decides
    # The first factor for this login when it is not the engine's directory: an
    # upstream RADIUS server, or the LDAP front end's bind on the client's own
    # upstream connection. Its PrimaryResult may carry a front-end payload.
    primary: Directory | None = None
    # A login whose first factor is an upstream RADIUS server may carry its own
    # proof (MS-CHAP, CHAP, EAP) instead of a password: these bytes identify
    # the attempt (to join a NAS's resend), and no cleartext password is needed.
    credential: bytes | None = None
    # The front end's last word before the decision is counted and audited:
    # a reply it cannot encode (over 4096 octets) turns an Accept into a Reject,
    # and the audit trail must say what the client really got. Never raises.
    finalize: Callable[[Decision], Decision] | None = None
    # Sends what `finalize` encoded, once the decision is audited and logged,
    # before anything else the login's end does.
    deliver: Callable[[], None] | None = None
    # What tells one session of the NAS from another, for joins: RADIUS
    # NAS-IP-Address and NAS-Port / NAS-Port-Id; the LDAP front end's client
    # connection. See `join_key`.
    nas_ip: str | None = None
    port: str | None = None
    # The LDAP front end: the peer is the application server, not the user,
    # so `networks` rules and remembered logins need a rule naming the client.
    peer_is_application: bool = False
    # Where the login comes from and its risk signals (`pushproxy.contextcheck`),
    # set by the engine once the password was right; None: no context section.
    context: "LoginRisk | None" = None
    # The client's sensitivity (pushproxy.sensitivity): a floor under the policy.
    requires: ClientRequirements = ClientRequirements()
    # Set by the engine, not by front ends: presence required for this login's
    # push, with the policy's fallback for a device without a passkey
    # ("refuse" / "allow"); None: not required.
    user_verification: str | None = None


def join_key(req: LoginRequest, user: str) -> tuple | None:
    """The session a login belongs to, for joining a pending one; None: it never joins.

    A login joins one already pending only from the same client, the same NAS
    (NAS-Identifier and NAS-IP-Address), the same Calling-Station-Id and the
    same NAS-Port / NAS-Port-Id, for the same user (and, checked by the
    caller, with the same credential). Without a Calling-Station-Id and
    without a port nothing tells two sessions apart: such a login joins
    nothing (a NAS's retransmit is still caught by the retransmit table).
    """
    if req.calling_station is None and req.port is None:
        return None
    return (req.client_name, req.nas, req.nas_ip, req.calling_station, req.port,
            user.casefold())


class _PendingLogin:
    """A login running: what a later login of its session compares and joins, and
    its end (`done`), as bound methods of this one record rather than closures
    and callbacks with arguments (each of those costs hundreds of bytes per
    pending login, issue 16)."""

    __slots__ = ("engine", "key", "req", "started", "digest", "fanout")

    def __init__(self, engine: Engine, key: tuple | None, req: LoginRequest, started: float,
                 digest: bytes):
        self.engine = engine
        self.key = key
        self.req = req
        self.started = started
        self.digest = digest
        self.fanout: Fanout | None = None  # made when a login joins this one

    def wait(self) -> Deferred[Decision]:
        """A Deferred that fires with this login's decision (a joining login)."""
        if self.fanout is None:
            self.fanout = Fanout()
        return self.fanout.wait()

    def done(self, decision: Decision) -> Decision:
        """The login is decided: unregister, tell the joined logins, count and audit."""
        engine, key = self.engine, self.key
        if key is None:
            engine._unkeyed -= 1
        elif engine._logins.get(key) is self:
            del engine._logins[key]
        if self.fanout is not None:
            self.fanout.fire(decision)
        return engine._finish(decision, self.req, self.started, False)

    def crashed(self, failure) -> Decision:
        """Any unexpected error: a Reject, never an Accept and never a hang."""
        return self.done(self.engine._crashed(failure))


class _AwaitPush:
    """A login whose push is out: all the engine keeps while the phone decides."""

    __slots__ = ("engine", "push", "req", "rule", "remember", "primary")

    def __init__(self, engine: Engine, push: Deferred, req: LoginRequest, rule: str | None,
                 remember: bool):
        self.engine = engine
        self.push: Deferred | None = push
        self.req = req
        self.rule = rule
        self.remember = remember
        self.primary: PrimaryResult | None = None

    def pushed(self, result) -> Decision:
        """The push answered (or the fatigue limits refused it)."""
        return self.engine._pushed(result, self)


class Engine(Pushes, VerifiedPush):
    """Runs logins; one instance per daemon (per worker process).

    ``state``: where fatigue limits, challenges and remembered logins live
    (`pushproxy.loginstate`): in memory by default, in the store in cluster mode.
    """

    def __init__(self, *, clock: IReactorTime, directory: Directory, provider: PushProvider,
                 push: PushConfig, audit: AuditLog, counters: Counters,
                 wallclock: Callable[[], float] | None = None,
                 new_txid: Callable[[], str] = lambda: secrets.token_urlsafe(16),
                 policy: Policy | None = None, factors: SecondFactors | None = None,
                 limits: FatigueLimits | None = None, delimiter: str = ",",
                 reply_map=None, state: LoginState | None = None):
        self.clock = clock
        self.timers = TimerWheel(clock)  # push timeouts: one reactor timer for all
        self.directory = directory
        self.provider = provider
        self.push = push
        self.audit = audit
        self.counters = counters
        self.wallclock = wallclock or clock.seconds
        self.new_txid = new_txid
        self.policy = policy or Policy(rules=(), default_verification=Verification.NONE,
                                       timezone="UTC", remember_minutes=0)
        self.factors = factors
        self.state: LoginState = state or LocalState(limits)
        self.passwords = PasswordThrottle()  # wrong primary passwords per source
        self.delimiter = delimiter
        # Group/rule -> reply attributes (`pushproxy.replyattrs.ReplyMap`), or None.
        self.reply_map = reply_map
        self._logins: dict[tuple, _PendingLogin] = {}
        self._pushes: dict[tuple, Fanout] = {}
        self._push_calls: dict[str, Deferred] = {}
        self._answering = 0  # challenge answers waiting for their push
        self._unkeyed = 0  # logins running that can join nothing (no session to key on)
        self._stopping = False
        # no_device: enroll: called with (account, dn) to mail a link; set by the
        # wiring when a mail: section exists (pushproxy.rollout.loginmail)
        self.enroll_mail: Callable[[str, str | None], None] | None = None
        # The login's location, baselines and risk signals (config ``context:``),
        # set by the wiring; None: off.
        self.context: ContextChecks | None = None

    @property
    def fatigue(self):
        """The fatigue limits' holder (``.limits`` is replaced on reload)."""
        return self.state.fatigue

    @property
    def pending(self) -> int:
        """Logins and challenge answers waiting for a decision right now."""
        return len(self._logins) + self._answering + self._unkeyed

    def login(self, req: LoginRequest) -> Deferred[Decision]:
        """Decide one login; the Deferred always fires with a Decision."""
        started = self.clock.seconds()
        if req.state is not None:
            return self._respond(req, started)
        cred = parse_password(req.password, self.delimiter) if req.password is not None else None
        # Only an upstream RADIUS primary can check a proof that is not a password.
        own_proof = req.primary is not None and req.credential is not None
        bad = check_credentials(req.username, cred.password if cred else None,
                                own_proof=own_proof)
        if bad is not None:
            return defer.succeed(self._finish(Decision.of(bad), req, started, False))
        key = join_key(req, req.username)
        proof = b"pw:" + req.password.encode("utf-8") if cred is not None \
            else b"proof:" + req.credential
        # Keyed HMAC so that equal passwords can be recognised without keeping
        # them; the key is shared by the nodes of a cluster (their joins compare).
        digest = hmac.new(self.state.digest_key, proof, hashlib.sha256).digest()
        pending = self._logins.get(key) if key is not None else None
        if pending is not None and hmac.compare_digest(pending.digest, digest):
            # The NAS gave up on us and sent the same login again (new id, or
            # via its second server): wait for the login already running.
            self.counters.inc("logins_joined")
            d = pending.wait()
            d.addCallback(self._finish, req, started, True)
            return d
        mine = _PendingLogin(self, key, req, started, digest)
        if pending is None and key is not None:
            self._logins[key] = mine
        elif key is None:
            self._unkeyed += 1
        return self._run(req, cred, digest).addCallbacks(self._resume).addCallbacks(
            mine.done, mine.crashed)

    def _crashed(self, failure) -> Decision:
        log.error("engine.internal_error %s", failure.getTraceback())
        self.counters.inc("internal_errors")
        return Decision.of(Reason.INTERNAL_ERROR)

    def _guarded(self, d: Deferred) -> Deferred[Decision]:
        """Any unexpected error becomes a Reject, never an Accept and never a hang."""
        return d.addErrback(self._crashed)

    def _run(self, req: LoginRequest, cred, digest: bytes) -> Deferred:
        """The login up to its decision or its push: the source's password throttle,
        the first factor, then `_authenticated`.

        A chain of callbacks rather than a generator: every login runs it, and the
        generator's Deferred machinery cost more than the steps (issue 16). Never
        raises: an error fails the Deferred, which `_PendingLogin.crashed` answers.
        """
        try:
            source = self._source(req)
            if self.passwords.blocked_until(self.push.password_limits, source,
                                            self.clock.seconds()) is not None:
                # Before any bind: the directory never sees this source's guesses
                # while it waits, so they cannot lock accounts out there.
                self.counters.inc("password_throttled", client=req.client_name)
                return defer.succeed(Decision.of(Reason.PASSWORDS_THROTTLED))
            d = (req.primary or self.directory).authenticate(
                req.username, cred.password if cred is not None else None)
        except Exception:
            return defer.fail()
        if not isinstance(d, Deferred):
            d = defer.succeed(d)
        return d.addCallback(self._authenticated, req, cred, digest, source)

    def _authenticated(self, primary: PrimaryResult, req: LoginRequest, cred, digest: bytes,
                       source: str):
        """The first factor answered: a decision if it refused, else the second factor."""
        if primary.wrong_password and self.passwords.failed(
                self.push.password_limits, source, self.clock.seconds()):
            limits = self.push.password_limits
            # Once per pause, so a flood does not flood the log too.
            logs.event(log, logging.WARNING, "login.source_throttled", client=req.client_name,
                       source=req.source, calling_station=req.calling_station,
                       failures=limits.max_failures, window_s=limits.window,
                       pause_s=limits.pause)
        decision = primary_decision(primary)
        if decision is not None:
            if primary.account:  # the directory named the entry (not in a group): audit it
                decision = dataclasses.replace(decision, user=primary.account)
            return decision
        if primary.username and primary.username != req.username:
            # EAP: push to the identity the upstream proved, never the outer one
            # (anyone can write any name there).
            user = primary.username
            bad = check_credentials(user, None, own_proof=True)
            if bad is not None:
                # The same rules as for a User-Name: "bob " or "ｂob" would find no
                # device (no_device: allow) and slip past bob's locks and limits
                # (found by fuzz/upstream_target.py).
                logs.event(log, logging.WARNING, "login.identity_refused", sent=req.username,
                           client=req.client_name)
                return Decision.of(bad)
            logs.event(log, logging.INFO, "login.identity", sent=req.username, proved=user,
                       client=req.client_name)
        # From here on the login is the account the first factor proved: devices,
        # limits, locks, passcodes, remembered logins, policy rules, joins and the
        # audit trail never see the spelling typed.
        account, sent = self.user_key(req, primary), req.username
        if account != req.username:  # the same name: no second copy held while pending
            req = dataclasses.replace(req, username=account)
        key = join_key(req, account)
        key = key and key + (digest,)
        cred = cred or Credential("", Factor.PUSH_DEFAULT)
        if self.context is not None:
            prepared = self.context.prepare(req, self.wallclock())
            if isinstance(prepared, Deferred):
                return prepared.addCallback(self._in_context, req, cred, key, primary, sent)
            return self._in_context(prepared, req, cred, key, primary, sent)
        return self._decide(req, cred, key, primary, sent)

    def _in_context(self, risk, req: LoginRequest, cred, key, primary: PrimaryResult,
                    sent: str):
        """The context step answered: the login goes on with its location and risk."""
        return self._decide(dataclasses.replace(req, context=risk), cred, key, primary, sent)

    def _decide(self, req: LoginRequest, cred, key, primary: PrimaryResult, sent: str):
        """The second factor, then `_factored` (at once when a rule decided)."""
        decision = self._second_factor(req, cred, key, primary, sent=sent)
        if isinstance(decision, Deferred):
            return decision.addCallback(self._factored, req, primary)
        return self._factored(decision, req, primary)

    def _factored(self, decision, req: LoginRequest, primary: PrimaryResult):
        if isinstance(decision, _AwaitPush):
            # The push is out: the login waits as one small record on the push's
            # Deferred (`_resume`).
            decision.primary = primary
            return decision
        return self._completed(decision, req, primary)

    def _completed(self, decision: Decision, req: LoginRequest,
                   primary: PrimaryResult) -> Decision:
        """The mapped reply attributes of an Accept, and the account it was decided for."""
        changes = {"user": req.username}  # one copy of the decision, not one per change
        if decision.outcome is Outcome.ACCEPT:
            changes["attributes"] = primary.attributes + self._mapped(req, primary, decision)
        if req.context is not None:
            changes["signals"] = req.context.signals
            changes["location"] = req.context.location
        if decision.reason is Reason.NO_DEVICE_ENROLL and self.enroll_mail is not None:
            self.enroll_mail(req.username, primary.dn)  # off the login's path; never raises
        return decision.but(**changes)

    def _resume(self, result):
        """A login waiting for its push: the rest of it runs when the push answers."""
        if isinstance(result, _AwaitPush):
            push, result.push = result.push, None  # no cycle through the record
            return push.addCallbacks(result.pushed)
        return result

    def _pushed(self, result, wait: "_AwaitPush") -> Decision:
        if isinstance(result, Decision):  # refused by the fatigue limits
            decision = dataclasses.replace(result, rule=wait.rule)
        else:
            decision = self._after_push(wait.req, result, wait.rule, response=None,
                                        remember=wait.remember)
        return self._completed(decision, wait.req, wait.primary)

    @staticmethod
    def user_key(req: LoginRequest, primary: PrimaryResult) -> str:
        """The account a login's per-user state is keyed on, once the first factor passed.

        The entry's stored name when the directory read one (`PrimaryResult.account`),
        else the identity an upstream proved (EAP), else the name sent; casefolded.
        """
        return (primary.account or primary.username or req.username).casefold()

    def _mapped(self, req: LoginRequest, primary: PrimaryResult, decision: Decision) -> tuple:
        """Reply attributes that groups and rules map to (config ``reply_attributes``)."""
        if self.reply_map is None:
            return ()
        return self.reply_map.attributes_for(groups=primary.groups, rule=decision.rule,
                                             client=req.client_name)

    def _second_factor(self, req: LoginRequest, cred, key: tuple | None,
                       primary: PrimaryResult, *, sent: str | None = None):
        """Policy, passcode, locks, remembered logins, fatigue and the push.

        A Decision at once when a rule allows or denies (no generator, no
        Deferred: the allow path runs this for every login, issue 16), else a
        Deferred from `_beyond_policy`."""
        now = self.wallclock()
        policy = evaluate(self.policy, LoginContext(
            username=req.username, client_name=req.client_name, client_ip=req.calling_station,
            groups=primary.groups, now=now, peer_is_application=req.peer_is_application))
        if policy.action is Action.DENY:
            return Decision.of(Reason.POLICY_DENY, rule=policy.rule)
        if policy.action is Action.ALLOW:
            return Decision.of(Reason.POLICY_ALLOW, rule=policy.rule)
        return self._beyond_policy(req, cred, key, primary, sent, now, policy)

    @defer.inlineCallbacks
    def _beyond_policy(self, req: LoginRequest, cred, key: tuple | None,
                       primary: PrimaryResult, sent: str | None, now: float, policy):
        """`_second_factor` once the policy asked for a second factor."""
        risk = req.context.assessment if req.context is not None else None
        if risk is not None and risk.action is RiskAction.DENY:
            self.context.alert(req, risk.deciding(), req.context.location, now)
            return Decision.of(Reason.RISK_DENY, rule=policy.rule)
        # A signal set to step_up: number matching, and no remembered login.
        step_up = risk is not None and risk.action is RiskAction.STEP_UP
        # The lock first: a locked user's passcode is not even checked. Where the
        # store's fatigue admission checks the lock with the push (cluster mode), a
        # push login asks it there, or before a remembered login or an in-process
        # join is served (which ask no admission).
        lock_at_admit = self.factors is not None and cred.factor is not Factor.PASSCODE \
            and getattr(self.state, "locks_at_admit", False) \
            and (key is None or key not in self._pushes)
        if not lock_at_admit:
            refused = yield self._lock_check(req, cred, now, policy.rule)
            if refused is not None:
                return refused
        if cred.factor is Factor.PASSCODE:
            return (yield self._passcode(req, cred.code, now, policy.rule))
        # The LDAP front end's peer is the application server: a login remembered
        # for it would let any later bind from that server skip the push, unless
        # a rule names that client and so says its peer is trusted.
        remember = not req.peer_is_application or policy.names_client
        needs = sensitivity.apply(req.requires, self._verification(req, policy),
                                  policy.user_verification)
        if needs.user_verification:
            # the push must be approved with a passkey: a remembered login would skip it
            remember = False
            req = dataclasses.replace(req,
                                      user_verification=self.policy.user_verification_fallback)
        if cred.factor is not Factor.PUSH_FORCED and remember and not step_up \
                and (yield self._is_remembered(req, now)):
            refused = (yield self._lock_check(req, cred, now, policy.rule)) \
                if lock_at_admit else None
            return refused or Decision.of(Reason.REMEMBERED, rule=policy.rule)
        if self._stopping:
            return Decision.of(Reason.SHUTTING_DOWN)
        verification = needs.verification
        if step_up and verification is Verification.NONE:
            verification = Verification.NUMBER_MATCH
        if verification is not Verification.NONE:
            return (yield self._challenge(req, verification, policy.rule, now, primary, sent))
        # Not waited for in this generator: see `_resume` and `_pushed`.
        return _AwaitPush(self, self._push_for(req, key), req, policy.rule, remember)

    @defer.inlineCallbacks
    def _lock_check(self, req: LoginRequest, cred, now: float, rule: str | None):
        """The user's lock (fraud report, passcode guessing): a refusing Decision, or
        None when the login may go on."""
        try:
            locked = self.factors is not None and (yield self.factors.lock_of(req.username.casefold()))
            user = req.username.casefold()
            if locked:
                self.state.saw_locked(user, now)
                guessing = getattr(locked, "reason", None) == LOCK_REASON
                return Decision.of(Reason.USER_LOCKED_GUESSING if guessing else Reason.USER_LOCKED,
                                   rule=rule)
            self.state.saw_unlocked(user, now)  # after an unlock the denials behind it go
        except ProviderUnavailable as exc:
            # The fraud-lock check failed: the push layer is unreachable, as for a push.
            self.counters.inc("push_provider_errors")
            logs.event(log, logging.WARNING, "push.unavailable", user=req.username,
                       detail=f"lock check: {exc}")
            if cred.factor is Factor.PASSCODE:
                return Decision.of(Reason.BAD_PASSCODE, rule=rule)  # never failmode
            return push_decision(PushResult(PushStatus.UNAVAILABLE), self.push.failmode,
                                 req.no_device)
        return None

    def _after_push(self, req: LoginRequest, result: PushResult, rule: str | None, *,
                    response: str | None, mode: Verification = Verification.NONE,
                    remember: bool | None = None) -> Decision:
        """The decision once the push answered; fatigue and remembered-login bookkeeping.

        ``remember``: whether an approval may be remembered (None: unless the
        peer is an application server, see `_second_factor`).
        """
        if remember is None:
            remember = not req.peer_is_application
        if req.user_verification is not None:
            remember = False  # presence is asked for every login, never remembered
        if self._stopping:
            return Decision.of(Reason.SHUTTING_DOWN, result)
        decision = dataclasses.replace(
            push_decision(result, self.push.failmode, req.no_device), rule=rule)
        if (mode is Verification.CODE_TO_LOGIN and decision.reason is Reason.PUSH_APPROVED
                and not (result.code and response is not None
                         and hmac.compare_digest(result.code.encode(), response.encode()))):
            decision = Decision.of(Reason.WRONG_LOGIN_CODE, result, rule=rule)
        now = self.wallclock()
        # A challenge's push denials were counted when the phone answered (the
        # user may never come back to the prompt); a wrong code only shows here.
        counted_at_push = mode is not Verification.NONE and \
            decision.reason is not Reason.WRONG_LOGIN_CODE
        if decision.reason is Reason.PUSH_APPROVED and self.context is not None:
            self.context.learn(req, now)  # the baseline learns approved logins only
        if decision.reason in DENIAL_REASONS:
            if not counted_at_push:
                self._count_denial(req.username, now, result.txid)
        elif decision.reason is Reason.PUSH_APPROVED and self.policy.remember_minutes > 0 \
                and req.calling_station and remember:
            self.state.remember(self._remember_key(req), req.username.casefold(),
                                now + self.policy.remember_minutes * 60)
        return decision

    def _count_denial(self, username: str, now: float, txid: str | None = None) -> None:
        """The user said no: forget remembered logins; enough of these pause pushes.

        ``txid``: the push denied; in the store a push's denial counts once,
        however many nodes see it.
        """
        user = username.casefold()
        self.state.forget_user(user)

        def paused(now_paused: bool) -> None:
            if now_paused and self.factors is not None:
                self.factors.fatigue_alert(user, now)
        self.state.denial(user, now, txid).addCallback(paused)

    @defer.inlineCallbacks
    def _passcode(self, req: LoginRequest, code: str, now: float, rule: str | None):
        """A passcode, checked within the guessing limits (push.passcode_limits)."""
        verdict = PasscodeVerdict.WRONG
        if self.factors is not None:
            try:
                verdict = yield self.factors.verify_passcode(
                    req.username.casefold(), code, now, source=self._source(req),
                    limits=self.push.passcode_limits)
            except ProviderUnavailable:
                # a passcode never passes on failmode: it is the second factor
                verdict = PasscodeVerdict.WRONG
        return Decision.of(_PASSCODE_REASONS[verdict], rule=rule)

    @staticmethod
    def _source(req: LoginRequest) -> str:
        """Where a login comes from, for the per-source limits: client, address, calling station."""
        return f"{req.client_name}|{req.source}|{req.calling_station or '-'}"

    def _verification(self, req: LoginRequest, policy) -> Verification:
        """A rule that names a verification wins, then the client's setting, then the default."""
        if policy.rule_sets_verification:
            return policy.verification
        return req.verification or policy.verification

    @staticmethod
    def _remember_key(req: LoginRequest) -> tuple:
        return (req.client_name, req.username.casefold(), req.calling_station)

    def _is_remembered(self, req: LoginRequest, now: float) -> Deferred[bool]:
        if self.policy.remember_minutes <= 0 or req.calling_station is None:
            return defer.succeed(False)
        return self.state.remembered(self._remember_key(req), now)

    # -- the one place a decision leaves the engine --

    def _finish(self, decision: Decision, req: LoginRequest, started: float,
                joined: bool) -> Decision:
        """The one place a decision is counted, logged and audited."""
        elapsed = self.clock.seconds() - started
        if req.finalize is not None:
            decision = req.finalize(decision)
        if decision.reason is Reason.UPSTREAM_CHALLENGE:
            # One round of an upstream exchange (EAP takes many), not a decision:
            # counted, and the login's audit event comes with its final answer.
            self.counters.inc("upstream_challenges", client=req.client_name)
            return decision
        self.counters.inc("decisions", client=req.client_name, outcome=decision.outcome.value,
                          reason=decision.reason.value)
        self.counters.observe("decision_seconds", elapsed, outcome=decision.outcome.value)
        fields = dict(protocol=req.protocol, user=decision.user or req.username, client=req.client_name,
                      source=req.source, calling_station=req.calling_station, nas=req.nas,
                      outcome=decision.outcome.value, reason=decision.reason.value,
                      rule=decision.rule, latency_ms=round(elapsed * 1000.0, 1),
                      txid=decision.txid, device=decision.device, joined=joined,
                      sent_user=req.username, presence=decision.presence)
        # Located once: the context step's location when it ran (`_completed`).
        location = decision.location if decision.location is not None else \
            self.context.locate(req.calling_station) if self.context else None
        # The record first, the reply after it: every reply a client gets is in
        # the audit trail and the daemon log, even if the process dies right after
        # sending it, and whoever reads either after the reply finds it there.
        self.audit.record(AuditEvent(time=utc_stamp(self.wallclock()), **fields,
                                     location=location.as_dict() if location else None,
                                     signals=list(decision.signals) or None))
        logs.event(log, logging.INFO, "login.decision", **fields,
                   location=location.label() if location else None,
                   signals=",".join(decision.signals) or None)
        if req.deliver is not None:
            req.deliver()
        return decision

    def stop(self) -> None:
        """Shutting down: every pending push is withdrawn and its login rejected."""
        self._stopping = True
        for call in list(self._push_calls.values()):
            call.cancel()
