-- The approval store, version 8: passkeys for presence (issue 21, docs/presence.md).
-- Same rules as 0001: one transaction, every statement ends at the end of a line.

-- A platform passkey (WebAuthn credential) bound to one enrolled device. An
-- Approve that needs presence must come with an assertion of one of the
-- answering device's own passkeys. "sign_count" is the authenticator's counter
-- as last seen (clone detection: it must grow, unless the authenticator keeps
-- none and always says 0).
CREATE TABLE passkeys (
    credential_id   TEXT PRIMARY KEY,  -- b64u
    device_id       TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    public_key      TEXT NOT NULL,     -- b64u COSE key
    sign_count      INTEGER NOT NULL,
    user_verified   INTEGER NOT NULL,  -- 0/1: the registration had the UV flag
    backup_eligible INTEGER NOT NULL,  -- 0/1: BE flag (a synced passkey)
    backed_up       INTEGER NOT NULL,  -- 0/1: BS flag
    created         REAL NOT NULL,
    last_used       REAL
);
CREATE INDEX passkeys_by_device ON passkeys (device_id);

-- A WebAuthn challenge handed to one device, single use: "subject" is
-- "register" (creating a passkey) or "approve:<txid>" (an Approve's assertion).
-- "nonce" is the server's random part; the challenge the authenticator signs
-- is derived from it and the subject (pushproxy.approval.presence).
CREATE TABLE webauthn_challenges (
    device_id TEXT NOT NULL,
    subject   TEXT NOT NULL,
    nonce     TEXT NOT NULL,
    expires   REAL NOT NULL,
    PRIMARY KEY (device_id, subject)
);
CREATE INDEX webauthn_challenges_by_expiry ON webauthn_challenges (expires);
