"""Rolling MFA out to many users: enrollment links by mail from the directory
(``pushproxy enroll --group``), and ``pushproxy rollout status``.

- `mailconfig`: the ``mail:`` config section (SMTP server, sender, templates).
- `directory`: group members and their mail addresses, through the daemon's LDAP code.
- `mailer`: the enrollment mail (text + HTML + inline QR code) and its SMTP delivery.
- `bulk`: who gets a mail (pure planning) and the sending loop.
- `status`: the rollout status table (CSV, JSON, text).
- `commands`: the command-line front of all of the above.
"""
