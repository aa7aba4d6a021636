"""The rollout's store methods (pushproxy.approval.rolloutstore), on SQLite and PostgreSQL."""

from __future__ import annotations

import inspect

from pushproxy.approval.rolloutstore import (PostgresRolloutMethods, RolloutStore,
                                             SQLiteRolloutMethods, UserRollout)
from pushproxy.approval.store import Device


def device(user, device_id, *, seen=None, revoked=None):
    return Device(device_id, user, "phone", "key", None, 10.0, seen, revoked)


def test_every_rollout_method_has_its_twin():
    """Both dialects offer the protocol's methods with its signatures."""
    expected = {name: list(inspect.signature(member).parameters)
                for name, member in vars(RolloutStore).items()
                if callable(member) and not name.startswith("_")}
    assert len(expected) == 7
    for cls in (SQLiteRolloutMethods, PostgresRolloutMethods):
        for name, params in expected.items():
            assert list(inspect.signature(getattr(cls, name)).parameters) == params, name


def test_overview_counts_active_devices_open_links_and_accepted_mails(backend):
    """Revoked devices, used or expired links and unsent claims do not count."""
    s = backend.open()
    try:
        s.create_enrollment("alice", "h-a", 1.0, 1000.0)
        s.redeem_enrollment("h-a", 5.0, device("alice", "d1", seen=50.0))
        s.create_enrollment("alice", "h-a2", 1.0, 1000.0)
        s.redeem_enrollment("h-a2", 6.0, device("alice", "d2", seen=70.0))
        s.revoke_device("d2", 80.0)
        s.create_enrollment("bob", "h-b1", 1.0, 200.0)
        s.create_enrollment("bob", "h-b2", 1.0, 300.0)
        s.record_enrollment_mail("bob", "h-b2", "bob@example.com", "bulk", 2.0)
        s.create_enrollment("carol", "h-c", 1.0, 99.0)  # expired at now=100
        claim = s.claim_enrollment_mail("dave", 3.0, 3600, 1)
        assert claim is not None  # claimed, never confirmed: not a sent mail
        assert s.rollout_overview(100.0) == {
            "alice": UserRollout("alice", 1, 50.0, None, None),
            "bob": UserRollout("bob", 0, None, 300.0, 2.0)}
    finally:
        s.close()


def test_a_failed_send_leaves_no_open_link_and_a_resend_ends_older_links(backend):
    s = backend.open()
    try:
        s.create_enrollment("bob", "h1", 1.0, 500.0)
        s.create_enrollment("bob", "h2", 1.0, 500.0)
        assert s.delete_unused_enrollment("h2") is True
        assert s.enrollment("h2") is None
        s.create_enrollment("bob", "h3", 2.0, 600.0)
        assert s.end_open_enrollments("bob", 10.0, keep="h3") == 1
        assert s.enrollment("h1").expires == 10.0 and s.enrollment("h3").expires == 600.0
        # a used link is never deleted
        s.redeem_enrollment("h3", 11.0, device("bob", "d"))
        assert s.delete_unused_enrollment("h3") is False and s.enrollment("h3").used == 11.0
    finally:
        s.close()


def test_login_mail_claims_are_rate_limited_per_user_across_connections(backend):
    """Two connections (two nodes) share the limit; a failed send frees its slot."""
    a, b = backend.open(), backend.open()
    try:
        first = a.claim_enrollment_mail("alice", 100.0, 3600, 1)
        assert first is not None
        assert b.claim_enrollment_mail("alice", 101.0, 3600, 1) is None
        assert b.claim_enrollment_mail("bob", 101.0, 3600, 1) is not None
        a.forget_enrollment_mail(first)  # the send failed
        second = b.claim_enrollment_mail("alice", 102.0, 3600, 1)
        assert second is not None
        b.mail_sent(second, "h", "alice@example.com", 103.0)
        a.forget_enrollment_mail(second)  # a sent mail is never forgotten
        assert a.claim_enrollment_mail("alice", 3000.0, 3600, 1) is None
        assert a.claim_enrollment_mail("alice", 3703.0, 3600, 1) \
            is not None
        assert a.rollout_overview(5000.0)["alice"].last_mail == 103.0
    finally:
        a.close()
        b.close()
