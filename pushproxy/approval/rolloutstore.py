"""The rollout's store methods: who has a device or an open link, and enrollment mails.

Used by ``pushproxy enroll --group`` / ``--mail``, ``pushproxy rollout status``
and ``push.no_device: enroll`` (see pushproxy.rollout). One implementation
serves both backends, like `pushproxy.approval.loginstore`: `SQLiteRolloutMethods`
and `PostgresRolloutMethods` differ only in placeholders and in how a
check-then-write is serialized.

A mail is recorded as sent only after the SMTP server accepted it
(`record_enrollment_mail`, or `claim_enrollment_mail` + `mail_sent`); a claim
whose send failed is forgotten, and so is the link it would have carried
(`delete_unused_enrollment`), so a re-run sends it again.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Protocol

# pg_advisory_xact_lock(key, user hash): one user's login-mail claims ("mail")
MAIL_LOCK = 0x6D61696C
REASONS = ("bulk", "resend", "login")


@dataclass(frozen=True)
class UserRollout:
    """Where one user stands in the rollout, as the store knows it."""

    username: str
    devices: int  # active (not revoked)
    last_used: float | None  # the latest last_seen of an active device
    link_expires: float | None  # the latest open (unused, unexpired) link's expiry
    last_mail: float | None  # when an enrollment mail was last accepted by the server


class RolloutStore(Protocol):
    """The store methods of the rollout. Time is always passed in as ``now``."""

    def rollout_overview(self, now: float) -> dict[str, UserRollout]:
        """Every user with a device, an open link or a sent mail, by username."""

    def delete_unused_enrollment(self, token_hash: str) -> bool:
        """Delete a link that was never used (its mail did not go out); True if deleted."""

    def end_open_enrollments(self, username: str, now: float, keep: str | None) -> int:
        """Make the user's open links expire now, except the one hashed ``keep``."""

    def record_enrollment_mail(self, username: str, token_hash: str, address: str,
                               reason: str, now: float) -> None:
        """Record a mail the SMTP server accepted."""

    def claim_enrollment_mail(self, username: str, now: float, window: float,
                              limit: int) -> int | None:
        """Claim a login-triggered mail slot, or None when ``limit`` mails (sent or
        in progress) were claimed for the user in the last ``window`` seconds."""

    def mail_sent(self, claim_id: int, token_hash: str, address: str, now: float) -> None:
        """The claimed mail was accepted by the SMTP server."""

    def forget_enrollment_mail(self, claim_id: int) -> None:
        """The claimed mail was not sent: free its slot."""


def _user_key(username: str) -> int:
    return zlib.crc32(username.encode("utf-8")) & 0x7FFFFFFF


class _RolloutSQL:
    """The shared implementation; subclasses set the dialect (``_q``, ``_serialize``)."""

    def _q(self, sql: str) -> str:
        return sql

    def _serialize(self, db, username: str) -> None:
        """Serialize check-then-write for ``username`` inside the open transaction."""

    def rollout_overview(self, now: float) -> dict[str, UserRollout]:
        # three grouped scans rather than three queries per user: a rollout
        # status of 3,000 users stays three round trips on PostgreSQL
        devices = self._all("SELECT username, COUNT(*), MAX(last_seen) FROM devices "
                            "WHERE revoked IS NULL GROUP BY username")
        links = self._all(self._q("SELECT username, MAX(expires) FROM enrollments "
                                  "WHERE used IS NULL AND expires > ? GROUP BY username"),
                          (now,))
        mails = self._all("SELECT username, MAX(sent) FROM enrollment_mails "
                          "WHERE sent IS NOT NULL GROUP BY username")
        names = {r[0] for r in devices} | {r[0] for r in links} | {r[0] for r in mails}
        dev = {r[0]: (r[1], r[2]) for r in devices}
        link = {r[0]: r[1] for r in links}
        mail = {r[0]: r[1] for r in mails}
        return {name: UserRollout(name, dev.get(name, (0, None))[0], dev.get(name, (0, None))[1],
                                  link.get(name), mail.get(name)) for name in names}

    def delete_unused_enrollment(self, token_hash: str) -> bool:
        return self._change(self._q("DELETE FROM enrollments WHERE token_hash = ? "
                                    "AND used IS NULL"), (token_hash,)) == 1

    def end_open_enrollments(self, username: str, now: float, keep: str | None) -> int:
        return self._change(self._q("UPDATE enrollments SET expires = ? WHERE username = ? "
                                    "AND used IS NULL AND expires > ? AND token_hash != ?"),
                            (now, username, now, keep or ""))

    def record_enrollment_mail(self, username: str, token_hash: str, address: str,
                               reason: str, now: float) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown mail reason {reason!r}")
        self._change(self._q("INSERT INTO enrollment_mails (username, token_hash, address, "
                             "reason, created, sent) VALUES (?, ?, ?, ?, ?, ?)"),
                     (username, token_hash, address, reason, now, now))

    def claim_enrollment_mail(self, username: str, now: float, window: float,
                              limit: int) -> int | None:
        with self._write() as db:
            self._serialize(db, username)
            count = db.execute(self._q("SELECT COUNT(*) FROM enrollment_mails WHERE "
                                       "username = ? AND created > ?"),
                               (username, now - window)).fetchone()[0]
            if count >= limit:
                return None
            row = db.execute(self._q("INSERT INTO enrollment_mails (username, token_hash, "
                                     "address, reason, created, sent) VALUES "
                                     "(?, NULL, '', 'login', ?, NULL) RETURNING id"),
                             (username, now)).fetchone()
            return row[0]

    def mail_sent(self, claim_id: int, token_hash: str, address: str, now: float) -> None:
        self._change(self._q("UPDATE enrollment_mails SET sent = ?, token_hash = ?, "
                             "address = ? WHERE id = ?"), (now, token_hash, address, claim_id))

    def forget_enrollment_mail(self, claim_id: int) -> None:
        self._change(self._q("DELETE FROM enrollment_mails WHERE id = ? AND sent IS NULL"),
                     (claim_id,))


class SQLiteRolloutMethods(_RolloutSQL):
    """The rollout methods on SQLite: BEGIN IMMEDIATE (`_write`) serializes every writer."""


class PostgresRolloutMethods(_RolloutSQL):
    """The rollout methods on PostgreSQL: a per-user advisory lock serializes claims."""

    def _q(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _serialize(self, db, username: str) -> None:
        db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (MAIL_LOCK, _user_key(username)))
