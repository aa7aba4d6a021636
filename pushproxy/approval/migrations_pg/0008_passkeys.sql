-- The approval store, version 8: passkeys for presence (issue 21, docs/presence.md).
-- Same rules as 0001: one transaction, every statement ends at the end of a line.
-- See migrations/0008_passkeys.sql for what each column means.
CREATE TABLE passkeys (
    credential_id   TEXT COLLATE "C" PRIMARY KEY,
    device_id       TEXT COLLATE "C" NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    public_key      TEXT NOT NULL,
    sign_count      BIGINT NOT NULL,
    user_verified   INTEGER NOT NULL,
    backup_eligible INTEGER NOT NULL,
    backed_up       INTEGER NOT NULL,
    created         DOUBLE PRECISION NOT NULL,
    last_used       DOUBLE PRECISION
);
CREATE INDEX passkeys_by_device ON passkeys (device_id);
CREATE TABLE webauthn_challenges (
    device_id TEXT COLLATE "C" NOT NULL,
    subject   TEXT COLLATE "C" NOT NULL,
    nonce     TEXT NOT NULL,
    expires   DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (device_id, subject)
);
CREATE INDEX webauthn_challenges_by_expiry ON webauthn_challenges (expires);
