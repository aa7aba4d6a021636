-- The approval store on PostgreSQL, version 1: the same tables, columns and
-- rules as migrations/0001_initial.sql (read the comments there). Applied by
-- pushproxy.approval.pgstore inside one transaction, with every later file.
-- Times are float Unix epoch seconds (double precision, like SQLite's REAL);
-- JSON stays TEXT so both backends hand back the same text. Identifiers and
-- user names that are sorted on use the "C" collation: byte order, as SQLite
-- sorts, whatever the database's locale.

CREATE TABLE devices (
    id                TEXT COLLATE "C" PRIMARY KEY,
    username          TEXT COLLATE "C" NOT NULL,
    name              TEXT NOT NULL,
    public_key        TEXT NOT NULL,
    push_subscription TEXT,
    created           DOUBLE PRECISION NOT NULL,
    last_seen         DOUBLE PRECISION,
    revoked           DOUBLE PRECISION
);
CREATE INDEX devices_by_user ON devices (username, created);

CREATE TABLE enrollments (
    token_hash TEXT COLLATE "C" PRIMARY KEY,
    username   TEXT COLLATE "C" NOT NULL,
    created    DOUBLE PRECISION NOT NULL,
    expires    DOUBLE PRECISION NOT NULL,
    used       DOUBLE PRECISION,
    device_id  TEXT COLLATE "C" REFERENCES devices (id),
    CHECK ((used IS NULL) = (device_id IS NULL))
);

CREATE TABLE transactions (
    id         TEXT COLLATE "C" PRIMARY KEY,
    username   TEXT COLLATE "C" NOT NULL,
    nonce      TEXT NOT NULL,
    context    TEXT NOT NULL,
    created    DOUBLE PRECISION NOT NULL,
    expires    DOUBLE PRECISION NOT NULL,
    state      TEXT NOT NULL CHECK (state IN
                   ('pending', 'approved', 'denied', 'fraud', 'expired', 'cancelled')),
    decided_by TEXT,
    decided_at DOUBLE PRECISION
);
CREATE INDEX transactions_by_user ON transactions (username, state, created);
CREATE INDEX transactions_by_state ON transactions (state);

CREATE TABLE settings (
    key   TEXT COLLATE "C" PRIMARY KEY,
    value TEXT NOT NULL
);
