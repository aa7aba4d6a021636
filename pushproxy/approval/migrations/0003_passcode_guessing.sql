-- The approval store, version 3: passcode guessing limits and bypass codes that
-- cost one hash per guess. Same rules as 0001: one transaction, every
-- statement ends at the end of a line.

-- Bypass codes issued from version 3 on start with a selector (3 digits) that
-- names their row, so a guess is checked against one hash, not every code of
-- the user. Codes issued before have none (NULL) and are checked as before.
ALTER TABLE bypass_codes ADD COLUMN selector TEXT;
-- One unused code per user and selector: `pushproxy bypass` picks free ones.
CREATE UNIQUE INDEX bypass_codes_by_selector ON bypass_codes (username, selector) WHERE used IS NULL AND selector IS NOT NULL;

-- Every passcode attempt that was not a valid code: the guessing limits
-- (pause, then lock) count these per user and per source. In the store, not
-- in memory, so a restart does not hand out a fresh set of guesses and every
-- node of a cluster sees the same count. An attempt is written before its
-- code is checked (and deleted if the code was right), so concurrent guesses
-- cannot all slip under the limit.
CREATE TABLE passcode_failures (
    id       INTEGER PRIMARY KEY,
    username TEXT NOT NULL,
    source   TEXT NOT NULL,  -- client and calling station (or client address)
    at       REAL NOT NULL
);
CREATE INDEX passcode_failures_by_user ON passcode_failures (username, at);
CREATE INDEX passcode_failures_by_source ON passcode_failures (source, at);
CREATE INDEX passcode_failures_by_time ON passcode_failures (at);
