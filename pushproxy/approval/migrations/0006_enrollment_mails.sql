-- The approval store, version 6: enrollment links sent by mail (issue 19).
-- Same rules as 0001: one transaction, every statement ends at the end of a line.

-- One enrollment mail. A row with "sent" set was accepted by the SMTP server;
-- a row without it is a send in progress (a login's no_device mail claims its
-- slot first, so concurrent logins send one mail) and is deleted if the send
-- fails: nothing is ever recorded as sent that the server did not accept.
-- "token_hash" names the link the mail carried (no foreign key: purge may
-- delete old links while the send history stays).
CREATE TABLE enrollment_mails (
    id         INTEGER PRIMARY KEY,
    username   TEXT NOT NULL,
    token_hash TEXT,
    address    TEXT NOT NULL,
    reason     TEXT NOT NULL CHECK (reason IN ('bulk', 'resend', 'login')),
    created    REAL NOT NULL,
    sent       REAL
);
CREATE INDEX enrollment_mails_by_user ON enrollment_mails (username, created);
CREATE INDEX enrollment_mails_by_token ON enrollment_mails (token_hash);
-- a user's open links (rollout status, the bulk command's "already has a link")
CREATE INDEX enrollments_by_user ON enrollments (username, expires);
