-- The approval store, version 4: what several nodes (or worker processes) need
-- to share one store. Same rules as 0001: one transaction, every statement ends
-- at the end of a line.

-- The node ("name/worker") that opened the transaction: at start a node retires
-- only its own stale pushes, never another node's.
ALTER TABLE transactions ADD COLUMN owner TEXT;
-- Logins that are "the same login" (same user, client, calling station and
-- credential, as a keyed hash) share one push across nodes: one pending
-- transaction per join key, enforced by the index below.
ALTER TABLE transactions ADD COLUMN join_key TEXT;
-- What the answer means for the login (a PushStatus value: number_mismatch is
-- stored as state 'denied') and, for an approved code-to-login request, the code
-- the user types at the gateway: a waiter on another node needs both.
ALTER TABLE transactions ADD COLUMN outcome TEXT;
ALTER TABLE transactions ADD COLUMN code TEXT;
CREATE UNIQUE INDEX transactions_one_pending_per_join ON transactions (join_key) WHERE state = 'pending' AND join_key IS NOT NULL;
CREATE INDEX transactions_pending_by_owner ON transactions (owner) WHERE state = 'pending';

-- Which node waits on which pending transaction (the owner, and every node
-- whose login joined it): a transaction stays answerable while one of them lives.
CREATE TABLE transaction_waiters (
    txid TEXT NOT NULL REFERENCES transactions (id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    PRIMARY KEY (txid, node)
);
CREATE INDEX transaction_waiters_by_node ON transaction_waiters (node);

-- The txid a joined login was given (the engine's own, named by its challenge)
-- -> the transaction it joined: a follow-up that names it finds the push.
CREATE TABLE transaction_aliases (
    alias TEXT PRIMARY KEY,
    txid  TEXT NOT NULL REFERENCES transactions (id) ON DELETE CASCADE
);

-- Heartbeats: a node is alive while its row was updated within a few seconds.
CREATE TABLE nodes (
    id      TEXT PRIMARY KEY,
    started REAL NOT NULL,
    seen    REAL NOT NULL
);

-- Nonces of signed device requests, so a request replayed to another node is
-- refused there too; kept until the request's timestamp is outside the window.
CREATE TABLE device_nonces (
    device_id TEXT NOT NULL,
    nonce     TEXT NOT NULL,
    expires   REAL NOT NULL,
    PRIMARY KEY (device_id, nonce)
);
CREATE INDEX device_nonces_by_expiry ON device_nonces (expires);
