"""Recording fakes for unit and integration tests: a scripted push provider and directory."""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet import defer

from pushproxy.decision import PrimaryResult, PrimaryStatus, PushResult, PushStatus
from pushproxy.push import ApprovalRequest, ProviderUnavailable


@dataclass
class ScriptedProvider:
    """A push provider whose answers the test gives; records every request.

    ``mode`` "manual": the test calls ``answer``; "approve"/"deny": answered
    at once (or after ``delay`` seconds on ``clock``); "down": every request
    fails with ProviderUnavailable; "silent": never answers.
    """

    mode: str = "manual"
    delay: float = 0.0
    clock: object = None
    requests: list[ApprovalRequest] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    _pending: dict = field(default_factory=dict)

    def request_approval(self, request: ApprovalRequest):
        self.requests.append(request)
        if self.mode == "down":
            return defer.fail(ProviderUnavailable("scripted outage"))
        d = defer.Deferred(lambda _: self.cancelled.append(request.txid))
        self._pending[request.txid] = d
        if self.mode in ("approve", "deny"):
            status = PushStatus.APPROVED if self.mode == "approve" else PushStatus.DENIED
            if self.delay:
                self.clock.callLater(self.delay, self.answer, request.txid, status)
            else:
                self.answer(request.txid, status)
        return d

    def answer(self, txid: str | None = None, status: PushStatus = PushStatus.APPROVED):
        """Answer the request ``txid`` (default: the latest one)."""
        txid = txid or self.requests[-1].txid
        d = self._pending.pop(txid, None)
        if d is not None and not d.called:
            d.callback(PushResult(status, txid, device="scripted-device"))


@dataclass
class ScriptedDirectory:
    """A directory that knows a few users; records every call; can be held open."""

    users: dict = field(default_factory=lambda: {"alice": "alice-pw", "bob": "bob-pw"})
    hold: bool = False
    calls: list = field(default_factory=list)
    _held: list = field(default_factory=list)

    def authenticate(self, username, password):
        self.calls.append(username)
        if username not in self.users:
            result = PrimaryResult(PrimaryStatus.UNKNOWN_USER)
        elif self.users[username] != password:
            result = PrimaryResult(PrimaryStatus.BAD_CREDENTIALS)
        else:
            result = PrimaryResult(PrimaryStatus.OK, dn=f"uid={username},dc=example")
        if self.hold:
            d = defer.Deferred()
            self._held.append((d, result))
            return d
        return defer.succeed(result)

    def release(self):
        """Fire every held call."""
        held, self._held = self._held, []
        for d, result in held:
            d.callback(result)
