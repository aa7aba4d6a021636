-- The approval store, version 2: offline passcodes and fraud locks. Same rules
-- as 0001: one transaction, every statement ends at the end of a line.

-- Each device gets its own TOTP secret at enrollment (base32). It has to be
-- stored as is: the server computes the codes to compare. Devices enrolled
-- before version 2 have none (NULL) and can only be used for pushes.
ALTER TABLE devices ADD COLUMN totp_secret TEXT;
-- The newest TOTP step accepted from this device: a code is accepted only if
-- its step is greater, so each code works once and older ones never again.
ALTER TABLE devices ADD COLUMN totp_last_step INTEGER;

-- One-time bypass codes an admin issued (`pushproxy bypass USER`). Only the
-- scrypt hash is kept: the code space is small, so a fast hash would not do.
CREATE TABLE bypass_codes (
    id        INTEGER PRIMARY KEY,
    username  TEXT NOT NULL,
    code_hash TEXT NOT NULL,  -- scrypt$<salt b64>$<hash b64>
    created   REAL NOT NULL,
    expires   REAL NOT NULL,
    used      REAL            -- NULL until the code is spent
);
-- a login's question: the user's unused codes
CREATE INDEX bypass_codes_by_user ON bypass_codes (username, used, expires);

-- Users whose pushes are locked after a fraud report ("this wasn't me"),
-- until an admin unlocks them (`pushproxy unlock USER`).
CREATE TABLE user_locks (
    username  TEXT PRIMARY KEY,
    locked_at REAL NOT NULL,
    reason    TEXT NOT NULL,
    txid      TEXT            -- the reported transaction, if any
);
