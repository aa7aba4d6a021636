"""The presence store methods (pushproxy.approval.passkeystore), on SQLite and PostgreSQL:
passkeys bound to active devices, single-use challenges, the counter's compare-and-set."""

from __future__ import annotations

from pushproxy.approval.passkeystore import Passkey
from pushproxy.approval.store import Device


def enrolled(s, device_id, user="alice"):
    s.create_enrollment(user, f"h-{device_id}", 1.0, 1000.0)
    s.redeem_enrollment(f"h-{device_id}", 5.0,
                        Device(device_id, user, "phone", "key", None, 5.0, None, None))


def passkey(credential_id, device_id, count=0):
    return Passkey(credential_id, device_id, "cose", count, True, False, False, 10.0)


def test_passkeys_belong_to_one_active_device(backend):
    s = backend.open()
    try:
        enrolled(s, "d1")
        enrolled(s, "d2")
        assert s.add_passkey(passkey("c1", "d1"))
        assert not s.add_passkey(passkey("c1", "d2"))  # a credential id is registered once
        assert not s.add_passkey(passkey("c9", "nope"))  # unknown device
        s.revoke_device("d2", 20.0)
        assert not s.add_passkey(passkey("c2", "d2"))  # revoked device
        assert s.passkeys("d1") == [passkey("c1", "d1")] and s.passkeys("d2") == []
    finally:
        s.close()


def test_a_challenge_is_taken_once_and_not_after_it_expired(backend):
    s = backend.open()
    try:
        enrolled(s, "d1")
        s.put_webauthn_challenge("d1", "approve:t1", "n1", 100.0, 50.0)
        s.put_webauthn_challenge("d1", "approve:t1", "n2", 100.0, 51.0)  # replaces n1
        assert s.take_webauthn_challenge("d2", "approve:t1", 60.0) is None  # other device
        assert s.take_webauthn_challenge("d1", "approve:t1", 60.0) == "n2"
        assert s.take_webauthn_challenge("d1", "approve:t1", 60.0) is None  # single use
        s.put_webauthn_challenge("d1", "register", "n3", 100.0, 60.0)
        assert s.take_webauthn_challenge("d1", "register", 100.0) is None  # expired
    finally:
        s.close()


def test_the_counter_moves_by_compare_and_set(backend):
    s = backend.open()
    try:
        enrolled(s, "d1")
        enrolled(s, "d2")
        s.add_passkey(passkey("c1", "d1", count=3))
        assert not s.passkey_used("c1", "d2", 3, 4, 70.0)  # not that device's
        assert s.passkey_used("c1", "d1", 3, 4, 70.0)
        assert not s.passkey_used("c1", "d1", 3, 5, 71.0)  # moved meanwhile: a parallel use
        (stored,) = s.passkeys("d1")
        assert (stored.sign_count, stored.last_used) == (4, 70.0)
    finally:
        s.close()
