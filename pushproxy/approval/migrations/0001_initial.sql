-- The approval store, version 1. Applied by pushproxy.approval.store inside one
-- BEGIN IMMEDIATE transaction, statement by statement: end every statement at
-- the end of a line. Times are float Unix epoch seconds.

-- An enrolled device. Never deleted, only revoked, so that audit records and
-- decided transactions keep naming a device that can still be looked up.
CREATE TABLE devices (
    id                TEXT PRIMARY KEY,
    username          TEXT NOT NULL,
    name              TEXT NOT NULL,
    public_key        TEXT NOT NULL,  -- b64u uncompressed P-256 point
    push_subscription TEXT,           -- JSON object, NULL: the device long-polls
    created           REAL NOT NULL,
    last_seen         REAL,
    revoked           REAL
);
CREATE INDEX devices_by_user ON devices (username, created);

-- A one-time enrollment link. Only the SHA-256 of the token is kept, so a
-- copy of the database does not hold usable links.
CREATE TABLE enrollments (
    token_hash TEXT PRIMARY KEY,
    username   TEXT NOT NULL,
    created    REAL NOT NULL,
    expires    REAL NOT NULL,
    used       REAL,
    device_id  TEXT REFERENCES devices (id),
    -- a link is used exactly when it names the device it enrolled
    CHECK ((used IS NULL) = (device_id IS NULL))
);

-- One push-approval request. decided_by carries no foreign key: the service
-- authenticates the answering device, and the row is history that must stay
-- writable whatever happens to the device later.
CREATE TABLE transactions (
    id         TEXT PRIMARY KEY,
    username   TEXT NOT NULL,
    nonce      TEXT NOT NULL,
    context    TEXT NOT NULL,  -- JSON object: application, client_ip, nas, ...
    created    REAL NOT NULL,
    expires    REAL NOT NULL,
    state      TEXT NOT NULL CHECK (state IN
                   ('pending', 'approved', 'denied', 'fraud', 'expired', 'cancelled')),
    decided_by TEXT,
    decided_at REAL
);
-- the long-poll question: a user's open requests, oldest first
CREATE INDEX transactions_by_user ON transactions (username, state, created);
-- cancel_pending and purge scan by state
CREATE INDEX transactions_by_state ON transactions (state);

-- Small named values, e.g. the VAPID private key PEM.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
