-- The approval store, version 7: per-user login baselines (issue 21).
-- Same rules as 0001: one transaction, every statement ends at the end of a line.

-- One row per user with approved logins: how many, the first and the last,
-- and the last one that had coordinates (impossible travel compares with it).
CREATE TABLE baseline_users (
    username        TEXT COLLATE "C" PRIMARY KEY,
    approved        BIGINT NOT NULL,
    first_at        DOUBLE PRECISION NOT NULL,
    last_at         DOUBLE PRECISION NOT NULL,
    located_at      DOUBLE PRECISION,
    latitude        DOUBLE PRECISION,
    longitude       DOUBLE PRECISION,
    located_country TEXT
);
-- The countries, ASNs, networks and hours of day of a user's approved logins.
CREATE TABLE baseline_items (
    username   TEXT COLLATE "C" NOT NULL,
    kind       TEXT COLLATE "C" NOT NULL CHECK (kind IN ('country', 'asn', 'network', 'hour')),
    value      TEXT COLLATE "C" NOT NULL,
    hits       BIGINT NOT NULL,
    first_seen DOUBLE PRECISION NOT NULL,
    last_seen  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (username, kind, value)
);
