"""Web Push delivery breaks: the push service's endpoint refuses connections, or
accepts them and never answers. Delivery is best effort: the phone also long-polls
the approval API, so a login can still be approved; one nobody answers ends at
push.timeout (a Reject), never later. The failed deliveries are logged and counted.
"""

from __future__ import annotations

import os
import time

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet import threads

from pushproxy.approval import authenticator as auth
from pushproxy.approval.webpush import b64url_encode
from tests.integration.harness import SilentServer, closed_port
from tests.integration.test_approval_e2e import first_request
from tests.resilience import rig

PUSH_TIMEOUT = 5


def subscribe(state: str, endpoint: str) -> None:
    """The device registers a (browser-like) Web Push subscription at ``endpoint``."""
    ua = ec.generate_private_key(ec.SECP256R1())
    point = ua.public_key().public_bytes(serialization.Encoding.X962,
                                         serialization.PublicFormat.UncompressedPoint)
    client = auth.DeviceClient(state)
    try:
        client.set_subscription({"endpoint": endpoint, "keys": {
            "p256dh": b64url_encode(point), "auth": b64url_encode(os.urandom(16))}})
    finally:
        client.close()


def approve_first(state: str) -> float:
    """Long-poll like the phone app, approve the first request; when it was seen."""
    request = first_request(state)
    seen = time.monotonic()
    auth.answer(state, request["txid"], "approve")
    return seen


@pytest.mark.parametrize("endpoint", ["refusing", "hanging"])
@pytest_twisted.inlineCallbacks
def test_push_endpoint_down_or_hanging_long_poll_still_approves_and_no_answer_ends_at_the_timeout(
        slapd, tmp_path, resilience, caplog, endpoint):
    silent = SilentServer() if endpoint == "hanging" else None
    port = silent.port if silent else closed_port()
    stack = rig.make_stack(tmp_path, slapd, timeout=PUSH_TIMEOUT)
    yield stack.start()
    try:
        alice = yield stack.device(user="alice")
        bob = yield stack.device(user="bob")
        for state in (alice, bob):
            yield threads.deferToThread(subscribe, state, f"http://127.0.0.1:{port}/push/x")
        started = time.monotonic()
        logins = rig.burst(stack.radius, [("alice", "alice-pw", "p-1"), ("bob", "bob-pw", "p-2")],
                           timeout=20)
        seen = yield threads.deferToThread(approve_first, alice)  # bob's phone stays silent
        (a, b) = yield logins
        reasons = rig.audit_reasons(tmp_path / "audit.jsonl")
        counters = stack.daemon.counters
        # the sender gives up on a hanging endpoint after its own 10 s timeout
        if silent:
            deadline = time.monotonic() + 12
            while counters.get("push_deliveries", outcome="failed") < 2 \
                    and time.monotonic() < deadline:
                yield rig.sleep(0.2)
        failed = counters.get("push_deliveries", outcome="failed")
        resilience.record(
            fault=f"Web Push endpoint {'accepts TCP and never answers' if silent else 'refuses connections'}"
                  f" (both users' devices subscribed to it)",
            expected="the phone's long-poll still sees the request: approved login Accept at "
                     f"once; unanswered login Reject push_timeout at push.timeout ({PUSH_TIMEOUT} "
                     "s), not later; failed deliveries counted and logged",
            measured=f"approved login {a.outcome} in {a.rtt:.2f} s (seen by long-poll "
                     f"{seen - started:.2f} s after sending); unanswered login {b.outcome} in "
                     f"{b.rtt:.2f} s; audit {reasons}; push_deliveries failed {failed}; "
                     f"log {rig.logged(caplog)}")
        assert (a.outcome, b.outcome) == ("accept", "reject")
        assert reasons == {"push_approved": 1, "push_timeout": 1}
        assert a.rtt < 3
        assert PUSH_TIMEOUT - 0.1 <= b.rtt < PUSH_TIMEOUT + 1
        assert failed == 2 and rig.logged(caplog).get("approval.delivery_failed") == 2
    finally:
        yield stack.stop()
        if silent:
            silent.close()

