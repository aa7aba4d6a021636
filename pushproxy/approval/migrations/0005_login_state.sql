-- The approval store, version 5: the login decision state that the engine keeps
-- in memory in a single process, shared here by every node and worker of a
-- cluster (issue 15). Same rules as 0001: one transaction, every statement ends
-- at the end of a line. Nothing here depends on version 4.

-- The fatigue limits' events, per user: a push (pending until "ends": its
-- expiry, or when it ended), a denial (one per transaction: two nodes that see
-- the same answer count it once), a pause after denials (until "ends"), and a
-- marker that a login saw the user locked (an unlock then clears the rest).
-- A push's join_key (see pushproxy.push.ApprovalRequest) lets a login that
-- failed over from another node join it instead of counting a second push.
CREATE TABLE fatigue_events (
    id       INTEGER PRIMARY KEY,
    username TEXT NOT NULL,
    kind     TEXT NOT NULL CHECK (kind IN ('push', 'denial', 'pause', 'locked')),
    at       REAL NOT NULL,
    ends     REAL,
    txid     TEXT,
    join_key TEXT
);
CREATE INDEX fatigue_events_by_user ON fatigue_events (username, kind, at);
CREATE UNIQUE INDEX fatigue_events_by_txid ON fatigue_events (kind, txid) WHERE txid IS NOT NULL;
CREATE INDEX fatigue_events_by_time ON fatigue_events (at);

-- Open verified-push challenges, keyed by the SHA-256 of their State (a copy
-- of the database holds no usable State). "data" is JSON: what the follow-up
-- needs to decide (the first request's client details, groups, reply
-- attributes). Single use: deleted when the follow-up is decided.
CREATE TABLE challenges (
    state_hash TEXT PRIMARY KEY,
    client     TEXT NOT NULL,
    username   TEXT NOT NULL,
    sent       TEXT NOT NULL,
    mode       TEXT NOT NULL,
    number     TEXT,
    txid       TEXT,
    rule       TEXT,
    expires    REAL NOT NULL,
    data       TEXT NOT NULL
);
CREATE INDEX challenges_by_expiry ON challenges (expires);

-- Remembered logins, keyed by an HMAC of (client, account, calling station).
CREATE TABLE remembered_logins (
    key_hash TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    ends     REAL NOT NULL
);
CREATE INDEX remembered_logins_by_user ON remembered_logins (username);
