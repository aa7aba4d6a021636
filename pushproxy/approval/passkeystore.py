"""The store methods of presence: passkeys bound to devices, and WebAuthn challenges.

One implementation serves both backends, like `pushproxy.approval.rolloutstore`;
`SQLitePasskeyMethods` and `PostgresPasskeyMethods` differ only in placeholders.
Every check-then-write here is one statement, so neither backend needs a lock:

- a challenge is taken (read and deleted) by one DELETE ... RETURNING, so it
  is used at most once, however many requests race for it;
- a passkey's sign counter moves by a compare-and-set on the value the
  verification started from, so two assertions with the same counter (a
  cloned authenticator, a replay racing the original) cannot both pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Passkey:
    """A WebAuthn credential registered by one device (docs/presence.md)."""

    credential_id: str  # b64u
    device_id: str
    public_key: str  # b64u COSE key
    sign_count: int
    user_verified: bool  # the registration carried the UV flag
    backup_eligible: bool
    backed_up: bool
    created: float
    last_used: float | None = None


class PasskeyStore(Protocol):
    """The store methods of presence. Time is always passed in as ``now``."""

    def add_passkey(self, passkey: Passkey) -> bool:
        """Register ``passkey`` for its (active) device; False if the credential id is
        already registered or the device is unknown or revoked."""

    def passkeys(self, device_id: str) -> list[Passkey]:
        """The device's passkeys, oldest first."""

    def put_webauthn_challenge(self, device_id: str, subject: str, nonce: str,
                               expires: float, now: float) -> None:
        """Hand ``device_id`` a challenge for ``subject`` (replacing any earlier one for
        the same subject); challenges expired at ``now`` go."""

    def take_webauthn_challenge(self, device_id: str, subject: str, now: float) -> str | None:
        """The nonce of the device's unexpired challenge for ``subject``, deleted in the
        same statement (single use); None if there is none."""

    def passkey_used(self, credential_id: str, device_id: str, old_count: int,
                     new_count: int, now: float) -> bool:
        """Compare-and-set the sign counter from ``old_count`` to ``new_count``; False if
        it moved meanwhile or the passkey is not this device's."""


_COLUMNS = ("credential_id, device_id, public_key, sign_count, user_verified, "
            "backup_eligible, backed_up, created, last_used")


def _passkey(row: tuple) -> Passkey:
    return Passkey(row[0], row[1], row[2], int(row[3]), bool(row[4]), bool(row[5]),
                   bool(row[6]), row[7], row[8])


class _PasskeySQL:
    """The shared implementation; subclasses set the dialect (``_q``)."""

    def _q(self, sql: str) -> str:
        return sql

    def add_passkey(self, passkey: Passkey) -> bool:
        # one statement: the device check and the insert cannot be split by a revoke
        return self._change(self._q(
            f"INSERT INTO passkeys ({_COLUMNS}) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM devices WHERE id = ? AND revoked IS NULL) "
            "ON CONFLICT (credential_id) DO NOTHING"),
            (passkey.credential_id, passkey.device_id, passkey.public_key, passkey.sign_count,
             int(passkey.user_verified), int(passkey.backup_eligible), int(passkey.backed_up),
             passkey.created, passkey.last_used, passkey.device_id)) == 1

    def passkeys(self, device_id: str) -> list[Passkey]:
        return [_passkey(r) for r in self._all(self._q(
            f"SELECT {_COLUMNS} FROM passkeys WHERE device_id = ? "
            "ORDER BY created, credential_id"), (device_id,))]

    def put_webauthn_challenge(self, device_id: str, subject: str, nonce: str,
                               expires: float, now: float) -> None:
        self._change(self._q("DELETE FROM webauthn_challenges WHERE expires <= ?"), (now,))
        self._change(self._q(
            "INSERT INTO webauthn_challenges (device_id, subject, nonce, expires) "
            "VALUES (?, ?, ?, ?) ON CONFLICT (device_id, subject) "
            "DO UPDATE SET nonce = excluded.nonce, expires = excluded.expires"),
            (device_id, subject, nonce, expires))

    def take_webauthn_challenge(self, device_id: str, subject: str, now: float) -> str | None:
        row = self._one_write(self._q(
            "DELETE FROM webauthn_challenges WHERE device_id = ? AND subject = ? "
            "RETURNING nonce, expires"), (device_id, subject))
        if row is None or row[1] <= now:
            return None
        return row[0]

    def passkey_used(self, credential_id: str, device_id: str, old_count: int,
                     new_count: int, now: float) -> bool:
        return self._change(self._q(
            "UPDATE passkeys SET sign_count = ?, last_used = ? WHERE credential_id = ? "
            "AND device_id = ? AND sign_count = ?"),
            (new_count, now, credential_id, device_id, old_count)) == 1


class SQLitePasskeyMethods(_PasskeySQL):
    """The presence methods on SQLite."""

    def _one_write(self, sql: str, args: tuple) -> tuple | None:
        with self._write() as db:
            # fetched whole: COMMIT refuses while a RETURNING statement is unfinished
            rows = db.execute(sql, args).fetchall()
            return rows[0] if rows else None


class PostgresPasskeyMethods(_PasskeySQL):
    """The presence methods on PostgreSQL."""

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _one_write(self, sql: str, args: tuple) -> tuple | None:
        return self._one(sql, args)
