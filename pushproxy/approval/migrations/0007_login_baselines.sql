-- The approval store, version 7: per-user login baselines (issue 21).
-- Same rules as 0001: one transaction, every statement ends at the end of a line.

-- One row per user with approved logins: how many, the first and the last,
-- and the last one that had coordinates (impossible travel compares with it).
CREATE TABLE baseline_users (
    username        TEXT PRIMARY KEY,
    approved        INTEGER NOT NULL,
    first_at        REAL NOT NULL,
    last_at         REAL NOT NULL,
    located_at      REAL,
    latitude        REAL,
    longitude       REAL,
    located_country TEXT
);
-- The countries, ASNs, networks and hours of day of a user's approved logins.
CREATE TABLE baseline_items (
    username   TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('country', 'asn', 'network', 'hour')),
    value      TEXT NOT NULL,
    hits       INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen  REAL NOT NULL,
    PRIMARY KEY (username, kind, value)
);
